"""The part of TensorFlow that mlbackend uses, without `import tensorflow`.

`import tensorflow` runs `tensorflow/__init__.py`, which builds the whole
public API (tf.distribute, tf.lite, tf.data, Keras's stubs, ...): about 2,400
Python modules, 490 MB of peak RSS and 3-5 s on a 2-core machine, before a
training has done anything. Training, the CSV decoder and the TensorBoard
writer need a few dozen ops. `load()` imports TensorFlow's core modules
directly (about 950 modules, 380 MB) and returns a namespace that offers them
under the public API's names, so the calling code reads as ordinary
TensorFlow (`tf.matmul`, `tf.function`, ...). Issue 23 measured it.

The price is a dependency on TensorFlow's internal module layout, which may
change between releases. It is pinned (requirements.txt) and checked:
`tests/test_tfcore.py` compares every name here with the public API's, so an
upgrade that moves one fails there, not in a Moodle site's training. A name
that is missing is an ImportError or AttributeError when this module loads,
before any data is read.

Anything that asks the `tensorflow` package itself for a name (the tests'
Keras reference, `import tensorflow as tf; tf.Module`) gets the full API: the
package's `__init__` then runs on top of the core modules already loaded.
TensorFlow's C++ registries cannot be initialised twice, so there is no
"fall back to `import tensorflow`" once the core modules have started loading.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import types
from collections.abc import Callable
from typing import Any

_loaded: Any = None


class _Lazy:
    """A namespace whose names are imported on first use."""

    def __init__(self, **loaders: Callable[[], Any]) -> None:
        self._loaders = loaders

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in self._loaders:
            raise AttributeError(name)
        value = self._loaders[name]()
        setattr(self, name, value)
        return value


def load() -> Any:
    """A namespace with the TensorFlow API mlbackend uses, or the full
    `tensorflow` module if something imported it already."""
    global _loaded
    if _loaded is None:
        full = sys.modules.get("tensorflow")
        _loaded = full if full is not None and "constant" in vars(full) else _core()
    return _loaded


def _package() -> None:
    """`tensorflow` in sys.modules as a package whose `__init__` has not run:
    its submodules import as usual. Its first attribute lookup runs the
    `__init__`, which gives the full API to whoever asks for it."""
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations or spec.loader is None:
        raise ImportError("No module named 'tensorflow'")
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def full_api(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        del vars(package)["__getattr__"]
        loader.exec_module(package)
        return getattr(package, name)

    vars(package)["__getattr__"] = full_api  # a module's __getattr__ (PEP 562)
    sys.modules["tensorflow"] = package


def _core() -> Any:
    if "tensorflow" not in sys.modules:
        _package()

    def mod(name: str) -> Any:
        return importlib.import_module(f"tensorflow.python.{name}")

    ops = mod("framework.ops")
    mod("tf2").enable()
    ops.enable_eager_execution()
    for name in ("ops.array_grad", "ops.math_grad", "ops.nn_grad", "ops.resource_variable_ops"):
        mod(name)  # the gradients of the ops training uses register themselves
    array_ops, math_ops, nn_ops = mod("ops.array_ops"), mod("ops.math_ops"), mod("ops.nn_ops")
    dtypes = mod("framework.dtypes")
    ns = types.SimpleNamespace
    return ns(
        constant=mod("framework.constant_op").constant,
        Variable=mod("ops.variables").Variable,
        function=mod("eager.polymorphic_function.polymorphic_function").function,
        GradientTape=mod("eager.backprop").GradientTape,
        TensorSpec=mod("framework.tensor_spec").TensorSpec,
        control_dependencies=ops.control_dependencies,
        while_loop=mod("ops.while_loop").while_loop_v2,
        gather=array_ops.gather_v2,
        reshape=array_ops.reshape,
        split=array_ops.split,
        concat=array_ops.concat,
        bitcast=array_ops.bitcast,
        cast=math_ops.cast,
        shape=array_ops.shape_v2,
        stack=mod("ops.array_ops_stack").stack,
        zeros=array_ops.zeros,
        zeros_like=array_ops.zeros_like_v2,
        clip_by_value=mod("ops.clip_ops").clip_by_value,
        matmul=math_ops.matmul,
        reduce_mean=math_ops.reduce_mean,
        reduce_sum=math_ops.reduce_sum,
        pow=math_ops.pow,
        cos=math_ops.cos,
        minimum=math_ops.minimum,
        tanh=math_ops.tanh,
        float32=dtypes.float32,
        float64=dtypes.float64,
        int32=dtypes.int32,
        uint16=dtypes.uint16,
        uint32=dtypes.uint32,
        nn=ns(
            relu=nn_ops.relu,
            sparse_softmax_cross_entropy_with_logits=(
                nn_ops.sparse_softmax_cross_entropy_with_logits_v2
            ),
        ),
        raw_ops=ns(ResourceApplyAdam=mod("ops.gen_training_ops").ResourceApplyAdam),
        random=ns(stateless_uniform=mod("ops.stateless_random_ops").stateless_random_uniform),
        # Loaded when first used (7 MB of modules that most calls never use):
        # the CSV decoder on large files, the summary ops with TensorBoard.
        io=_Lazy(decode_csv=lambda: mod("ops.parsing_ops").decode_csv_v2),
        summary=_Lazy(
            create_file_writer=lambda: mod("ops.summary_ops_v2").create_file_writer_v2,
            write=lambda: mod("ops.summary_ops_v2").write,
        ),
        errors=ns(InvalidArgumentError=mod("framework.errors_impl").InvalidArgumentError),
        get_logger=lambda: logging.getLogger("tensorflow"),
    )

"""`mlbackend.tfcore`, TensorFlow's core modules under the public API's names:
every name is the public API's own, the core load is a fraction of
`import tensorflow`, and a training on it is the training on full TensorFlow.

Each check runs in a fresh interpreter: a test process may have imported
full TensorFlow already (the Keras reference), and then `tfcore.load()` just
returns it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from helpers.run import backend_env

NAMES = """
    import inspect, json, sys, types
    from mlbackend import tfcore
    from mlbackend.tf import import_tensorflow

    core = import_tensorflow()
    report = {
        "core_modules": len(sys.modules),
        "full_api_built": "constant" in vars(sys.modules["tensorflow"]),
    }
    import tensorflow as tf

    def names(ns):
        if isinstance(ns, tfcore._Lazy):
            return sorted(ns._loaders)
        return sorted(n for n in vars(ns) if not n.startswith("_"))

    def differ(ns, public, path):
        for name in names(ns):
            mine, theirs = getattr(ns, name), getattr(public, name, None)
            if isinstance(mine, (types.SimpleNamespace, tfcore._Lazy)):
                yield from differ(mine, theirs, path + name + ".")
            elif name == "get_logger":
                if theirs is None or mine() is not theirs():
                    yield path + name
            # The public API wraps some functions (weak-tensor dtype
            # conversion, off unless enabled): the function inside is ours.
            elif theirs is None or inspect.unwrap(mine) is not inspect.unwrap(theirs):
                yield path + name

    report["differ"] = list(differ(core, tf, "tf."))
    report["full_modules"] = len(sys.modules)
    print(json.dumps(report))
"""

TRAINING = """
    import hashlib, sys
    import numpy as np
    if sys.argv[1] == "full":
        from mlbackend.tf import quiet_tensorflow
        quiet_tensorflow()
        import tensorflow
    from mlbackend import synthetic, training

    data = synthetic.generate(1500, 12, positive_rate=0.3, seed=23)
    X = np.nan_to_num(data.X).astype(np.float32)
    for xla in (False, True):  # the input stage interpreted, and compiled by XLA
        training.XLA_MIN_VALUES = 0 if xla else 1 << 62
        m = training.train(X, data.y, data.classes, [])
        assert m.format_version == 3, m.format_version
        print(hashlib.sha256(m.predict_proba(X).tobytes()).hexdigest())
"""


def python(script: str, *args: str) -> str:
    p = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        env=backend_env(),
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


def test_every_name_is_the_public_apis_and_the_load_is_light():
    report = json.loads(python(NAMES))
    assert report["differ"] == []
    # The point of it: the public API was not built until something asked
    # the package for a name, and about 1,500 modules were not imported.
    assert not report["full_api_built"]
    assert report["core_modules"] < 0.5 * report["full_modules"], report


def test_training_on_the_core_modules_is_training_on_full_tensorflow():
    core, full = python(TRAINING, "core").split(), python(TRAINING, "full").split()
    assert len(core) == 2 and core == full

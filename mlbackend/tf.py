"""TensorFlow, imported quietly and only where it is needed.

Every module that needs TensorFlow (training, the CSV decoder, TensorBoard
files, reading old checkpoints) imports it through `import_tensorflow`, so
the set-up below happens once, before TensorFlow is loaded, whichever path
gets there first. Prediction, `version` and `--help` never import it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import sys
from collections.abc import Callable, Iterator
from typing import Any


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ and Python chatter before it is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # oneDNN's kernels on x86-64: site-b's 10-iteration evaluation took 29 s
    # with them, 35 s without (issue 23); they announce themselves on stderr
    # whatever the log level (see `import_tensorflow`). Not on aarch64: there
    # oneDNN's CPU probe writes to stderr during the first training when it
    # cannot read MIDR_EL1 (qemu, some containers), and it was not measured.
    onednn = "1" if platform.machine().lower() in ("x86_64", "amd64") else "0"
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", onednn)
    # `import tensorflow` eagerly imports Keras 3 (0.15 s, 17 MB) only to
    # register its optimizers; we train without Keras. Asking for legacy
    # Keras, which is not installed, makes TensorFlow skip that import.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    # TensorFlow's internal legacy Keras, which `import tensorflow` loads, reads
    # and creates ~/.keras/keras.json: under Moodle, in the web server user's
    # home. A directory that cannot exist (below the null device) makes it
    # skip both, quietly; its defaults are the file's.
    os.environ.setdefault("KERAS_HOME", os.path.join(os.devnull, "keras"))
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def import_tensorflow() -> Any:
    """TensorFlow's API as mlbackend uses it (`tfcore`: its core modules,
    not the whole of `import tensorflow`), set up quietly. Heavy: call it
    late."""
    quiet_tensorflow()
    from mlbackend import tfcore

    with _stderr_silenced():
        tf = tfcore.load()
    tf.get_logger().setLevel(logging.ERROR)
    return tf


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 on the null device meanwhile. TensorFlow's C++
    libraries write "oneDNN custom operations are on" there while they load,
    through a logger that no setting reaches before it is initialised. An
    import that fails still raises, with its message, after this."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 2)
        finally:
            os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class Adam:
    """Adam (Kingma and Ba 2015) on a list of TensorFlow variables, one fused
    kernel per variable and step: TensorFlow spends microseconds on each op,
    and few ops per step is what makes small batches quick.

    The one place that uses TensorFlow's raw op `ResourceApplyAdam` (its
    inputs: the variables' handles, beta powers, learning rate, betas,
    epsilon, gradient); `tests/test_training.py` checks one step against
    Adam's formula, so a TensorFlow that changes the op fails there.
    `learning_rate` is a number or a function of the step (1, 2, ...: a
    float tensor) giving the rate of that step, for a schedule.
    """

    def __init__(
        self,
        tf: Any,
        params: list[Any],
        learning_rate: float | Callable[[Any], Any],
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-7,
    ) -> None:
        self.tf, self.params = tf, params
        self.lr, self.beta1, self.beta2, self.epsilon = learning_rate, beta1, beta2, epsilon
        self.slots = [
            (tf.Variable(tf.zeros_like(p)), tf.Variable(tf.zeros_like(p))) for p in params
        ]
        self.step = tf.Variable(0.0)

    def apply(self, grads: list[Any]) -> list[Any]:
        """The update ops of one step (run them before the next)."""
        tf = self.tf
        t = self.step.assign_add(1.0)
        lr = self.lr(t) if callable(self.lr) else self.lr
        beta1_power, beta2_power = tf.pow(self.beta1, t), tf.pow(self.beta2, t)
        return [
            tf.raw_ops.ResourceApplyAdam(
                var=p.handle,
                m=m.handle,
                v=v.handle,
                beta1_power=beta1_power,
                beta2_power=beta2_power,
                lr=lr,
                beta1=self.beta1,
                beta2=self.beta2,
                epsilon=self.epsilon,
                grad=g,
            )
            for p, g, (m, v) in zip(self.params, grads, self.slots)
        ]

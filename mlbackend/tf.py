"""TensorFlow, imported quietly and only where it is needed.

Every module that needs TensorFlow (training, the CSV decoder, TensorBoard
files, reading old checkpoints) imports it through `import_tensorflow`, so
the set-up below happens once, before TensorFlow is loaded, whichever path
gets there first. Prediction, `version` and `--help` never import it.
"""

from __future__ import annotations

import logging
import os
from typing import Any


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ and Python chatter before it is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
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
    """The `tensorflow` module, set up quietly (heavy: call it late)."""
    quiet_tensorflow()
    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    return tf

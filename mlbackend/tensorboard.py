"""TensorBoard event files, written with TensorFlow's core summary ops.

TensorFlow 2.21 no longer brings the `tensorboard` package, and with it go
`tf.summary.scalar` and Keras' TensorBoard callback. The event format itself
is TensorFlow's: a scalar is a float tensor tagged for the "scalars" plugin,
which is all TensorBoard needs to draw it. Moodle tells admins to point
TensorBoard at an evaluation run's `tensor/` directory.
"""

from __future__ import annotations

from typing import Any


class ScalarWriter:
    """Append scalars to an event file under `log_dir`."""

    def __init__(self, log_dir: str) -> None:
        from mlbackend.tf import import_tensorflow

        tf = import_tensorflow()
        from tensorflow.core.framework import summary_pb2

        self._tf = tf
        plugin = summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        self._metadata = summary_pb2.SummaryMetadata(plugin_data=plugin).SerializeToString()
        self._writer = tf.summary.create_file_writer(log_dir)

    def scalar(self, tag: str, value: float, step: int) -> None:
        tf = self._tf
        with self._writer.as_default():
            tf.summary.write(
                tag, tf.constant(float(value), tf.float32), step=step, metadata=self._metadata
            )

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()

    def __enter__(self) -> ScalarWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

"""The classifier: the one owner of what a trained model is.

- `inputs`: which dataset columns the network reads and how it sees them
  (the piecewise-linear encoding, centring), in NumPy and TensorFlow;
- `network`: the layers and their forward pass, in NumPy and TensorFlow;
- `classifier`: the `Model` (inputs, network, classes) and its prediction;
- `format`: the file format, a reader and a writer per format version;
- `convert`: models of the old backend (read by `mlbackend.legacy`) as ours;
- `limits`: what a model may ask of the machine.

Nothing outside this package knows how a network's layers are laid out.
"""

from mlbackend.model.classifier import Model

__all__ = ["Model"]

"""What the tests share: data and models made without training, the
TensorFlow oracle, hostile inputs, real server processes."""

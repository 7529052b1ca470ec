"""What a model may ask of the machine.

A model file is small, but the work it causes grows with its shape:
prediction allocates every layer's width for each row, and a loaded model
stays in memory. Real models have at most a few hundred features (10,000 is
the dataset limit), hidden layers of at most 128 units (moodlemlbackend's: a
few hundred), 2 or 3 layers and a handful of classes; these bounds are far
above that and far below what would exhaust a server. They apply to every
model, ours and the old backend's alike (`mlbackend.legacy`).
"""

MAX_FEATURES = 10_000
MAX_HIDDEN_WIDTH = 4096
MAX_HIDDEN_LAYERS = 16
MAX_CLASSES = 1000
MAX_PARAMETERS = 16_000_000  # 64 MB of float32 weights
#: Largest logit shift accepted in a file: training makes |shift| <= a few.
MAX_LOGIT_SHIFT = 50.0
#: Most bin edges per column of the piecewise-linear encoding (32 bins).
MAX_EDGES = 33
#: Memory one block of predicted rows may take for the network's layers:
#: rows are predicted in blocks sized from the model's widths.
PREDICT_BLOCK_BYTES = 64 << 20
#: Most multiply-adds (rows x weights) one call may ask of a model: time,
#: not memory, is what a large model costs per row. A real model (74,000
#: weights for 450 features) predicts 100,000 rows in 7.4e9; this is about
#: a minute of two cores.
MAX_WORK = 500_000_000_000

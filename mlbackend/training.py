"""Training the classifier with TensorFlow.

The network is the old backend's family (a feed-forward ReLU network with a
softmax output, trained with TensorFlow) with what it lacked: inputs encoded
piecewise-linearly on their training quantiles and centred, class weights
so that the minority class (the students at risk) is predicted at all,
dropout, L2, and a learning rate that warms up and then decays to zero
along a cosine over a fixed number of epochs.

Why a fixed schedule and not early stopping on a validation split (what
this trainer did until issue 23): the schedule trains on every row, needs
no validation passes nor copies of the best weights, and ten networks side
by side no longer wait for the slowest to stop. Measured by 10-fold
cross-validation against gradient-boosted trees (bench/cv.py), it ranks
better on every dataset tried (site-a, site-b, site-b sampled to 2,000,
5,000 and 9,000 rows) and evaluates site-b in a quarter of the time:
docs/model.md, "Choices, measured".

Why not Keras' `fit`: a Moodle call trains one small network and exits, so
start-up and per-epoch overhead are most of its time. Here each epoch is one
compiled TensorFlow function (the batch loop runs inside the graph), and
several networks train side by side as one batched computation: evaluation
trains its ten 80 % splits at once, for little more than the cost of one.
Weights carry a leading "model" axis for that; a plain training is K = 1.

TensorFlow is imported inside these functions only: prediction, `version`
and `--help` never pay for it. Training hands back plain
`mlbackend.model.Model`s; the network's shape and its TensorFlow forward
pass come from `mlbackend.model.network.Layout`, its inputs' from
`mlbackend.model.inputs`.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlbackend.contract import MISSING_CLASSES_MESSAGE, NOT_ENOUGH_DATA, BackendError
from mlbackend.model import Model
from mlbackend.model.format import CENTRED, ENCODED
from mlbackend.model.inputs import Inputs, PiecewiseLinear, tf_stage
from mlbackend.model.network import Dense, Layout, Network
from mlbackend.tf import Adam, import_tensorflow

log = logging.getLogger(__name__)

#: Fewer training rows than this are tiled up to it, so that an epoch still
#: has about 40 steps of at least 16 rows (see `batch_size`).
SMALL_DATA_ROWS = 640
#: Values per block (rows x columns) when computing column statistics: their
#: float64 temporaries, 8 MB, are reused from block to block. Blocks of
#: 65,536 rows made site-b's one block of 48 MB temporaries, which the first
#: call paid for in page faults: 0.12 s, against 0.025 s so.
STATS_BLOCK_VALUES = 1 << 20
#: Up to this size, the used columns of the dataset are copied into
#: TensorFlow once, and every batch is gathered from them in the graph: an
#: epoch is one call. Larger data goes to TensorFlow in chunks of
#: CHUNK_VALUES values (rows x used columns x networks), so that memory holds
#: the dataset once (as NumPy float32) however large it is.
RESIDENT_BYTES = 256 * 1024 * 1024
CHUNK_VALUES = 8 * 1024 * 1024
#: The input stage is compiled by XLA (one fused loop instead of a pass over
#: [K, batch, inputs] per operation) when an epoch makes at least this many
#: input values (rows x networks x inputs). Below it, compiling costs what it
#: saves, and XLA's compiler adds about 40 MB to the peak memory of the call.
#: Issue 23, training on site-b's first rows: 10M values (all 14k rows) took
#: 4.8 s with XLA and 6.0 s without; 1.2M-3.3M (4,000-7,000 rows) a tie;
#: site-a's 0.1M 0.4 s longer with it.
XLA_MIN_VALUES = 4_000_000
#: Rows the piecewise-linear encoding is fitted on: all of them up to this
#: many, else a seeded sample (quantiles of 65,536 rows are as good, and a
#: million rows would take a minute of sorting).
ENCODING_ROWS = 65536
#: Values encoded at once (rows x encoded inputs) when centring the encoding:
#: 4 MB blocks, whose temporaries are reused (site-b: 0.06 s in blocks of
#: 8,192 rows, 0.015 s so).
ENCODE_BLOCK_VALUES = 1 << 20
#: A column gets one bin of its encoding per this many rows of the rarest
#: class (at least one bin, at most 32): the encoding's resolution grows with
#: the evidence. With all 32 bins on little data the network overfits: on
#: synthetic data of 1,500 rows, 8 % positive, 80 features, AUC fell from 0.93
#: to 0.80; site-b (1,800 positives) gets its 32 bins. One bin per 50 rows
#: until issue 23; with the learnt input scale, 25 brought site-b's sample of
#: 9,000 rows (900 of the rarest class) from 0.0061 below the trees to 0.0040.
MINORITY_ROWS_PER_BIN = 25
#: Below this many training rows of the rarest class, the inputs are the
#: centred columns themselves (format 1), not their encoding: so coarse an
#: encoding costs more than it gives. Measured with one bin per 50 rows of
#: the rarest class, as it was then (stratified 80/20 splits, AUC): site-a
#: (214 rows of the rarest class) 0.902 centred, 0.892 encoded (10 splits);
#: site-b sampled to 2,000
#: rows (256) 0.963 against 0.961; to 4,000 (500) 0.964 against 0.966; to
#: 7,000 (907) 0.966 against 0.968; all of site-b (1,810) 0.973 against 0.978.
ENCODING_MIN_RARE_ROWS = 400

#: Class weights are (n / (k n_c)) ** this: 1 weighs every class equally in
#: the loss (balanced), 0 every row. See docs/model.md, "Choices, measured".
CLASS_WEIGHT_POWER = 0.5
#: After training, log((n / (k n_c)) ** this) is added to the output layer's
#: bias: the decision and the probability Moodle gets are those of class
#: weights to the power 0.75, while the network learns with 0.5. A shift does
#: not change how the rows are ranked (AUC), and training with 0.75 would cost
#: site-b 0.0006 of AUC; it raises balanced accuracy on site-a (centred
#: inputs) and the share of the students at risk whose probability reaches
#: Moodle's 0.6 (docs/model.md, "Choices, measured").
DECISION_SHIFT_POWER = 0.25
#: A learnt scale per input before the first layer (a "scaling layer", from
#: RealMLP: Holzmüller et al., "Better by default", NeurIPS 2024, whose
#: defaults were chosen on some 100 tabular datasets), its steps 6 times the
#: learning rate as there. It lets the network turn all of an input's weights
#: up or down at once, which Adam's per-weight steps do slowly: a learnt
#: feature selection. Measured in 10-fold cross-validation against the trees
#: (bench/cv.py, issue 23, docs/model.md "Choices, measured"), with the finer
#: bins below: closer to the trees on site-b (0.0041 below them -> 0.0031)
#: and its sample of 9,000 rows (0.0067 -> 0.0040), and on three synthetic
#: sets by 0.004 to 0.046; site-a's lead kept. It is folded into the first
#: layer's weights after training: a model file has no new part. (RealMLP's
#: label smoothing, 0.1, was tried too: as good on site-b, 0.019 worse on the
#: synthetic 9,000 x 200.)
INPUT_SCALE_RATE = 6.0


@dataclass
class TrainingOptions:
    """Knobs of one training; the defaults are what Moodle gets."""

    seed: int = 0
    epochs: int = 24
    #: The peak learning rate, reached after `warmup` of the steps.
    learning_rate: float = 2e-3
    warmup: float = 0.05
    dropout: float = 0.2
    l2: float = 1e-4
    #: A learnt scale per input before the first layer, whose steps are this
    #: many times the learning rate (see `input_scaled`); 0: none.
    input_scale_rate: float = INPUT_SCALE_RATE
    #: 1 weighs every class equally in the loss (balanced), 0 weighs every row equally.
    class_weight_power: float = CLASS_WEIGHT_POWER
    progress: bool = False  # a progress line on stderr (terminals only)
    #: One TensorBoard directory per network trained side by side (evaluation).
    tensorboard_dirs: list[str] = field(default_factory=list)


def class_indices(y: np.ndarray, classes: list[int]) -> np.ndarray:
    """Class values to 0..k-1 in `classes` order."""
    lookup = np.full(int(max(max(classes), int(y.max(initial=0)))) + 1, -1, dtype=np.int64)
    lookup[np.asarray(classes, dtype=np.int64)] = np.arange(len(classes))
    return lookup[np.asarray(y, dtype=np.int64)]


def require_all_classes(y_idx: np.ndarray, nclasses: int) -> None:
    if len(np.unique(y_idx)) < nclasses:
        raise BackendError(
            MISSING_CLASSES_MESSAGE, status=NOT_ENOUGH_DATA, errors=MISSING_CLASSES_MESSAGE
        )


def train(
    X: np.ndarray,
    y: np.ndarray,
    classes: list[int],
    feature_names: list[str],
    previous: Model | None = None,
    options: TrainingOptions | None = None,
) -> Model:
    """Train a new model, or continue training `previous` on new rows."""
    options = options or TrainingOptions()
    if previous is not None:
        previous.check_features(X.shape[1])
        if previous.classes != classes:
            raise BackendError(
                f"The dataset's targetclasses {classes} differ from the "
                f"model's {previous.classes}; train a new model."
            )
    y_idx = class_indices(y, classes)
    require_all_classes(y_idx, len(classes))
    if previous is not None:
        # The stored inputs, encoding included: the weights were learnt on them;
        # and the network as it learnt, without the decision shift.
        inputs, start = previous.inputs, previous.unshifted_network()
        layout, version = start.layout, previous.format_version
    else:
        columns, _, _ = scaling(X)
        inputs = network_inputs(X, columns, None, options.seed, _rarest(y_idx, len(classes)))
        layout = Layout(inputs.width, tuple(hidden_units(X, len(columns))), len(classes))
        version = (ENCODED if inputs.encoding is not None else CENTRED).number
        start = None
    networks, epochs = _SideBySide(
        X, [inputs], y_idx, [np.arange(len(y_idx))], layout, options, start
    ).fit()
    past = dict(previous.history) if previous is not None else {}
    record = {
        "trainings": int(past.get("trainings", 0)) + 1,
        "rows_seen": int(past.get("rows_seen", 0)) + int(X.shape[0]),
        "last_epochs": epochs[0],
    }
    log.info(
        "trained %d rows for %d epochs (hidden layers %s)", len(y_idx), epochs[0], layout.hidden
    )
    shift = logit_shift(y_idx, len(classes))
    return Model(
        classes=list(classes),
        nfeatures=int(X.shape[1]),
        inputs=inputs,
        network=networks[0].shift_output(shift),
        format_version=version,
        feature_names=list(feature_names),
        history=record,
        logit_shift=shift,
    )


def train_splits(
    X: np.ndarray,
    y: np.ndarray,
    classes: list[int],
    feature_names: list[str],
    splits: list[np.ndarray],
    options: TrainingOptions | None = None,
) -> list[Model]:
    """Train one fresh model per row subset, side by side (evaluation's iterations).

    The subsets must be of equal size. Every model keeps the columns that vary
    in the whole file, and fits its encoding on its own rows only (its test
    rows must not shape its inputs).
    """
    options = options or TrainingOptions()
    y_idx = class_indices(y, classes)
    columns, _, _ = scaling(X)
    # One kind of inputs for all (they train as one computation): the splits
    # are stratified and of equal size, so their rarest classes are too.
    rarest = min(_rarest(y_idx[rows], len(classes)) for rows in splits)
    inputs = [network_inputs(X, columns, rows, options.seed, rarest) for rows in splits]
    version = (ENCODED if inputs[0].encoding is not None else CENTRED).number
    layout = Layout(
        max(i.width for i in inputs), tuple(hidden_units(X, len(columns))), len(classes)
    )
    networks, epochs = _SideBySide(X, inputs, y_idx, splits, layout, options, None).fit()
    models = []
    for k, rows in enumerate(splits):
        shift = logit_shift(y_idx[rows], len(classes))
        models.append(
            Model(
                classes=list(classes),
                nfeatures=int(X.shape[1]),
                inputs=inputs[k],
                network=networks[k].shift_output(shift),
                format_version=version,
                feature_names=list(feature_names),
                history={"trainings": 1, "rows_seen": len(rows), "last_epochs": epochs[k]},
                logit_shift=shift,
            )
        )
    return models


def _rarest(y_idx: np.ndarray, nclasses: int) -> int:
    """Rows of the rarest class."""
    return int(np.bincount(y_idx, minlength=nclasses).min())


def network_inputs(
    X: np.ndarray, columns: np.ndarray, rows: np.ndarray | None, seed: int, rarest: int
) -> Inputs:
    """The inputs of a new network on `columns`, fitted on `rows` (all by
    default): their piecewise-linear encoding when the rarest class has
    `rarest` >= ENCODING_MIN_RARE_ROWS rows there, else the centred columns."""
    if rarest >= ENCODING_MIN_RARE_ROWS:
        return piecewise_inputs(X, columns, rows, seed, rarest)
    _, mean, scale = scaling(X, columns, rows)
    return Inputs(columns, mean, scale)


def piecewise_inputs(
    X: np.ndarray, columns: np.ndarray, rows: np.ndarray | None, seed: int, rarest: int
) -> Inputs:
    """The piecewise-linear encoding of `columns` fitted on `rows` (all by
    default), with one bin per MINORITY_ROWS_PER_BIN rows of the rarest class
    (`rarest` of them), and the encoded inputs' mean there (scale 1: the
    components are in [0, 1] already)."""
    rows = np.arange(X.shape[0]) if rows is None else np.asarray(rows)
    if len(rows) > ENCODING_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, ENCODING_ROWS, replace=False))
    Xc = X[rows][:, columns]
    encoding = PiecewiseLinear.fit(Xc, max_edges=rarest // MINORITY_ROWS_PER_BIN + 1)
    total = np.zeros(encoding.width)
    step = max(1, ENCODE_BLOCK_VALUES // max(encoding.width, 1))
    for start in range(0, len(Xc), step):
        total += encoding.encode(Xc[start : start + step]).sum(axis=0, dtype=np.float64)
    mean = (total / max(len(Xc), 1)).astype(np.float32)
    return Inputs(columns, mean, np.ones_like(mean), encoding)


def scaling(
    X: np.ndarray, columns: np.ndarray | None = None, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the columns that vary (unless given); centre them.

    Constant columns carry no information and the old backend dropped them
    too. When nothing varies (Moodle sends all-zero features in its own
    tests) every column is kept, and the network learns the class prior.
    Statistics are taken over `rows` (all by default).
    """
    mean, std = _column_stats(X, rows)
    if columns is None:
        columns = np.flatnonzero(std > 0)
        if columns.size == 0:
            columns = np.arange(X.shape[1])
    # Only shrink columns wider than Moodle's [-1, 1] range: dividing a rare,
    # nearly constant indicator by its tiny deviation makes it explode on new
    # rows (measured on site-a: AUC 0.58 with plain standardisation, 0.92 so).
    scale = np.maximum(std[columns], 1.0).astype(np.float32)
    return columns.astype(np.int64), mean[columns].astype(np.float32), scale


def _column_stats(X: np.ndarray, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per column, a block of rows at a time: NumPy's
    own std would make a float64 copy of the whole matrix (3.2 GB for 1M x 400)."""
    n = X.shape[0] if rows is None else len(rows)
    total = np.zeros(X.shape[1])
    for block in _row_blocks(X, rows):
        total += block.sum(axis=0, dtype=np.float64)
    mean = total / max(n, 1)
    squares = np.zeros(X.shape[1])
    for block in _row_blocks(X, rows):
        squares += np.square(block - mean).sum(axis=0)
    return mean, np.sqrt(squares / max(n, 1))


def _row_blocks(X: np.ndarray, rows: np.ndarray | None) -> Iterator[np.ndarray]:
    """X (or its `rows`) in blocks of about STATS_BLOCK_VALUES values."""
    n = X.shape[0] if rows is None else len(rows)
    step = max(1, STATS_BLOCK_VALUES // max(X.shape[1], 1))
    for start in range(0, n, step):
        yield X[start : start + step] if rows is None else X[rows[start : start + step]]


def hidden_units(X: np.ndarray, width: int) -> list[int]:
    """Small data gets a small network, as the old backend did."""
    few_rows = X.shape[0] < 1000 and len(np.unique(X, axis=0)) < 100
    if few_rows:
        return [10]
    units = int(min(128, max(16, width // 3)))
    return [units, units]


def batch_size(rows: int) -> int:
    """About 40 steps an epoch: small data needs small batches to learn within
    a few epochs; large data needs large ones to be quick."""
    return int(min(1024, max(16, rows // 40)))


def learning_rate(tf: Any, step: Any, peak: float, warmup_steps: float, total_steps: float) -> Any:
    """The learning rate at `step` (1-based, a float tensor): a linear
    warm-up to `peak` over `warmup_steps`, then a cosine down to 0 at
    `total_steps` (Loshchilov and Hutter's SGDR without restarts)."""
    done = tf.minimum(step / total_steps, 1.0)
    warm = tf.minimum(step / max(warmup_steps, 1.0), 1.0)
    return peak * warm * 0.5 * (1.0 + tf.cos(math.pi * done))


def logit_shift(y_idx: np.ndarray, nclasses: int) -> np.ndarray:
    """What training adds to the output bias (DECISION_SHIFT_POWER)."""
    return np.log(class_weights(y_idx, nclasses, DECISION_SHIFT_POWER)).astype(np.float32)


def input_scaled(layers: list[tuple[Any, Any]], offsets: Any, rate: float) -> list[tuple[Any, Any]]:
    """Side-by-side layers (kernel [K, in, out], bias [K, out]) whose first
    layer sees input i of network k scaled by 1 + rate * offsets[k, i]: its
    kernel's row i so scaled. The same function on TensorFlow variables in
    the training graph and on their final NumPy values, which are stored."""
    (kernel, bias), rest = layers[0], layers[1:]
    return [(kernel * (1.0 + rate * offsets)[:, :, None], bias), *rest]


def dropout_masks(
    tf: Any, shape: Any, widths: tuple[int, ...], rate: float, seed: Any
) -> list[Any]:
    """Dropout's multipliers for hidden layers of `widths` units on a batch
    of `shape` ([K, rows], a tensor): 0 for a dropped unit, 1 / (1 - rate)
    for a kept one. One draw of 16-bit random numbers for all the layers,
    stateless from `seed` (two int32), so that a training repeats exactly.
    Why not `tf.nn.dropout`: a float32 draw and five operations a layer;
    this took 124 us a step where two of those took 217 (site-b's batch)."""
    if not rate:
        return []
    total = sum(widths)
    pairs = (total + 1) // 2
    bits = tf.random.stateless_uniform(
        tf.concat([shape, [pairs]], 0), seed, minval=None, maxval=None, dtype=tf.uint32
    )
    u16 = tf.reshape(tf.bitcast(bits, tf.uint16), tf.concat([shape, [2 * pairs]], 0))
    keep = tf.cast(u16 >= round(rate * 65536), tf.float32) * (1.0 / (1.0 - rate))
    return tf.split(keep, [*widths, 2 * pairs - total], axis=2)[: len(widths)]


def class_weights(y_idx: np.ndarray, nclasses: int, power: float) -> np.ndarray:
    """Per-class loss weights, (n / (k * n_c)) ** power: 1 is 'balanced'."""
    counts = np.bincount(y_idx, minlength=nclasses).astype(np.float64)
    counts[counts == 0] = 1
    return (len(y_idx) / (nclasses * counts)) ** power


# --------------------------------------------------------------------------
# The engine: several networks trained side by side as one computation


class _SideBySide:
    """K networks trained at once: network k on rows `subsets[k]` of X, made
    into its inputs by `inputs[k]`, all of shape `layout` (`layout.inputs` is
    the widest of their inputs; narrower ones are padded, see
    `mlbackend.model.inputs.tf_stage`), starting from `start` (a network to
    train on, K = 1) or from fresh weights.

    `fit` runs `options.epochs` epochs over all of each network's rows, the
    learning rate following `learning_rate`'s schedule.
    """

    def __init__(
        self,
        X: np.ndarray,
        inputs: list[Inputs],
        y_idx: np.ndarray,
        subsets: list[np.ndarray],
        layout: Layout,
        options: TrainingOptions,
        start: Network | None,
    ) -> None:
        self.X, self.inputs, self.y_idx, self.layout, self.options = (
            X,
            inputs,
            y_idx,
            layout,
            options,
        )
        self.K = len(subsets)
        self.columns = inputs[0].columns
        self.rng = np.random.default_rng(options.seed)
        self._plan_rows(subsets)
        self.resident = X.shape[0] * len(self.columns) * 4 <= RESIDENT_BYTES
        values = self.K * len(self.columns)
        self.chunk = max(self.bs, (CHUNK_VALUES // max(values, 1)) // self.bs * self.bs)
        self.start = start.side_by_side() if start is not None else None
        self.batches_done = 0

    def _plan_rows(self, subsets: list[np.ndarray]) -> None:
        """Each network's training rows, as an index array [K, n] (small
        data tiled up to SMALL_DATA_ROWS), the batch size and class weights."""
        reps = -(-SMALL_DATA_ROWS // min(len(rows) for rows in subsets))
        train_rows = [np.tile(rows, reps) if reps > 1 else rows for rows in subsets]
        self.n = min(len(r) for r in train_rows)
        self.train_idx = np.stack([r[: self.n] for r in train_rows])  # [K, n]
        self.bs = min(batch_size(self.n), self.n)
        self.cw = np.stack(
            [
                class_weights(self.y_idx[r], self.layout.outputs, self.options.class_weight_power)
                for r in self.train_idx
            ]
        ).astype(np.float32)  # [K, C]

    def _used(self, rows: np.ndarray | None = None) -> np.ndarray:
        """The used columns of X (of its `rows`), float32, contiguous."""
        X = self.X if rows is None else self.X[rows]
        if len(self.columns) < X.shape[1]:
            X = X[:, self.columns]
        return np.ascontiguousarray(X, dtype=np.float32)

    def fit(self) -> tuple[list[Network], list[int]]:
        """Train; returns each network and its epochs."""
        tf = import_tensorflow()
        layers = self.start or self.layout.initial(self.rng, self.K)
        weights = _Weights(layers, np.zeros((self.K, self.layout.inputs), np.float32))
        variables = [tf.Variable(start) for start in weights.start]
        train_chunk = self._graph(tf, variables, weights)
        source = tf.constant(self._used()) if self.resident else None
        options = self.options
        writers = _tensorboard_writers(options.tensorboard_dirs)
        for e in range(options.epochs):
            logs = {"loss": self._epoch(train_chunk, source)}
            _log_epoch(e, options.epochs, logs, writers, options.progress)
        if options.progress:
            sys.stderr.write("\n")
        for writer in writers:
            writer.close()
        learnt = weights.arrays([v.numpy() for v in variables])
        pairs = input_scaled(*learnt, options.input_scale_rate)
        trained = [Dense(kernel, bias) for kernel, bias in pairs]
        networks = [
            Network.from_side_by_side(trained, k, self.inputs[k].width, self.layout.activation)
            for k in range(self.K)
        ]
        return networks, [options.epochs] * self.K

    def _graph(self, tf: Any, variables: list[Any], weights: _Weights) -> Any:
        """The compiled TensorFlow function: one pass over the rows `idx`
        ([K, n], shuffled) of `source` (used columns), the batch loop inside
        the graph, each batch gathered and made into the networks' inputs
        there (the input stage compiled by XLA on large data, see
        XLA_MIN_VALUES). `variables`: the two that hold `weights`."""
        K, bs, layout, options = self.K, self.bs, self.layout, self.options
        stage, depth = tf_stage(tf, self.inputs)
        assert depth == layout.inputs
        if self.n * K * depth >= XLA_MIN_VALUES:
            stage = tf.function(stage, jit_compile=True, autograph=False)
        steps = -(-self.n // bs) * max(options.epochs, 1)
        rate = options.input_scale_rate
        adam = Adam(
            tf,
            variables,
            lambda t: learning_rate(tf, t, options.learning_rate, options.warmup * steps, steps),
        )
        # L2 on the kernels, as its gradient added to the loss's: two
        # operations a step instead of the penalty's forward and backward passes.
        decays = [tf.constant(d) for d in weights.decay(options.l2)]
        width = len(self.columns)

        def train_step(
            b: Any, total: Any, source: Any, idx: Any, y: Any, w: Any, first: Any
        ) -> tuple[Any, ...]:
            ib, yb, wb = (t[:, b * bs : (b + 1) * bs] for t in (idx, y, w))
            xb = stage(tf.gather(source, ib))
            seed = tf.stack([options.seed, first + b])  # this batch's number in the training
            masks = dropout_masks(tf, tf.shape(ib), layout.hidden, options.dropout, seed)
            with tf.GradientTape() as tape:
                pairs, offsets = weights.parts(tf, variables)
                layers = input_scaled(pairs, offsets, rate) if rate else pairs
                logits = layout.tf_logits(tf, layers, xb, masks)
                ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=logits)
                per_model = tf.reduce_mean(ce * wb, axis=1)
                loss = tf.reduce_sum(per_model)
            grads = tape.gradient(loss, variables)
            grads = [g + d * v for g, d, v in zip(grads, decays, variables)]
            with tf.control_dependencies(adam.apply(grads)):
                return b + 1, total + per_model, source, idx, y, w, first

        spec = (
            tf.TensorSpec([None, width], tf.float32),
            tf.TensorSpec([K, None], tf.int32),
            tf.TensorSpec([K, None], tf.int32),
            tf.TensorSpec([K, None], tf.float32),
            tf.TensorSpec([], tf.int32),
        )

        # autograph=False: converting Python source to a graph costs 0.7 s a call,
        # so the batch loop is an explicit while_loop. XLA (jit_compile) took 50 s
        # to compile here, then saved little; compiling the step's body alone
        # made site-b's evaluation slower (14.5 s -> 19 s) and larger (+90 MB).
        @tf.function(autograph=False, input_signature=spec)
        def train_chunk(source: Any, idx: Any, y: Any, w: Any, first: Any) -> Any:
            """One pass over rows `idx` of `source`, batch by batch, the first
            of them the training's batch number `first`; summed batch losses."""
            batches = (tf.shape(idx)[1] + bs - 1) // bs
            start = (tf.constant(0), tf.zeros([K]), source, idx, y, w, first)
            _, total, *_ = tf.while_loop(lambda b, *rest: b < batches, train_step, start)
            return total

        return train_chunk

    def _epoch(self, train_chunk: Any, source: Any) -> np.ndarray:
        """One pass over the training rows in a new order; mean batch loss per
        network. `source`: the used columns in TensorFlow (one call), or
        None (a call per chunk of rows copied out of X)."""
        order = self.train_idx[:, self.rng.permutation(self.n)]
        total = np.zeros(self.K)
        step = self.n if source is not None else self.chunk
        for c in range(0, self.n, step):
            idx = order[:, c : c + step]
            y = self.y_idx[idx]
            if source is None:
                rows = self._used(idx.reshape(-1))
                local = np.arange(idx.size, dtype=np.int32).reshape(idx.shape)
            else:
                rows, local = source, idx.astype(np.int32)
            total += train_chunk(
                rows,
                local,
                y.astype(np.int32),
                np.take_along_axis(self.cw, y, axis=1),
                np.int32(self.batches_done),
            ).numpy()
            self.batches_done += -(-idx.shape[1] // self.bs)
        return total / -(-self.n // self.bs)


class _Weights:
    """What a training learns, in two TensorFlow variables: the first
    layer's kernel, by far the widest array, alone; the rest (the other
    kernels, the biases, the input scale's offsets, see `input_scaled`)
    laid end to end in one flat vector. A step is then two Adam updates,
    not seven: seven took 157 us on site-b's network, one all 58. The first
    kernel is kept out of the vector because taking a vector apart copies
    it: `tf.split` copies every piece (12M floats: 15-21 ms a step, against
    3 ms to read them), and so does a slice that does not start and end on
    64 bytes."""

    def __init__(self, layers: list[Dense], offsets: np.ndarray) -> None:
        # The flat vector's pieces, each with whether L2 decays it (kernels only).
        pieces = [(layers[0].bias, False)]
        for layer in layers[1:]:
            pieces += [(layer.kernel, True), (layer.bias, False)]
        pieces.append((offsets, False))
        rest = [a for a, _ in pieces]
        self.shapes = [a.shape for a in rest]
        self.sizes = [int(a.size) for a in rest]
        self.decayed = [decayed for _, decayed in pieces]
        #: The variables' starting values: the first kernel, the rest.
        self.start = [
            layers[0].kernel.astype(np.float32),
            np.concatenate([a.ravel() for a in rest]).astype(np.float32),
        ]

    def parts(self, tf: Any, variables: list[Any]) -> tuple[list[tuple[Any, Any]], Any]:
        """(kernel, bias) per layer and the offsets, out of the two
        variables, in the training graph."""
        first, flat = variables
        pieces = tf.split(flat, self.sizes)
        rest = [tf.reshape(p, shape) for p, shape in zip(pieces, self.shapes)]
        return self._unpack([first, *rest])

    def arrays(self, values: list[np.ndarray]) -> tuple[list[tuple[Any, Any]], Any]:
        """(kernel, bias) per layer and the offsets, out of the variables'
        values."""
        first, flat = values
        pieces = np.split(flat, np.cumsum(self.sizes)[:-1])
        return self._unpack([first, *(p.reshape(s) for p, s in zip(pieces, self.shapes))])

    def decay(self, l2: float) -> list[np.ndarray]:
        """The gradient of an L2 penalty `l2` on the kernels is these times
        the variables: 2 * l2 on the kernels' positions, 0 elsewhere."""
        rest = [
            np.full(n, 2.0 * l2 if k else 0.0, np.float32) for n, k in zip(self.sizes, self.decayed)
        ]
        return [np.asarray(2.0 * l2, np.float32), np.concatenate(rest)]

    @staticmethod
    def _unpack(arrays: list[Any]) -> tuple[list[tuple[Any, Any]], Any]:
        *weights, offsets = arrays
        return list(zip(weights[0::2], weights[1::2])), offsets


def _tensorboard_writers(dirs: list[str]) -> list[Any]:
    if not dirs:
        return []
    from mlbackend.tensorboard import ScalarWriter

    return [ScalarWriter(d) for d in dirs]


def _log_epoch(
    e: int, epochs: int, logs: dict[str, np.ndarray], writers: list[Any], progress: bool
) -> None:
    for k, writer in enumerate(writers):
        for key, values in logs.items():
            writer.scalar(f"epoch_{key}", float(values[k]), e)
    if progress:
        sys.stderr.write(f"\r  epoch {e + 1:>3} of {epochs}: loss {logs['loss'].mean():.4f}   ")
        sys.stderr.flush()

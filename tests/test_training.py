"""The model and its storage, in process: parity of the NumPy forward pass
with TensorFlow's, continued training, atomic and validated storage, and
every model format still predicting as it did (tests/golden/)."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from helpers.models import network, scaled, scaled_network
from helpers.oracle import keras_predict_proba

from mlbackend import dataset, store, synthetic, training
from mlbackend.contract import BackendError
from mlbackend.model import Model
from mlbackend.model.format import from_arrays, to_arrays
from mlbackend.model.inputs import Inputs
from mlbackend.model.network import Layout
from mlbackend.training import input_scaled


@pytest.fixture(scope="module")
def trained(binary_data):
    ds = dataset.read_training(binary_data["train"], tensorflow=True)
    return ds, training.train(ds.X, ds.y, ds.classes, ds.feature_names)


@pytest.fixture(scope="module")
def finely_encoded():
    """Enough rows of either class for many bins: 1,500 rows, 40 % positive,
    one column of many values."""
    data = synthetic.generate(1500, 10, positive_rate=0.4, seed=8)
    X = np.nan_to_num(data.X).astype(np.float32)
    X[:, 4] = np.random.default_rng(2).normal(0, 3, len(X)).round(3)
    return X, data.y, training.train(X[:1200], data.y[:1200], data.classes, [])


def test_numpy_prediction_equals_tensorflow(finely_encoded):
    X, _, m = finely_encoded
    enc = m.inputs.encoding
    assert enc is not None and m.format_version == 3 and enc.counts.max() > 9
    # Out-of-range values too: below the first bin edge and past the last.
    X = np.vstack([X[1200:], X[1200:1220] * 3.0, -X[1200:1220] * 3.0])
    np.testing.assert_allclose(m.predict_proba(X), keras_predict_proba(m, X), atol=1e-5)


def trainers_forward_pass(m: Model, X: np.ndarray, xla: bool) -> np.ndarray:
    """Probabilities from the very TensorFlow functions training runs (its
    input stage, compiled by XLA as on large data or not, and
    `Layout.tf_logits`), on a trained model's weights."""
    from mlbackend.model.inputs import tf_stage
    from mlbackend.tf import import_tensorflow

    tf = import_tensorflow()
    stage, depth = tf_stage(tf, [m.inputs])
    assert depth == m.inputs.width
    if xla:
        stage = tf.function(stage, jit_compile=True, autograph=False)
    pairs = [(tf.constant(d.kernel), tf.constant(d.bias)) for d in m.network.side_by_side()]
    rows = tf.constant(X[:, m.inputs.columns][None].astype(np.float32))
    logits = m.network.layout.tf_logits(tf, pairs, stage(rows))
    z = logits[0].numpy().astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("xla", [False, True], ids=["interpreted", "xla"])
def test_numpy_prediction_equals_the_trainers_forward_pass(trained, finely_encoded, xla):
    """Both formats training writes (1: centred, 3: encoded), out-of-range
    values included: prediction computes what training optimised."""
    ds, centred = trained
    X, _, encoded = finely_encoded
    X = np.vstack([X[1200:], X[1200:1220] * 3.0, -X[1200:1220] * 3.0])
    for m, rows in ((centred, ds.X), (encoded, X)):
        np.testing.assert_allclose(
            m.predict_proba(rows), trainers_forward_pass(m, rows, xla), atol=1e-5
        )
    assert {centred.format_version, encoded.format_version} == {1, 3}


def test_the_encoding_follows_the_training_quantiles(finely_encoded):
    X, y, m = finely_encoded
    X, y = X[:1200], y[:1200]
    enc = m.inputs.encoding
    most = np.bincount(y).min() // training.MINORITY_ROWS_PER_BIN + 1
    assert len(enc.counts) == len(m.columns) and enc.counts.max() == min(most, 33)
    start = 0
    for j, count in enumerate(enc.counts):
        edges = enc.edges[start : start + count]
        start += count
        column = X[:, m.columns[j]]
        distinct = np.unique(column)
        if len(distinct) <= most:
            np.testing.assert_array_equal(edges, distinct.astype(np.float32))
        else:
            levels = np.linspace(0, 1, min(most, 33))
            quantiles = np.unique(np.quantile(column.astype(np.float64), levels).astype(np.float32))
            np.testing.assert_array_equal(edges, quantiles)
            assert edges[0] == column.min() and edges[-1] == column.max()
    # Centred: the encoded training rows average to zero.
    np.testing.assert_allclose(m.inputs(X).mean(axis=0), 0, atol=1e-5)


def test_little_evidence_gets_the_centred_columns(trained):
    """90 rows of the rarest class (under ENCODING_MIN_RARE_ROWS): no
    encoding, the centred columns, a format 1 model."""
    ds, m = trained
    assert m.inputs.encoding is None and m.format_version == 1
    np.testing.assert_allclose(m.inputs(ds.X).mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(m.predict_proba(ds.X), keras_predict_proba(m, ds.X), atol=1e-5)


def test_the_rule_between_centred_and_encoded_inputs():
    X = np.random.default_rng(4).normal(size=(1000, 3)).astype(np.float32)
    columns = np.arange(3)
    rare = training.ENCODING_MIN_RARE_ROWS
    assert training.network_inputs(X, columns, None, 0, rare - 1).encoding is None
    encoding = training.network_inputs(X, columns, None, 0, rare).encoding
    assert encoding is not None
    assert encoding.counts.max() == rare // training.MINORITY_ROWS_PER_BIN + 1


def test_continued_training_of_an_old_format_model_keeps_its_inputs(trained):
    """A version 1 model (centred columns, no encoding) trains on as version 1."""
    ds, m = trained
    rng = np.random.default_rng(3)
    width = len(m.columns)
    old = Model(
        classes=[0, 1],
        nfeatures=ds.nfeatures,
        inputs=Inputs(
            m.columns, rng.normal(0, 0.1, width).astype(np.float32), np.ones(width, np.float32)
        ),
        network=scaled_network(network([width, 8, 2], seed=3), 0.3),
        format_version=1,
    )
    again = training.train(ds.X[:300], ds.y[:300], ds.classes, ds.feature_names, previous=old)
    assert again.inputs.encoding is None and again.format_version == 1
    np.testing.assert_array_equal(again.inputs.mean, old.inputs.mean)
    assert json.loads(str(to_arrays(again)["meta"]))["format_version"] == 1
    np.testing.assert_allclose(
        again.predict_proba(ds.X), keras_predict_proba(again, ds.X), atol=1e-5
    )


def test_the_decision_shift_is_in_the_bias_and_taken_out_to_train_on(finely_encoded):
    """The shift toward the rarer class is part of the output bias (so any
    reader predicts the same) and is stored; training on takes it out first,
    so it is never added twice: with a learning rate of 0 nothing changes."""
    X, y, m = finely_encoded
    expected = np.log(training.class_weights(y[:1200], 2, training.DECISION_SHIFT_POWER))
    np.testing.assert_allclose(m.logit_shift, expected, rtol=1e-6)
    assert m.logit_shift[1] > 0  # class 1 is the rarer
    stored = from_arrays(to_arrays(m), "x")
    np.testing.assert_array_equal(stored.logit_shift, m.logit_shift)
    frozen = training.TrainingOptions(learning_rate=0.0)
    again = training.train(X[:1200], y[:1200], [0, 1], [], previous=m, options=frozen)
    for before, after in zip(m.network.layers, again.network.layers):
        np.testing.assert_allclose(after.kernel, before.kernel, atol=1e-6)
        np.testing.assert_allclose(after.bias, before.bias, atol=1e-6)
    # Without the shift, the same weights decide as the loss's class weights do.
    unshifted = Model(**{**m.__dict__, "network": m.unshifted_network()})
    last = m.network.layers[-1].bias - unshifted.network.layers[-1].bias
    np.testing.assert_allclose(last, m.logit_shift, atol=1e-6)
    assert np.mean(unshifted.predict_proba(X).argmax(1)) < np.mean(m.predict_proba(X).argmax(1))
    assert np.mean(unshifted.predict_proba(X).argmax(1)) < np.mean(m.predict_proba(X).argmax(1))


def test_a_wrong_logit_shift_is_refused(finely_encoded):
    *_, m = finely_encoded
    for bad in ([1.0], [0.0, float("inf")], ["a", 1], [0.0, 1e6], {"a": 1}):
        arrays = to_arrays(m)
        meta = json.loads(str(arrays["meta"]))
        meta["logit_shift"] = bad
        arrays["meta"] = np.array(json.dumps(meta))
        with pytest.raises(BackendError, match="logit_shift"):
            from_arrays(arrays, "x")


def test_constant_columns_are_dropped_and_remembered(trained):
    ds, m = trained
    # The generator makes the first two columns constant.
    assert 0 not in m.columns and 1 not in m.columns
    assert m.nfeatures == 20 and len(m.columns) < 20


def test_continued_training_keeps_the_encoding_and_changes_the_weights(finely_encoded):
    X, y, m = finely_encoded
    again = training.train(X[1200:], y[1200:], [0, 1], [], previous=m)
    np.testing.assert_array_equal(again.columns, m.columns)
    np.testing.assert_array_equal(again.inputs.encoding.counts, m.inputs.encoding.counts)
    np.testing.assert_array_equal(again.inputs.encoding.edges, m.inputs.encoding.edges)
    np.testing.assert_array_equal(again.inputs.mean, m.inputs.mean)
    assert not np.allclose(again.network.layers[0].kernel, m.network.layers[0].kernel)
    assert again.history["trainings"] == 2


def test_continued_training_refuses_other_features_or_classes(trained):
    ds, m = trained
    with pytest.raises(BackendError, match="features"):
        training.train(ds.X[:, :5], ds.y, ds.classes, [], previous=m)
    with pytest.raises(BackendError, match="targetclasses"):
        training.train(ds.X, ds.y, [0, 1, 2], [], previous=m)


def test_store_round_trip(trained, tmp_path):
    _, m = trained
    with store.writer_lock(str(tmp_path)):
        store.save(str(tmp_path), m)
    loaded = store.read(str(tmp_path)).model
    X = np.random.default_rng(0).uniform(-1, 1, (10, 20)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict_proba(X), m.predict_proba(X))
    assert sorted(os.listdir(tmp_path / "classifier")) == [".lock", "model.npz"]


def test_a_reader_sees_the_old_model_or_the_new_never_a_partial_one(trained, tmp_path):
    """Saves are atomic: a reader that loads the file while saves of two
    different models alternate always gets one of them, whole."""
    import threading

    _, a = trained
    b = scaled(a, 0.5)
    X = np.random.default_rng(1).uniform(-1, 1, (5, 20)).astype(np.float32)
    answers = [a.predict_proba(X), b.predict_proba(X)]
    store.save(str(tmp_path), a)
    path = store.model_path(str(tmp_path))
    done = threading.Event()
    seen = []

    def read() -> None:
        while not done.is_set():
            try:
                with open(path, "rb") as f:  # past the cache: the file as it is now
                    p = store._read(f, path).predict_proba(X)
            except Exception as exc:  # noqa: BLE001 - a partial file: recorded, then failed
                seen.append(repr(exc))
                continue
            seen.append(
                next(
                    (i for i, ans in enumerate(answers) if np.array_equal(p, ans)), "another model"
                )
            )

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(60):
            with store.writer_lock(str(tmp_path)):
                store.save(str(tmp_path), b if i % 2 == 0 else a)
    finally:
        done.set()
        reader.join()
    assert len(seen) > 0 and set(seen) <= {0, 1}, set(seen)


def test_failed_save_keeps_the_previous_model(trained, tmp_path, monkeypatch):
    _, m = trained
    store.save(str(tmp_path), m)
    before = (tmp_path / "classifier" / "model.npz").read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(BackendError, match="disk is full"):
        store.save(str(tmp_path), m)
    assert (tmp_path / "classifier" / "model.npz").read_bytes() == before
    assert sorted(os.listdir(tmp_path / "classifier")) == ["model.npz"]


def test_stray_temporary_files_are_cleaned_by_the_next_writer(tmp_path):
    os.makedirs(tmp_path / "classifier")
    (tmp_path / "classifier" / ".tmp-killed.npz").write_bytes(b"half")
    with store.writer_lock(str(tmp_path)):
        pass
    assert not (tmp_path / "classifier" / ".tmp-killed.npz").exists()


@pytest.mark.parametrize(
    "damage",
    ["truncate", "bad shape", "pickle inside", "future", "edges not increasing", "edges missing"],
)
def test_damaged_models_are_refused(finely_encoded, tmp_path, damage):
    *_, m = finely_encoded
    arrays = to_arrays(m)
    path = tmp_path / "model.npz"
    if damage == "truncate":
        np.savez(path, **arrays)
        path.write_bytes(path.read_bytes()[:500])
    elif damage == "bad shape":
        arrays["layer0_kernel"] = arrays["layer0_kernel"][:, :3]
        np.savez(path, **arrays)
    elif damage == "pickle inside":
        arrays["columns"] = np.array([object()], dtype=object)
        np.savez(path, **arrays)
    elif damage == "future":
        arrays["meta"] = np.array(
            re.sub(r'"format_version": \d+', '"format_version": 99', str(arrays["meta"]))
        )
        np.savez(path, **arrays)
    elif damage == "edges not increasing":
        arrays["encoding_edges"] = arrays["encoding_edges"][::-1].copy()
        np.savez(path, **arrays)
    else:
        del arrays["encoding_edges"]
        np.savez(path, **arrays)
    with pytest.raises(BackendError) as err:
        store.read_file(str(path))
    assert err.value.status == 1


@pytest.mark.parametrize("which", ["trained", "finely_encoded"])
def test_model_arrays_are_plain_data(which, request):
    m = request.getfixturevalue(which)[-1]
    for name, arr in to_arrays(m).items():
        assert arr.dtype != object, name
    assert isinstance(from_arrays(to_arrays(m), "x"), Model)


def test_the_adam_adapter_takes_adams_step():
    """`mlbackend.tf.Adam` calls TensorFlow's raw ResourceApplyAdam op: two
    steps of it must be Adam's formula (Kingma and Ba), so that a TensorFlow
    that changes the op fails here, not in a model's quality."""
    from mlbackend.tf import Adam, import_tensorflow

    tf = import_tensorflow()
    start = np.array([[0.5, -1.0], [2.0, 0.0]], np.float32)
    var = tf.Variable(start)
    adam = Adam(tf, [var], learning_rate=0.1)
    grads = [np.array([[0.3, -0.2], [1.0, 0.0]], np.float32), np.full((2, 2), -0.5, np.float32)]
    expected, m, v = start.astype(np.float64), 0.0, 0.0
    for t, g in enumerate(grads, start=1):
        adam.apply([tf.constant(g)])
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        lr = 0.1 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        expected = expected - lr * m / (np.sqrt(v) + 1e-7)
    np.testing.assert_allclose(var.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_the_input_scale_scales_the_first_layers_inputs():
    """What training learns and what is stored: the network on inputs
    scaled by 1 + rate * offsets is the network whose first kernel is scaled
    (`input_scaled`), with TensorFlow tensors as with the NumPy values."""
    from mlbackend.tf import import_tensorflow

    tf = import_tensorflow()
    rng = np.random.default_rng(4)
    layout = Layout(5, (3,), 2)
    pairs = [(d.kernel, d.bias) for d in layout.initial(rng, 2)]
    offsets = rng.normal(0, 0.2, (2, 5)).astype(np.float32)
    h = rng.normal(0, 1, (2, 7, 5)).astype(np.float32)
    rate = 6.0

    def logits(layers: list, inputs: np.ndarray) -> np.ndarray:
        tensors = [(tf.constant(k), tf.constant(b)) for k, b in layers]
        return layout.tf_logits(tf, tensors, tf.constant(inputs)).numpy()

    expected = logits(pairs, h * (1 + rate * offsets)[:, None])
    in_graph = input_scaled(
        [(tf.constant(k), tf.constant(b)) for k, b in pairs], tf.constant(offsets), rate
    )
    stored = input_scaled(pairs, offsets, rate)
    np.testing.assert_allclose(
        logits([(k.numpy(), b.numpy()) for k, b in in_graph], h), expected, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(logits(stored, h), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(logits(pairs, h), expected, atol=1e-3)  # the scale matters


def test_dropout_masks_drop_the_rate_and_repeat_by_seed():
    """The trainer's dropout (`training.dropout_masks`): every unit is either
    dropped (0) or kept and scaled by 1 / (1 - rate), about `rate` of them
    dropped, layer by layer and network by network; the same seed gives the
    same masks (a training repeats), another seed others."""
    from mlbackend.tf import import_tensorflow

    tf = import_tensorflow()
    widths, rate = (58, 57), 0.2  # an odd total: the last 16-bit draw is half used

    def masks(seed: list[int]) -> list[np.ndarray]:
        shape = tf.constant([3, 301])
        drawn = training.dropout_masks(tf, shape, widths, rate, tf.constant(seed))
        return [m.numpy() for m in drawn]

    first = masks([0, 7])
    assert [m.shape for m in first] == [(3, 301, 58), (3, 301, 57)]
    for m in first:
        assert set(np.unique(m)) == {0.0, np.float32(1.0 / (1.0 - rate))}
        assert abs((m == 0).mean() - rate) < 0.01
    assert not np.array_equal(first[0][0], first[0][1])  # the networks' masks differ
    assert not np.array_equal(first[0][:, :, :57], first[1])  # and the layers'
    for a, b in zip(first, masks([0, 7])):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], masks([0, 8])[0])
    assert training.dropout_masks(tf, tf.constant([3, 301]), widths, 0.0, None) == []


def test_the_weights_variables_hold_the_layers_and_decay_the_kernels_only():
    """The trainer keeps its weights in two variables (`training._Weights`):
    the layers and offsets come back out of them unchanged, in TensorFlow
    and in NumPy, and their L2 terms are the gradient of l2 * (sum of
    squared kernels), the penalty the loss had before it became a gradient
    term."""
    from mlbackend.tf import import_tensorflow

    tf = import_tensorflow()
    rng = np.random.default_rng(5)
    layers = Layout(6, (4, 3), 2).initial(rng, 2)
    for layer in layers:
        layer.bias[:] = rng.normal(size=layer.bias.shape)
    offsets = rng.normal(size=(2, 6)).astype(np.float32)
    weights = training._Weights(layers, offsets)
    variables = [tf.Variable(start) for start in weights.start]
    for which in (weights.arrays(weights.start), weights.parts(tf, variables)):
        pairs, got = which
        np.testing.assert_array_equal(np.asarray(got), offsets)
        assert len(pairs) == len(layers)
        for layer, (kernel, bias) in zip(layers, pairs):
            np.testing.assert_array_equal(np.asarray(kernel), layer.kernel)
            np.testing.assert_array_equal(np.asarray(bias), layer.bias)
    l2 = 1e-3
    with tf.GradientTape() as tape:
        pairs, _ = weights.parts(tf, variables)
        penalty = l2 * sum(tf.reduce_sum(kernel * kernel) for kernel, _ in pairs)
    for got, decay, start in zip(
        tape.gradient(penalty, variables), weights.decay(l2), weights.start
    ):
        np.testing.assert_allclose(got.numpy(), decay * start, rtol=1e-6)

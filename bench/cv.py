#!/usr/bin/env python3
"""Cross-validated quality of the trainer, against gradient-boosted trees on
the same folds: what a change to the network is judged by (docs/model.md,
"Choices, measured"), rather than the three splits `make bench` prints.

Folds: stratified 5-fold, repeated with 2 seeds (10 folds), all trained side
by side in one call, as an evaluation trains its iterations
(`mlbackend.training.train_splits`, the program's own trainer and options).
The peer: scikit-learn's HistGradientBoostingClassifier with its defaults,
one thread, on the same folds; its figures are cached in --cache (they take
minutes and do not change). A dataset is a Moodle training CSV, optionally
sampled down, stratified and seeded, to stand for a smaller site:
`site-b-training.csv@9000`.

    .venv/bin/python bench/cv.py ../shared/datasets/site-b-training.csv@9000

Prints, per dataset: mean over the folds of AUC, weighted F1 and balanced
accuracy for ours and the trees, the paired AUC difference (ours - trees)
with its standard error, and our training's wall time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mlbackend import dataset, metrics, training  # noqa: E402

#: Seed of the stratified sample of "FILE@ROWS".
SUBSAMPLE_SEED = 11


def load(spec: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """X, class indices and classes of FILE or FILE@ROWS."""
    path, _, rows = spec.partition("@")
    ds = dataset.read_training(path, tensorflow=True)
    y = training.class_indices(ds.y, ds.classes)
    X = ds.X
    if rows:
        rng = np.random.default_rng(SUBSAMPLE_SEED)
        keep = []
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            keep.append(rng.choice(idx, int(round(int(rows) * len(idx) / len(y))), replace=False))
        picked = np.sort(np.concatenate(keep))
        X, y = X[picked], y[picked]
    return X, y, list(ds.classes)


def folds(y: np.ndarray, nfold: int = 5, seeds: tuple[int, ...] = (0, 1)) -> list[tuple]:
    """Stratified k-fold, once per seed: (training rows, test rows) pairs."""
    out = []
    for s in seeds:
        rng = np.random.default_rng(100 + s)
        parts: list[list[np.ndarray]] = [[] for _ in range(nfold)]
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            for f in range(nfold):
                parts[f].append(idx[f::nfold])
        for f in range(nfold):
            test = np.sort(np.concatenate(parts[f]))
            train = rng.permutation(np.setdiff1d(np.arange(len(y)), test))
            out.append((train, test))
    return out


def scores(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    s = metrics.classification_scores(y, proba.argmax(axis=1), proba.shape[1])
    return {
        "auc": metrics.roc_auc(y == 1, proba[:, 1]),
        "f1": s["f1_score"],
        "bacc": s["balanced accuracy"],
    }


def trees(X: np.ndarray, y: np.ndarray, fl: list[tuple], cache: Path) -> list[dict]:
    """The peer's scores per fold (cached by the data and folds)."""
    key = hashlib.sha256(X.tobytes() + y.tobytes() + str(len(fl)).encode()).hexdigest()[:16]
    path = cache / f"hgb-{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    res = []
    with threadpool_limits(1):
        for train, test in fl:
            m = HistGradientBoostingClassifier(random_state=0).fit(X[train], y[train])
            res.append(scores(y[test], m.predict_proba(X[test])))
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res))
    return res


def ours(X: np.ndarray, y: np.ndarray, classes: list[int], fl: list[tuple]) -> tuple[list, float]:
    t = time.perf_counter()
    labels = np.asarray(classes)[y]
    models = training.train_splits(X, labels, classes, [], [tr for tr, _ in fl])
    wall = time.perf_counter() - t
    return [scores(y[test], m.predict_proba(X[test])) for m, (_, test) in zip(models, fl)], wall


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("datasets", nargs="+", help="Moodle training CSVs, FILE or FILE@ROWS")
    ap.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "mlbackend-bench" / "cv"
    )
    a = ap.parse_args()
    print(
        f"{'dataset':<34}{'AUC':>8}{'trees':>8}{'diff':>9}{'± se':>8}{'F1 w':>8}{'bal acc':>8}"
        f"{'wall s':>8}"
    )
    for spec in a.datasets:
        X, y, classes = load(spec)
        fl = folds(y)
        mine, wall = ours(X, y, classes, fl)
        peer = trees(X, y, fl, a.cache)
        diff = np.array([m["auc"] - p["auc"] for m, p in zip(mine, peer)])
        mean = {k: float(np.mean([m[k] for m in mine])) for k in mine[0]}
        name = Path(spec).name
        print(
            f"{name:<34}{mean['auc']:>8.4f}{np.mean([p['auc'] for p in peer]):>8.4f}"
            f"{diff.mean():>+9.4f}{diff.std(ddof=1) / np.sqrt(len(diff)):>8.4f}"
            f"{mean['f1']:>8.4f}{mean['bacc']:>8.4f}{wall:>8.1f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Moodle-format datasets made up from a seed, for tests, the demo and benchmarks.

They look like what Moodle's analytics indicators send: values in [-1, 1]
with two decimals, some binary indicators, some columns constant across the
site, empty cells for missing values, a minority positive class whose odds
follow a few of the features. The shipped sample (`mlbackend/data/`) was made
with `python -m mlbackend.synthetic`.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass

import numpy as np


@dataclass
class Synthetic:
    X: np.ndarray  # rows x features, NaN where the cell is left empty
    y: np.ndarray  # class values
    classes: list[int]


def generate(
    rows: int,
    nfeatures: int,
    classes: tuple[int, ...] = (0, 1),
    positive_rate: float = 0.15,
    missing: float = 0.05,
    constant: int = 2,
    seed: int = 0,
) -> Synthetic:
    rng = np.random.default_rng(seed)
    X = np.round(rng.uniform(-1, 1, size=(rows, nfeatures)), 2)
    binary = rng.random(nfeatures) < 0.3
    X[:, binary] = (X[:, binary] > 0.3).astype(float)
    X[:, : min(constant, nfeatures)] = 0.0
    informative = rng.choice(
        np.arange(min(constant, nfeatures), nfeatures),
        size=max(1, min(8, nfeatures - constant)),
        replace=False,
    )
    k = len(classes)
    weights = rng.normal(0, 1.5, size=(len(informative), k))
    logits = X[:, informative] @ weights + rng.normal(0, 0.7, size=(rows, k))
    if k == 2:
        margin = logits[:, 1] - logits[:, 0]
        threshold = np.quantile(margin, 1 - positive_rate)
        idx = (margin > threshold).astype(int)
    else:
        idx = logits.argmax(axis=1)
    holes = rng.random(X.shape) < missing
    holes[:, informative] = False
    X[holes] = np.nan
    return Synthetic(X=X, y=np.array(classes)[idx], classes=list(classes))


def _cell(v: float) -> str:
    if np.isnan(v):
        return ""
    return f"{v:.2f}" if v != int(v) else str(int(v))


def _header(nfeatures: int, classes: list[int]) -> str:
    return (
        "nfeatures,targetclasses,targettype,targetcolumn,timesplitting\n"
        f'{nfeatures},"{json.dumps(classes).replace(" ", "")}",discrete,'
        "target,\\core\\analytics\\time_splitting\\upcoming_week\n"
    )


def write_training(path: str, data: Synthetic) -> str:
    n = data.X.shape[1]
    with open(path, "w") as f:
        f.write(_header(n, data.classes))
        f.write(",".join(f"input-{i}" for i in range(n)) + ",target\n")
        for row, label in zip(data.X, data.y):
            f.write(",".join(_cell(v) for v in row) + f",{label}\n")
    return path


def write_prediction(
    path: str, data: Synthetic, id_prefix: str = "sample-", sampleid_header: bool = True
) -> dict[str, int]:
    """Writes the rows without labels; returns the true class of every sample id."""
    n = data.X.shape[1]
    answers = {}
    with open(path, "w") as f:
        f.write(_header(n, data.classes))
        names = [f"input-{i}" for i in range(n)]
        f.write(",".join((["sampleid"] if sampleid_header else []) + names) + "\n")
        for i, (row, label) in enumerate(zip(data.X, data.y)):
            sid = f"{id_prefix}{i}"
            answers[sid] = int(label)
            f.write(sid + "," + ",".join(_cell(v) for v in row) + "\n")
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Write a synthetic Moodle training and prediction CSV pair."
    )
    parser.add_argument(
        "directory", help="where to write sample-training.csv and sample-prediction.csv"
    )
    parser.add_argument("--rows", type=int, default=900, help="training rows")
    parser.add_argument("--features", type=int, default=24, help="features per row")
    parser.add_argument("--seed", type=int, default=2026, help="random seed")
    a = parser.parse_args()
    data = generate(a.rows + a.rows // 6, a.features, seed=a.seed)
    train = Synthetic(data.X[: a.rows], data.y[: a.rows], data.classes)
    rest = Synthetic(data.X[a.rows :], data.y[a.rows :], data.classes)
    os.makedirs(a.directory, exist_ok=True)
    write_training(os.path.join(a.directory, "sample-training.csv"), train)
    answers = write_prediction(os.path.join(a.directory, "sample-prediction.csv"), rest)
    with open(os.path.join(a.directory, "sample-prediction-answers.json"), "w") as f:
        json.dump(answers, f)


if __name__ == "__main__":
    main()

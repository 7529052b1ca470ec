"""`make run`: train, evaluate and predict on the sample dataset the package
ships, through the same core functions Moodle's calls reach, and print a
short summary a person can read."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from importlib import resources

from mlbackend import __version__, actions, dataset


def main() -> int:
    data = resources.files("mlbackend") / "data"
    with resources.as_file(data) as folder, tempfile.TemporaryDirectory() as model_dir:
        train_csv = str(folder / "sample-training.csv")
        predict_csv = str(folder / "sample-prediction.csv")
        answers = json.loads((folder / "sample-prediction-answers.json").read_text())
        ds = dataset.read_training(train_csv)
        positives = float((ds.labels == 1).mean())
        print(
            f"mlbackend {__version__} on the shipped sample: {ds.nrows} training rows, "
            f"{ds.nfeatures} features, {positives:.0%} positive"
        )

        t = time.perf_counter()
        actions.train(model_dir, train_csv, progress=sys.stderr.isatty())
        print(f"  training    done in {time.perf_counter() - t:.1f} s")

        t = time.perf_counter()
        ev = actions.evaluate(model_dir, train_csv, 0.7, 0.05, 5)
        print(
            f"  evaluation  5 random 80/20 splits in {time.perf_counter() - t:.1f} s: "
            f"F1 {ev['score']:.3f} (deviation {ev['score_deviation']:.3f}), "
            f"AUC {ev['auc']:.3f}, balanced accuracy {ev['balanced accuracy']:.3f}, "
            f"status {ev['status']}"
        )

        t = time.perf_counter()
        pred = actions.predict(model_dir, predict_csv)["predictions"]
        flagged = sum(1 for _, label, _ in pred if label == "1")
        correct = sum(int(label) == answers[sid] for sid, label, _ in pred)
        print(
            f"  prediction  {len(pred)} samples in {time.perf_counter() - t:.2f} s: "
            f"{flagged} predicted positive, {correct / len(pred):.1%} correct against the "
            f"known answers"
        )
        print(f"  e.g. {pred[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Data for the frozen check (tests/frozen/check.sh), made with the
development environment, since the frozen program's host may have no Python:

    python tests/frozen/make_data.py DIR

DIR gets Moodle-format CSVs from mlbackend.synthetic (training.csv,
prediction.csv, and bad-training.csv with a word among the numbers), a
moodlemlbackend 3.x model (legacy3/classifier/, written like the one in
tests/helpers/legacy_files.py) and legacy3-prediction.txt, the answer the unfrozen
program gives for that model, which the frozen one must repeat exactly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))

from helpers.legacy_files import make_legacy3  # noqa: E402

from mlbackend import synthetic  # noqa: E402
from mlbackend.tf import quiet_tensorflow  # noqa: E402


def main() -> None:
    quiet_tensorflow()  # the SavedModel below is written with TensorFlow
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    data = synthetic.generate(750, 20, seed=11)
    train = synthetic.Synthetic(data.X[:600], data.y[:600], data.classes)
    rest = synthetic.Synthetic(data.X[600:], data.y[600:], data.classes)
    synthetic.write_training(str(out / "training.csv"), train)
    synthetic.write_prediction(str(out / "prediction.csv"), rest)

    lines = (out / "training.csv").read_text().splitlines(keepends=True)
    cells = lines[7].split(",")
    cells[2] = "abc"
    lines[7] = ",".join(cells)
    (out / "bad-training.csv").write_text("".join(lines))

    legacy = out / "legacy3" / "classifier"
    shutil.rmtree(legacy.parent, ignore_errors=True)
    legacy.parent.mkdir(parents=True)
    make_legacy3(legacy, str(out / "prediction.csv"))

    # The unfrozen program's answer, on a copy (prediction converts the model).
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(legacy.parent, Path(tmp) / "model")
        env = dict(os.environ, PYTHONPATH=str(TESTS.parent))
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "mlbackend",
                "-m",
                "moodlemlbackend.prediction",
                "legacy",
                str(Path(tmp) / "model"),
                str(out / "prediction.csv"),
            ],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
    (out / "legacy3-prediction.txt").write_text(p.stdout.strip().splitlines()[-1] + "\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Worst cases under 10 MB: the peak memory and time of the inputs that cost
the most per byte, each run as Moodle runs the program (a cold process, the
Moodle argv), peak RSS of the child itself (wait4). The figures go into
docs/limits.md beside the limits that bound them.

    python bench/limits.py              # every case, a few minutes on 2 cores
    python bench/limits.py --only wide  # the cases whose name contains "wide"

Files are generated in a temporary directory (nothing real is read).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
LIMIT = 10 << 20  # every input is under 10 MB


#: The program as Moodle runs it, reporting its own peak RSS (VmHWM) on
#: stderr: wait4's ru_maxrss would count this script's memory, which the
#: child inherits until it executes.
LAUNCHER = (
    "import sys\nfrom mlbackend.cli import main\nrc = main(sys.argv[1:])\n"
    "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
    "print('VMHWM', peak.split()[1], file=sys.stderr)\nsys.stdout.flush()\n"
    "import os\nos._exit(rc)\n"
)


def run(module: str, *args: object) -> tuple[float, int, str]:
    cmd = [
        sys.executable,
        "-c",
        LAUNCHER,
        "-m",
        f"moodlemlbackend.{module}",
        *[str(a) for a in args],
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - start
    out = p.stdout.decode()
    err = p.stderr.decode()
    rss_mb = int(err.split("VMHWM ")[1].split()[0]) // 1024 if "VMHWM " in err else -1
    last = [line for line in out.splitlines() if line.strip()][-1:] or [""]
    try:
        answer = json.loads(last[0])
        what = f"status {answer['status']}" + (
            f": {answer['info'][0][:70]}" if answer.get("info") else ""
        )
    except (ValueError, TypeError, KeyError):
        what = last[0][:70] + f" (exit {p.returncode})"
    return wall, rss_mb, what


def fill(path: Path, head: str, row: str) -> Path:
    """`head` then `row` repeated up to just under 10 MB."""
    n = (LIMIT - len(head) - 1) // len(row)
    path.write_text(head + row * n)
    assert path.stat().st_size < LIMIT
    return path


def header(nfeatures: int, prediction: bool) -> str:
    names = (
        (["sampleid"] if prediction else [])
        + [f"f{i}" for i in range(nfeatures)]
        + ([] if prediction else ["target"])
    )
    return (
        f'nfeatures,targetclasses,targettype\n{nfeatures},"[0,1]",discrete\n'
        + ",".join(names)
        + "\n"
    )


def model_at_limits(path: Path, nfeatures: int) -> None:
    """A model.npz as costly as the limits allow: two hidden layers as wide
    as MAX_PARAMETERS permits, compressed (a few hundred KB of zeros)."""
    from mlbackend.model import Model
    from mlbackend.model.format import CENTRED, to_arrays
    from mlbackend.model.inputs import Inputs
    from mlbackend.model.limits import MAX_PARAMETERS
    from mlbackend.model.network import Dense, Network

    width = int((MAX_PARAMETERS / 1.01) ** 0.5)
    rng = np.random.default_rng(0)
    sizes = [nfeatures, width, width, 2]
    layers = [
        Dense(np.zeros((a, b), np.float32), rng.normal(size=b).astype(np.float32))
        for a, b in zip(sizes, sizes[1:])
    ]
    model = Model(
        classes=[0, 1],
        nfeatures=nfeatures,
        inputs=Inputs(
            np.arange(nfeatures), np.zeros(nfeatures, np.float32), np.ones(nfeatures, np.float32)
        ),
        network=Network(layers),
        format_version=CENTRED.number,
    )
    np.savez_compressed(path, **to_arrays(model))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mlbackend-limits-"))
    small = tmp / "small-train.csv"
    rng = np.random.default_rng(1)
    X = rng.uniform(-1, 1, (400, 2))
    small.write_text(header(2, False) + "".join(f"{a:.3f},{b:.3f},{int(a > b)}\n" for a, b in X))
    wide_train = tmp / "wide-train.csv"
    wide_train.write_text(
        header(10_000, False) + ("0.5," * 10_000 + "0\n" + "0," * 10_000 + "1\n") * 20
    )

    def trained(name: str, dataset: Path) -> Path:
        d = tmp / name
        if not d.exists():
            run("training", name, d, dataset)
        return d

    cases = {
        # CSV files, prediction (the server's most frequent request)
        "predict: 10 MB of 1-feature rows (2 million rows)": lambda: run(
            "prediction",
            "n",
            trained("narrow", small),
            fill(tmp / "narrow-predict.csv", header(2, True), "s,0,1\n"),
        ),
        "predict: 10 MB of 10,000-feature rows": lambda: run(
            "prediction",
            "w",
            trained("wide", wide_train),
            fill(tmp / "wide-predict.csv", header(10_000, True), "s" + ",0" * 10_000 + "\n"),
        ),
        # CSV files, training
        "train: 10 MB of 2-feature rows (1.7 million rows)": lambda: run(
            "training",
            "t",
            tmp / "train-narrow",
            fill(tmp / "narrow-train.csv", header(2, False), "0,1,1\n0,0,0\n"),
        ),
        "train: 10 MB of 10,000-feature rows": lambda: run(
            "training",
            "tw",
            tmp / "train-wide",
            fill(
                tmp / "wide-train10.csv",
                header(10_000, False),
                "0," * 10_000 + "1\n" + "1," * 10_000 + "0\n",
            ),
        ),
        "evaluate x10: 10 MB of 2-feature rows": lambda: run(
            "evaluation",
            "e",
            tmp / "eval-narrow",
            fill(tmp / "narrow-train.csv", header(2, False), "0,1,1\n0,0,0\n"),
            0.7,
            0.05,
            10,
        ),
        # Model files
        "predict: model at the limits (16M weights), 30,000 rows": lambda: run(
            "prediction", "big", big_model(), fill_rows(tmp / "big-predict.csv", 30_000)
        ),
        "predict: model at the limits, 40,000 rows (over MAX_WORK)": lambda: run(
            "prediction", "big", big_model(), fill_rows(tmp / "big-predict2.csv", 40_000)
        ),
        "import: model.npz declaring 300 MiB (deflated)": lambda: run(
            "import", "bomb", tmp / "bomb-model", bomb()
        ),
        "import: 2.x model.json of 10 MB": lambda: run(
            "import", "json", tmp / "json-model", export_json()
        ),
    }

    def big_model() -> Path:
        d = tmp / "big"
        (d / "classifier").mkdir(parents=True, exist_ok=True)
        path = d / "classifier" / "model.npz"
        if not path.exists():
            model_at_limits(path, 1)
            assert path.stat().st_size < LIMIT
        return d

    def fill_rows(path: Path, rows: int) -> Path:
        path.write_text(header(1, True) + "s,0.5\n" * rows)
        return path

    def bomb() -> Path:
        d = tmp / "bomb"
        d.mkdir(exist_ok=True)
        hdr = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            hdr, {"descr": "<f4", "fortran_order": False, "shape": (300 << 18,)}
        )
        with (
            zipfile.ZipFile(d / "model.npz", "w", zipfile.ZIP_DEFLATED) as z,
            z.open("layer0_kernel.npy", "w", force_zip64=True) as member,
        ):
            member.write(hdr.getvalue())
            for _ in range(300):
                member.write(bytes(1 << 20))
        return d

    def export_json() -> Path:
        d = tmp / "json"
        d.mkdir(exist_ok=True)
        n, hidden = 2000, 250  # 500,000 input weights: just under 10 MB of JSON
        w = np.round(rng.normal(size=(n, hidden)), 4)
        doc = {
            "n_features": n,
            "n_classes": 2,
            "n_hidden": hidden,
            "initialise-vars/input-to-hidden-weights": w.tolist(),
            "initialise-vars/hidden-bias": [0.0] * hidden,
            "initialise-vars/hidden-to-output-weights": [[0.1, -0.1]] * hidden,
            "initialise-vars/output-bias": [0.0, 0.0],
        }
        (d / "model.json").write_text(json.dumps(doc))
        assert (d / "model.json").stat().st_size < LIMIT
        return d

    print("| case | peak RSS | wall time | answer |\n|---|---|---|---|")
    for name, case in cases.items():
        if args.only and args.only not in name:
            continue
        wall, rss, what = case()
        print(f"| {name} | {rss} MB | {wall:.1f} s | {what} |", flush=True)


if __name__ == "__main__":
    main()

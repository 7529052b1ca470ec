"""The model format is a promise: every format version this project has
written stays readable and predicts exactly as it did.

tests/golden/ holds one small model.npz per format version, as the program
of that time wrote it, with the probabilities it gave
(`model-vN.expected.json`) for `model-vN.predict.csv`, or `predict.csv` when
there is none. Add a file here whenever a new version is written, and for
what a version gained later (`model-vN-WHAT.npz`: an optional part such as
`logit_shift`); never regenerate an old one.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.run import ROOT

from mlbackend import dataset, store
from mlbackend.model.format import LATEST, VERSIONS

GOLDEN = ROOT / "tests" / "golden"
#: Golden files by name (model-NAME.npz), NAME being vN or vN-WHAT.
NAMES = sorted(p.name[len("model-") : -len(".npz")] for p in GOLDEN.glob("model-v*.npz"))
VERSIONS_FOUND = sorted({name.split("-")[0] for name in NAMES})


def _input(version: str):
    own = GOLDEN / f"model-{version}.predict.csv"
    return own if own.exists() else GOLDEN / "predict.csv"


def test_every_format_version_so_far_has_a_golden_file():
    assert VERSIONS_FOUND == [f"v{v}" for v in sorted(VERSIONS)]
    assert sorted(VERSIONS) == list(range(1, LATEST + 1))


@pytest.mark.parametrize("version", NAMES)
def test_golden_model_reads_and_predicts_as_when_written(version, tmp_path, run_main):
    npz = GOLDEN / f"model-{version}.npz"
    meta = json.loads(str(np.load(npz)["meta"]))
    assert meta["format_version"] == int(version.split("-")[0][1:])
    expected = np.array(
        json.loads((GOLDEN / f"model-{version}.expected.json").read_text())["proba"]
    )
    model = store.read_file(str(npz))
    X = dataset.read_prediction(str(_input(version))).X
    np.testing.assert_allclose(model.predict_proba(X), expected, rtol=0, atol=1e-6)
    # And through the program, as Moodle calls it: imported, then predicted.
    export = tmp_path / "export"
    export.mkdir()
    (export / "model.npz").write_bytes(npz.read_bytes())
    model_dir = tmp_path / "model"
    assert run_main("-m", "moodlemlbackend.import", "g", model_dir, export).rc == 0
    r = run_main("-m", "moodlemlbackend.prediction", "g", model_dir, _input(version))
    assert r.rc == 0
    got = [float(p) for _, _, p in r.json["predictions"]]
    np.testing.assert_allclose(got, expected.max(axis=1), atol=1e-6)


def test_new_files_say_which_program_wrote_them(tmp_path):
    from mlbackend import __version__

    model = store.read_file(str(GOLDEN / "model-v1.npz"))
    store.save(str(tmp_path), model)
    meta = json.loads(str(np.load(store.model_path(str(tmp_path)))["meta"]))
    assert meta["written_by"] == f"mlbackend {__version__}"

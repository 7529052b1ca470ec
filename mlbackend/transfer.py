"""Moving a model between sites: export into a directory, import from one.

An export is our `model.npz` (or, for a moodlemlbackend model never used
since the switch, its old files); an import accepts our exports and the old
backend's models and exports, checks them before a byte is copied, and
stores them through the store's writer lock like any other change.

Of an import directory only the files a model is made of are read or
copied (`is_model_file`), never through a symbolic link and never from a
named pipe or a device: whatever else is there stays where it is.
"""

from __future__ import annotations

import os
import tempfile

from mlbackend import files, legacy, store
from mlbackend.contract import GENERAL_ERROR, BackendError, NotTrainedError
from mlbackend.model.convert import from_legacy


def is_model_file(relpath: str) -> bool:
    """Whether `relpath` (with '/', relative to an import directory) names a
    file an import reads: our `model.npz` or one of moodlemlbackend's
    files, at the top or in `classifier/`. The server extracts nothing else
    of an uploaded zip."""
    prefix = store.CLASSIFIER_DIR + "/"
    rel = relpath[len(prefix) :] if relpath.startswith(prefix) else relpath
    return rel == store.MODEL_FILE or legacy.is_model_path(rel)


def export_model(model_dir: str, export_dir: str) -> str:
    """Copy the model into `export_dir`; returns the directory Moodle should zip.

    An old-format model not converted yet (that needs a dataset) is exported
    as its old files, which `import_model` reads back.
    """
    if not store.has_model(model_dir):
        # Status 1, not NO_DATASET: Moodle's contract for export.
        raise NotTrainedError("There is no trained model to export.", status=GENERAL_ERROR)
    model = store.read_file(store.model_path(model_dir), missing_ok=True)
    if model is None:
        return _export_legacy(model_dir, export_dir)
    store.save_file(
        os.path.join(export_dir, store.MODEL_FILE), model, "The model could not be exported", ""
    )
    return os.path.abspath(export_dir)


def _export_legacy(model_dir: str, export_dir: str) -> str:
    source = store.classifier_dir(model_dir)
    old = legacy.read(source)  # export only what import will take back
    try:
        os.makedirs(export_dir, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=files.TEMP_PREFIX, dir=export_dir)
    except OSError as exc:
        raise files.write_error(exc, "The model could not be exported", export_dir, "") from None
    try:
        legacy.copy_files(old, staging)
        for name in os.listdir(staging):
            target = os.path.join(export_dir, name)
            if os.path.isdir(target) and not os.path.islink(target):
                files.remove_tree(target)
            os.replace(os.path.join(staging, name), target)
    except OSError as exc:
        raise files.write_error(exc, "The model could not be exported", export_dir, "") from None
    finally:
        files.remove_tree(staging)
    return os.path.abspath(export_dir)


def import_model(model_dir: str, import_dir: str) -> None:
    """Validate the model found in `import_dir` and store it as this model.

    Accepted: our export (`model.npz`), a moodlemlbackend 2.x export
    (`model.json`, converted now) and a moodlemlbackend 3.x model
    (`classifier.pkl` with `model.ckpt/`, checked now and stored as it is,
    to be converted when first used with a dataset, since it does not record
    the dataset's feature count).
    """
    if not os.path.isdir(import_dir):
        raise BackendError(f"The import directory {import_dir} does not exist.")
    inner = store.classifier_dir(import_dir)
    if os.path.islink(inner):
        raise BackendError(
            f"{inner} is a symbolic link, which is not followed: an exported model's "
            "files are in the import directory itself."
        )
    candidates = [os.path.join(import_dir, store.MODEL_FILE), store.model_path(import_dir)]
    found = next((p for p in candidates if os.path.lexists(p)), None)
    if found is not None:
        model = store.read_file(found, stored=False)
        assert model is not None
        with store.writer_lock(model_dir):
            store.save(model_dir, model)
            store.move_legacy_aside(model_dir)
        return
    source = next(
        (d for d in (import_dir, store.classifier_dir(import_dir)) if legacy.detect(d) is not None),
        None,
    )
    if source is None:
        raise BackendError(
            f"No exported model found in {import_dir} (expected {store.MODEL_FILE}, "
            f"or moodlemlbackend's {legacy.EXPORT_JSON}, or its "
            f"{legacy.PICKLE_FILE} with {legacy.SAVEDMODEL_DIR}/)."
        )
    old = legacy.read(source)  # refuses anything hostile before a byte is copied
    if old.nfeatures is not None:
        model = from_legacy(old)
        with store.writer_lock(model_dir):
            store.save(model_dir, model)
            store.move_legacy_aside(model_dir)
        return
    with store.writer_lock(model_dir):
        _store_legacy(model_dir, old)


def _store_legacy(model_dir: str, old: legacy.LegacyNetwork) -> None:
    """Put a checked 3.x model's files in place of this model. Caller holds the lock.

    The files are copied into a temporary directory first and renamed into
    place; our `model.npz` goes last, so a crash leaves the previous model.
    """
    target_dir = store.classifier_dir(model_dir)
    staging = tempfile.mkdtemp(prefix=files.TEMP_PREFIX, dir=target_dir)
    try:
        legacy.copy_files(old, staging)
        store.move_legacy_aside(model_dir)
        for name in os.listdir(staging):
            os.replace(os.path.join(staging, name), os.path.join(target_dir, name))
        files.remove_quietly(store.model_path(model_dir))
        files.fsync_dir(target_dir)
    except OSError as exc:
        raise BackendError(
            f"The model could not be stored in {target_dir} ({files.why(exc)})."
        ) from None
    finally:
        files.remove_tree(staging)

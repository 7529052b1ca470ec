"""mlbackend's PyInstaller hook for TensorFlow, used instead of the one in
pyinstaller-hooks-contrib (hooks on the spec's hookspath take precedence).

The contributed hook collects every submodule of tensorflow and of keras and
all of TensorFlow's data files: hundreds of MB of code the program never runs.
Here the bundle gets what `import tensorflow` and mlbackend's own calls import,
as PyInstaller's import analysis finds it, and nothing else. The frozen check
(`make dist-test`) runs every command, so a module that this misses is caught
there.
"""

import os
import re

from PyInstaller.utils.hooks import collect_data_files, get_package_paths

#: Module names TensorFlow imports by name, out of sight of the import analysis:
#: - `lazy_loader.LazyLoader("shuffle_op", globals(), "tensorflow.python.data.ops.shuffle_op")`,
#:   some at once (dataset_ops reads `batch_op._BatchDataset` when imported);
#: - the shims of some extension modules (`_pywrap_tensorflow_lite_metrics_wrapper.py`)
#:   that try `imports_paths = ["litert.python._pywrap_...", "tensorflow.lite.python._pywrap_...",
#:   ...]` in turn; the ones that exist are bundled.
BY_NAME = [
    re.compile(r"LazyLoader\(\s*[\"'][^\"']+[\"']\s*,\s*globals\(\)\s*,\s*[\"']([\w.]+)[\"']"),
    re.compile(r"imports_paths\s*=\s*\[([^\]]*)\]"),
]

#: Op libraries loaded from a path beside the module, as in
#: `load_op_library(resource_loader.get_path_to_datafile("_audio_microfrontend_op.so"))`
#: (tf.lite's audio ops, loaded by `import tensorflow`).
OP_LIBRARY = re.compile(r"get_path_to_datafile\(\s*[\"']([\w.-]+\.so)[\"']\s*\)")


def scan(package_dir):
    """(modules imported by name, [(op library, its directory in the bundle)])."""
    modules, libraries = set(), []
    root = os.path.dirname(package_dir)
    for dirpath, _, filenames in os.walk(package_dir):
        for name in filenames:
            if not name.endswith(".py"):
                continue
            with open(os.path.join(dirpath, name), encoding="utf-8", errors="replace") as f:
                text = f.read()
            for pattern in BY_NAME:
                for match in pattern.findall(text):
                    modules.update(re.findall(r"[\w.]+", match))
            for library in OP_LIBRARY.findall(text):
                path = os.path.join(dirpath, library)
                if os.path.isfile(path):
                    libraries.append((path, os.path.relpath(dirpath, root)))
    # Keras 3 / tf_keras stay out of the bundle (see mlbackend.spec).
    return sorted(m for m in modules if m.split(".")[0] == "tensorflow"), libraries


# ml_dtypes is imported by compiled code, so the import analysis cannot see it.
_by_name, binaries = scan(get_package_paths("tensorflow")[1])
hiddenimports = ["ml_dtypes"] + _by_name
# Some of the names a shim tries do not exist: no warning for them.
warn_on_missing_hiddenimports = False

# TensorFlow's third-party licence notices travel with its binaries.
datas = collect_data_files("tensorflow", includes=["THIRD_PARTY_NOTICES.txt"])

# AutoGraph looks up the source of its own logging function at import time and
# warns when it cannot; keep that package's sources (under 2 MB).
module_collection_mode = {"tensorflow.python.autograph": "py+pyz"}

# As in the contributed hook: links to these libraries at the top of the bundle
# confuse TensorFlow about where it is installed.
bindepend_symlink_suppression = [
    "**/libtensorflow_cc.so*",
    "**/libtensorflow_framework.so*",
    "**/_pywrap_tensorflow_internal.so",
]

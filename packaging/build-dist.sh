#!/usr/bin/env bash
# `make dist`: freeze the program with PyInstaller (mlbackend.spec) and make
# the release archive dist/mlbackend-VERSION-linux-x86_64.tar.gz and its
# .sha256. Runs with the virtual environment's Python (PYTHON), which holds
# the pinned requirements and PyInstaller.
#
# The archive unpacks into mlbackend-VERSION-linux-x86_64/:
#   mlbackend, _internal/   the frozen program (a one-directory bundle)
#   BUILD-INFO              version, commit, Python/TensorFlow, glibc floor
#   mlbackend.1             the man page, made from the argparse parser
#   README, LICENSE
#   packaging/              install.sh, uninstall.sh, mlbackend.service, server.env
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}

start=$(date +%s)
version=$("$PYTHON" -c 'import mlbackend; print(mlbackend.__version__)')
name="mlbackend-$version-linux-$(uname -m)"
stage="build/stage/$name"
archive="dist/$name.tar.gz"

# PyInstaller keeps its analysis and the stripped libraries in build/pyinstaller
# and rebuilds what changed; the bundle itself is made anew.
rm -rf build/stage
"$PYTHON" -m PyInstaller --noconfirm --log-level WARN \
    --workpath build/pyinstaller --distpath build/stage mlbackend.spec
mv build/stage/mlbackend "$stage"

"$PYTHON" -c 'from argparse_manpage.cli import main; main()' --module mlbackend.cli --function build_parser \
    --project-name mlbackend --prog mlbackend --version "$version" \
    --description "machine-learning backend for Moodle Learning Analytics" \
    --manual-title "mlbackend manual" --include packaging/mlbackend.1.include \
    --output "$stage/mlbackend.1"
cp README.md "$stage/README"
cp -r docs "$stage/docs"
cp LICENSE "$stage/LICENSE"
mkdir "$stage/packaging"
cp packaging/install.sh packaging/uninstall.sh packaging/mlbackend.service \
    packaging/server.env "$stage/packaging/"
"$PYTHON" packaging/buildinfo.py "$stage" "$version"

# The bundle must at least start; `make dist-test` checks the rest.
answer=$(env -i PATH=/usr/bin:/bin "$stage/mlbackend" version)
[ "$answer" = "$version" ] || { echo "frozen mlbackend answered '$answer', not $version" >&2; exit 1; }

# Every entry owned by root and dated at the commit, not by the builder's
# user and clock.
mtime=$(git log -1 --format=%ct 2>/dev/null || date +%s)
mkdir -p dist
rm -f "$archive" "$archive.sha256"
tar --create --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$mtime" \
    -C build/stage "$name" | gzip -n > "$archive.tmp"
mv "$archive.tmp" "$archive"
(cd dist && sha256sum "$name.tar.gz" > "$name.tar.gz.sha256")

echo "built $archive in $(($(date +%s) - start)) s; the bundle unpacked: $(du -sm "$stage" | cut -f1) MB"

#!/usr/bin/env bash
# `make dist-test`: unpack the release archive into a temporary directory and
# run tests/frozen/check.sh on it in a sanitised environment: `env -i` with a
# minimal PATH, HOME an empty directory, no virtual environment, no Python on
# the PATH the program sees. Exits non-zero on any failure.
#
#   tests/frozen/dist-test.sh dist/mlbackend-VERSION-linux-x86_64.tar.gz
set -euo pipefail
cd "$(dirname "$0")/../.."
archive=$1
PYTHON=${PYTHON:-.venv/bin/python}
name=$(basename "$archive" .tar.gz)

(cd "$(dirname "$archive")" && sha256sum --check --quiet "$name.tar.gz.sha256")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$archive" -C "$tmp"
"$PYTHON" tests/frozen/make_data.py "$tmp/data"
mkdir "$tmp/home"
env -i PATH=/usr/bin:/bin HOME="$tmp/home" bash tests/frozen/check.sh "$tmp/$name" "$tmp/data"

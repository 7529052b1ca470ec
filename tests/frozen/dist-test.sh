#!/usr/bin/env bash
# `make dist-test`: unpack the release archive into a temporary directory and
# run tests/frozen/check.sh on it in a sanitised environment: `env -i` with a
# minimal PATH, HOME an empty directory, no virtual environment, no Python on
# the PATH the program sees. moto's S3 server (from the development
# environment) stands in for S3. Exits non-zero on any failure.
#
#   tests/frozen/dist-test.sh dist/mlbackend-VERSION-linux-ARCH.tar.gz
#
# Another machine's archive (aarch64 on x86-64) runs under qemu-user
# (binfmt_misc: packaging/emulation.sh; needs root once to set up) with that
# machine's loader, glibc and libstdc++ from a minimal Debian bullseye root
# (tests/frozen/test-root.sh, QEMU_LD_PREFIX): the oldest glibc (2.31) and
# libstdc++ (GCC 10) the mirror offers, which the bundle must do with.
set -euo pipefail
cd "$(dirname "$0")/../.."
archive=$1
PYTHON=${PYTHON:-.venv/bin/python}
name=$(basename "$archive" .tar.gz)
arch=${name##*-}
emulation=()
if [ "$arch" != "$(uname -m)" ]; then
    emulation=(QEMU_LD_PREFIX="$(bash tests/frozen/test-root.sh bullseye "$arch")")
fi

(cd "$(dirname "$archive")" && sha256sum --check --quiet "$name.tar.gz.sha256")
tmp=$(mktemp -d)
moto=
cleanup() {
    [ -z "$moto" ] || kill "$moto" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
tar -xzf "$archive" -C "$tmp"
"$PYTHON" tests/frozen/make_data.py "$tmp/data"
mkdir "$tmp/home"

s3port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 \
    "$PYTHON" -m moto.server -H 127.0.0.1 -p "$s3port" >"$tmp/moto.log" 2>&1 </dev/null &
moto=$!
"$PYTHON" - "$s3port" <<'PY'
import socket, sys, time
import boto3
port = int(sys.argv[1])
for _ in range(300):  # 30 s at most
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("moto's S3 server did not start")
boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
             aws_access_key_id="testing", aws_secret_access_key="testing"
             ).create_bucket(Bucket="mlbackend-frozen")
PY

env -i PATH=/usr/bin:/bin HOME="$tmp/home" "${emulation[@]}" MLBACKEND_CHECK_S3="http://127.0.0.1:$s3port/mlbackend-frozen" \
    bash tests/frozen/check.sh "$tmp/$name" "$tmp/data"

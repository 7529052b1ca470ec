#!/usr/bin/env bash
# The old backend, moodlemlbackend 3.0.5 on Python 3.9 and TensorFlow 2.7,
# runnable on this machine so that the benchmark can time it beside ours in
# the same run. It lives in a Debian bullseye root (python3 is 3.9 there),
# made once with debootstrap and pip and kept in
# $MLBACKEND_CACHE/old-backend (default /var/cache/mlbackend/old-backend),
# keyed by the recipe below: change a pin and the next call builds a new root
# (the Debian base is kept when only the Python packages change). Needs root
# (debootstrap, chroot, mount namespaces). From scratch: about 10-15 minutes
# on two busy cores (most of it compiling scikit-learn 0.21 and matplotlib
# 3.0, which have no wheels for Python 3.9); then instant.
#
#   old-backend.sh                 build if needed; print the path of a program
#                                  that is "Moodle's path to Python" for it
#   old-backend.sh python ARG...   run the root's python3 with ARG... (as
#                                  Moodle runs it: -m moodlemlbackend.MODULE ...)
#   old-backend.sh root            build if needed; print the root's path
#
# The printed program (CACHE/bin/python3) is what bench.py and Moodle's
# client simulator take as the backend:
#
#   contract.py quality "$(bench/old-backend.sh)" site-b-training.csv
#
# How a call runs: in a private mount namespace (mounts vanish with the
# process), the host's /tmp, /proc and /dev are bound into the root, and so
# is, at the same path, the directory of every absolute path among the
# arguments (the dataset, the output directory); then chroot, env -i, and
# exec of python3. unshare and chroot exec in place, so the process the
# caller starts *is* the Python process in the end: its wait4() wall time and
# peak RSS are the old backend's own (the wrapper's shell and mount calls are
# a few MB and are over before Python starts).
#
# Pins: moodlemlbackend 3.0.5 asks for tensorflow>=2.7.1,<2.8,
# numpy>=1.19.2,<1.20, scikit-learn>=0.21,<0.22, matplotlib>=3.0,<3.1,
# joblib>=0.13,<0.14 (and flask, boto3 for its web server, which the CLI
# never imports). A site's `pip install moodlemlbackend==3.0.5` gets the
# `tensorflow` distribution (CPU and GPU kernels, 490 MB); the CPU build
# `tensorflow-cpu` of the same version runs the same CPU kernels and is the
# default here (OLD_BACKEND_TF=tensorflow==2.7.4 for the full one).
# CONSTRAINTS below is what pip resolved from those (python3.9, bullseye), frozen
# so that the root is the same wherever and whenever it is built.
set -euo pipefail

SUITE=bullseye
MIRROR=${MIRROR:-http://deb.debian.org/debian}
CACHE=${MLBACKEND_CACHE:-/var/cache/mlbackend}/old-backend
TF=${OLD_BACKEND_TF:-tensorflow-cpu==2.7.4}
# Debian packages: Python 3.9 and what building scikit-learn 0.21 and
# matplotlib 3.0 from their sources needs.
PACKAGES=python3,python3-dev,python3-venv,python3-pip,build-essential,pkg-config,libfreetype6-dev,libpng-dev,ca-certificates
# Build-time only (no build isolation: scikit-learn 0.21's pyproject asks for
# numpy 1.14.5, which has no Python 3.9 wheel).
BUILD_REQUIREMENTS="pip==23.3.2 setuptools==58.5.3 wheel==0.42.0 Cython==0.29.37 numpy==1.19.5"
# moodlemlbackend's own requirements (its METADATA), with OLD_BACKEND_TF for
# its `tensorflow>=2.7.1,<2.8`, and joblib 0.14 for its `joblib<0.14`: joblib
# 0.13 cannot be imported on Python 3.8 or later (its cloudpickle calls
# types.CodeType the 3.7 way), so no site ran 3.0.5 on Python 3.9 with it;
# 0.14.0 is the first joblib for Python 3.8. moodlemlbackend itself is
# installed without dependencies, so that pip does not add the `tensorflow`
# distribution.
read -r -d '' REQUIREMENTS <<'EOF' || true
matplotlib>=3.0,<3.1
numpy>=1.19.2,<1.20
scikit-learn>=0.21,<0.22
joblib>=0.14,<0.15
itsdangerous==2.0.1
Jinja2>=3.0.1,<3.1
flask>=1.0.2,<1.1
boto3>=1.9.0,<1.10
EOF
# Everything, as pip resolved it from those (python3.9, bullseye; see the
# note above), so that the root is the same wherever and whenever it is built.
read -r -d '' CONSTRAINTS <<'EOF' || true
absl-py==2.3.1
astunparse==1.6.3
boto3==1.9.253
botocore==1.12.253
click==8.1.8
cycler==0.12.1
Cython==0.29.37
docutils==0.15.2
Flask==1.0.4
flatbuffers==2.0.7
gast==0.4.0
google-pasta==0.2.0
grpcio==1.80.1
h5py==3.14.0
importlib_metadata==8.7.1
itsdangerous==2.0.1
Jinja2==3.0.3
jmespath==0.10.0
joblib==0.14.1
keras==2.7.0
Keras-Preprocessing==1.1.2
kiwisolver==1.4.7
libclang==18.1.1
Markdown==3.9
MarkupSafe==3.0.4
matplotlib==3.0.3
moodlemlbackend==3.0.5
numpy==1.19.5
opt_einsum==3.4.0
packaging==26.3
pillow==11.3.0
pip==23.3.2
protobuf==3.19.6
pyparsing==3.3.3
python-dateutil==2.9.0.post0
s3transfer==0.2.1
scikit-learn==0.21.3
scipy==1.10.1
setuptools==58.5.3
six==1.17.0
tensorboard==2.20.0
tensorboard-data-server==0.7.2
tensorflow-cpu==2.7.4
tensorflow-estimator==2.7.0
tensorflow-io-gcs-filesystem==0.37.1
termcolor==3.1.0
typing_extensions==4.16.0
urllib3==1.25.11
Werkzeug==3.1.9
wheel==0.42.0
wrapt==2.5.2
zipp==3.23.1
EOF

[ "$(id -u)" = 0 ] || { echo "old-backend.sh: needs root (debootstrap, chroot, mount)" >&2; exit 1; }
mkdir -p "$CACHE"
base_key=$(printf '%s\n' "$SUITE" "$MIRROR" "$PACKAGES" | sha256sum | cut -c1-12)
key=$(printf '%s\n' "$base_key" "$TF" "$BUILD_REQUIREMENTS" "$REQUIREMENTS" "$CONSTRAINTS" | sha256sum | cut -c1-12)
base=$CACHE/base-$SUITE-$base_key
root=$CACHE/root-$key
log=$CACHE/build.log
say() { echo "old-backend: $*" >&2; }
failed() { say "failed; the end of $log:"; tail -n 40 "$log" >&2; exit 1; }

# in_root DIR CMD...: CMD in the root DIR, clean environment, /proc and /dev
# bound for the duration (a private mount namespace: nothing stays mounted).
in_root() {
    local dir=$1
    shift
    unshare --mount --propagation private -- /bin/sh -c '
        dir=$1; shift
        mount -t proc proc "$dir/proc" && mount --rbind /dev "$dir/dev" &&
        mount --bind /etc/resolv.conf "$dir/etc/resolv.conf" &&
        exec chroot "$dir" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root \
            LANG=C.UTF-8 "$@"' sh "$dir" "$@"
}

build() {
    exec 8>"$CACHE/.lock"
    flock 8
    [ ! -e "$root/.ready" ] || return 0     # built by another call meanwhile
    : >"$log"
    if [ ! -e "$base/.ready" ]; then
        command -v debootstrap >/dev/null ||
            { apt-get update -q && apt-get install -y -q debootstrap; } >>"$log" 2>&1
        say "debootstrap $SUITE into $base (log: $log)"
        rm -rf "$base"
        debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$base" "$MIRROR" \
            >>"$log" 2>&1 || failed
        touch "$base/.ready"
    fi
    say "installing moodlemlbackend 3.0.5 and $TF into $root (log: $log)"
    rm -rf "$root" "$root.tmp"
    cp -a "$base" "$root.tmp"
    rm -f "$root.tmp/.ready"
    printf '%s\n' "$REQUIREMENTS" "$TF" >"$root.tmp/root/requirements.txt"
    printf '%s\n' "$CONSTRAINTS" >"$root.tmp/root/constraints.txt"
    # pip's downloads are cached on the host: a new root does not fetch them again.
    mkdir -p "$CACHE/pip-cache" "$root.tmp/root/.cache/pip"
    # The certificates this machine trusts (a TLS-inspecting proxy's CA, if any), for pip only.
    cp "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$root.tmp/root/host-ca.crt"
    {
        # The host's pip cache, bound in a namespace of its own for the pip calls.
        unshare --mount --propagation private -- /bin/bash -c '
            set -e
            cache=$1 dir=$2 build=$3
            mount --bind "$cache/pip-cache" "$dir/root/.cache/pip"
            mount -t proc proc "$dir/proc"
            mount --rbind /dev "$dir/dev"
            mount --bind /etc/resolv.conf "$dir/etc/resolv.conf"
            run() { chroot "$dir" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
                PIP_CERT=/root/host-ca.crt ${https_proxy:+https_proxy=$https_proxy} \
                ${http_proxy:+http_proxy=$http_proxy} PIP_DEFAULT_TIMEOUT=180 "$@"; }
            run python3 -m pip install -q --disable-pip-version-check $build
            run python3 -m pip install --disable-pip-version-check --no-build-isolation \
                -r /root/requirements.txt -c /root/constraints.txt
            run python3 -m pip install --disable-pip-version-check --no-deps moodlemlbackend==3.0.5
            run python3 -m pip freeze --all >"$dir/root/freeze.txt"
            ' sh "$CACHE" "$root.tmp" "$BUILD_REQUIREMENTS"
    } >>"$log" 2>&1 || failed
    rm -f "$root.tmp/root/host-ca.crt"
    # First import: matplotlib builds its font cache, Python its bytecode.
    # Done once here so that no timed call pays for it.
    in_root "$root.tmp" python3 -c 'import moodlemlbackend.processor.estimator' >>"$log" 2>&1 ||
        failed
    mv "$root.tmp" "$root"
    touch "$root/.ready"
    # Roots of other recipes are not used any more.
    for old in "$CACHE"/root-*; do
        [ "$old" = "$root" ] || rm -rf "$old"
    done
    say "ready: $root"
}

# The program Moodle's "path to Python" points at: a copy of this script's
# `python` mode bound to this root.
wrapper() {
    local w=$CACHE/bin/python3
    mkdir -p "$CACHE/bin"
    cat >"$w.tmp" <<EOF
#!/bin/sh
# moodlemlbackend 3.0.5 (Python 3.9, $TF) in $root, written by old-backend.sh.
exec /bin/bash '$(realpath "$0")' python "\$@"
EOF
    chmod 755 "$w.tmp"
    mv "$w.tmp" "$w"
    echo "$w"
}

run_python() {
    [ -e "$root/.ready" ] || build >&2
    # The directories of the absolute paths among the arguments, bound at the
    # same path inside the root (the host's /tmp is bound as a whole).
    local binds=() arg dir
    for arg in "$@"; do
        case $arg in /*) ;; *) continue ;; esac
        case $arg in /tmp | /tmp/*) continue ;; esac
        dir=$arg
        [ -d "$dir" ] || dir=$(dirname "$dir")
        while [ ! -d "$dir" ]; do dir=$(dirname "$dir"); done
        [ "$dir" != / ] || continue
        binds+=("$dir")
    done
    exec unshare --mount --propagation private -- /bin/sh -c '
        root=$1; n=$2; shift 2
        mount -t proc proc "$root/proc" && mount --rbind /dev "$root/dev" &&
            mount --rbind /tmp "$root/tmp" || exit 1
        while [ "$n" -gt 0 ]; do
            mkdir -p "$root$1" && mount --rbind "$1" "$root$1" || exit 1
            shift; n=$((n - 1))
        done
        exec chroot "$root" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root \
            LANG=C.UTF-8 PWD=/ python3 "$@"' sh "$root" "${#binds[@]}" "${binds[@]}" "$@"
}

case ${1:-} in
    "") [ -e "$root/.ready" ] || build; wrapper ;;
    root) [ -e "$root/.ready" ] || build; echo "$root" ;;
    python) shift; run_python "$@" ;;
    *) echo "usage: old-backend.sh [root | python ARG...]" >&2; exit 2 ;;
esac

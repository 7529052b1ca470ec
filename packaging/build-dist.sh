#!/usr/bin/env bash
# `make dist`: freeze the program with PyInstaller (mlbackend.spec) inside the
# bullseye build root (packaging/build-root.sh: CPython 3.11 built there, the
# pinned requirements) and make the release archive
# dist/mlbackend-VERSION-linux-ARCH.tar.gz and its .sha256. Needs root (chroot).
#
# The archive unpacks into mlbackend-VERSION-linux-ARCH/:
#   mlbackend, _internal/   the frozen program (a one-directory bundle)
#   BUILD-INFO              version, commit, Python/TensorFlow, glibc floor,
#                           GLIBCXX and CXXABI of the host's libstdc++
#   mlbackend.1             the man page, made from the argparse parser
#   README.md, LICENSE, docs/
#   packaging/              install.sh, uninstall.sh, mlbackend.service, server.env,
#                           BUILD-ROOT.md (which docs/release.md links to)
#
# The build fails when any ELF file of the bundle needs a glibc newer than
# GLIBC_FLOOR, the oldest the release promises (RHEL 8).
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${ARCH:-$(uname -m)}
GLIBC_FLOOR=2.28
export ARCH

start=$(date +%s)
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' mlbackend/__init__.py)
name="mlbackend-$version-linux-$ARCH"
archive="dist/$name.tar.gz"
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [ "$commit" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no)" ]; then
    commit=$commit-dirty
fi

# One build at a time in ARCH's build root (CI and a developer on the same
# machine); builds for two machines run side by side. build-root.sh takes
# the same lock unless told (MLBACKEND_LOCKED) that it is held here.
cache=${MLBACKEND_CACHE:-/var/cache/mlbackend}
mkdir -p "$cache"
exec 9>"$cache/build-$ARCH.lock"
flock 9
export MLBACKEND_LOCKED=$ARCH
root=$(bash packaging/build-root.sh)
# The sources the bundle is made from, copied into the root. PyInstaller keeps
# its analysis and the stripped libraries in /srv/mlbackend/pyinstaller there
# and rebuilds what changed; the bundle itself is made anew.
work=/srv/mlbackend
rm -rf "$root$work/src" "$root$work/stage"
mkdir -p "$root$work/src"
cp -r mlbackend packaging mlbackend.spec "$root$work/src/"
find "$root$work/src" -name __pycache__ -prune -exec rm -rf {} +
bash packaging/build-root.sh bash -euc "
    cd $work/src
    /opt/venv/bin/python -m PyInstaller --noconfirm --log-level WARN \
        --workpath $work/pyinstaller --distpath $work/stage mlbackend.spec
    mv $work/stage/mlbackend $work/stage/$name
    /opt/venv/bin/python -c 'from argparse_manpage.cli import main; main()' \
        --module mlbackend.cli --function build_parser \
        --project-name mlbackend --prog mlbackend --version '$version' \
        --description 'machine-learning backend for Moodle Learning Analytics' \
        --manual-title 'mlbackend manual' --include packaging/mlbackend.1.include \
        --output $work/stage/$name/mlbackend.1
    /opt/venv/bin/python packaging/buildinfo.py --max-glibc $GLIBC_FLOOR --commit '$commit' \
        $work/stage/$name '$version'"
stage=$root$work/stage/$name
cp README.md "$stage/README.md"
cp -r docs "$stage/docs"
cp LICENSE "$stage/LICENSE"
mkdir "$stage/packaging"
cp packaging/install.sh packaging/uninstall.sh packaging/mlbackend.service \
    packaging/server.env packaging/BUILD-ROOT.md "$stage/packaging/"

# The bundle must at least start here; `make dist-test` checks the rest.
# Another machine's bundle runs under qemu-user (binfmt_misc, set up by
# build-root.sh), with that machine's loader and libraries from the root.
emulation=()
[ "$ARCH" = "$(uname -m)" ] || emulation=(QEMU_LD_PREFIX="$root")
answer=$(env -i PATH=/usr/bin:/bin "${emulation[@]}" "$stage/mlbackend" version)
[ "$answer" = "$version" ] || { echo "frozen mlbackend answered '$answer', not $version" >&2; exit 1; }

# Every entry owned by root and dated at the commit, not by the builder's
# user and clock.
mtime=$(git log -1 --format=%ct 2>/dev/null || date +%s)
mkdir -p dist
rm -f "$archive" "$archive.sha256"
tar --create --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$mtime" \
    -C "$root$work/stage" "$name" | gzip -n > "$archive.tmp"
mv "$archive.tmp" "$archive"
(cd dist && sha256sum "$name.tar.gz" > "$name.tar.gz.sha256")

echo "built $archive in $(($(date +%s) - start)) s; the bundle unpacked: $(du -sm "$stage" | cut -f1) MB"

#!/bin/sh
# Install mlbackend from its unpacked release archive:
#
#   tar xzf mlbackend-VERSION-linux-ARCH.tar.gz      (ARCH: x86_64 or aarch64)
#   sudo mlbackend-VERSION-linux-ARCH/packaging/install.sh [--systemd]
#
# It copies the program to /opt/mlbackend, links /usr/local/bin/mlbackend to
# it and installs the man page. It refuses to replace another version of
# mlbackend without --force (installing the same version again is fine).
# With --systemd it also sets up the server mode: a system user "mlbackend",
# /etc/mlbackend/server.env (kept if present) and the unit mlbackend.service,
# which it does not enable: fill in server.env first.
set -eu

prefix=/opt/mlbackend
bindir=/usr/local/bin
mandir=/usr/local/share/man
force=no
systemd=no

usage() {
    cat <<EOF
Usage: $0 [--force] [--systemd] [--prefix DIR] [--bindir DIR] [--mandir DIR]

  --prefix DIR  install the program into DIR (default: $prefix)
  --bindir DIR  link DIR/mlbackend to it (default: $bindir)
  --mandir DIR  install the man page into DIR/man1 (default: $mandir)
  --force       replace another installed version, or a DIR/mlbackend that
                is not a link to this installation
  --systemd     also install the server mode's service: user mlbackend,
                /etc/mlbackend/server.env, /etc/systemd/system/mlbackend.service
EOF
}

die() {
    echo "install.sh: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case $1 in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix=$2; shift ;;
        --bindir) [ $# -ge 2 ] || die "--bindir needs a directory"; bindir=$2; shift ;;
        --mandir) [ $# -ge 2 ] || die "--mandir needs a directory"; mandir=$2; shift ;;
        --force) force=yes ;;
        --systemd) systemd=yes ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; exit 1 ;;
    esac
    shift
done
case $prefix in /*) ;; *) die "--prefix must be an absolute path" ;; esac
prefix=${prefix%/}

here=$(cd "$(dirname "$0")/.." && pwd)
info() { sed -n "s/^$1: *//p" "$2" 2>/dev/null | head -n 1; }
version=$(info version "$here/BUILD-INFO")
[ -x "$here/mlbackend" ] && [ -n "$version" ] ||
    die "run me from an unpacked release archive ($here has no mlbackend and BUILD-INFO)"

# The loader refuses to start the program on an older glibc.
need=$(info glibc "$here/BUILD-INFO" | cut -d' ' -f1)
have=$(getconf GNU_LIBC_VERSION 2>/dev/null | cut -d' ' -f2) || have=
if [ -n "$need" ] && [ -n "$have" ] &&
        [ "$(printf '%s\n%s\n' "$need" "$have" | sort -t. -k1,1n -k2,2n | head -n 1)" != "$need" ]; then
    die "mlbackend $version needs glibc $need or later; this system has $have"
fi

if [ -e "$prefix" ]; then
    installed=$(info version "$prefix/BUILD-INFO")
    if [ -z "$installed" ]; then
        [ $force = yes ] || die "$prefix exists and is not an mlbackend installation; use --force to replace it"
    elif [ "$installed" != "$version" ] && [ $force = no ]; then
        die "mlbackend $installed is installed in $prefix; use --force to replace it with $version"
    fi
fi
link="$bindir/mlbackend"
if [ -e "$link" ] || [ -L "$link" ]; then
    if [ "$(readlink "$link" 2>/dev/null)" != "$prefix/mlbackend" ] && [ $force = no ]; then
        die "$link exists and is not a link to $prefix/mlbackend; use --force to replace it"
    fi
fi

# Copy next to the target, check that the copy runs here, then swap it in:
# a Moodle call never sees a half-copied program.
new="$prefix.new.$$"
old="$prefix.old.$$"
trap 'rm -rf "$new"' EXIT
mkdir -p "$(dirname "$prefix")"
rm -rf "$new"
cp -R "$here" "$new"
chmod -R u+rwX,go+rX,go-w "$new"   # Moodle runs it as the web server's user
built_for=$(info platform "$here/BUILD-INFO" | sed 's/^linux-//')
machine=$(uname -m)
answer=$(MLBACKEND_REPORTED_VERSION='' "$new/mlbackend" version 2>&1) || {
    [ -z "$built_for" ] || [ "$built_for" = "$machine" ] ||
        die "this archive is for $built_for machines, and this one is $machine: take mlbackend-$version-linux-$machine.tar.gz"
    die "the program does not run on this system: $answer"
}
[ "$answer" = "$version" ] || die "the program answers '$answer' instead of $version"
if [ -e "$prefix" ]; then
    mv "$prefix" "$old"
fi
mv "$new" "$prefix"
rm -rf "$old"
trap - EXIT

mkdir -p "$bindir" "$mandir/man1"
ln -sfn "$prefix/mlbackend" "$link"
cp "$prefix/mlbackend.1" "$mandir/man1/mlbackend.1"
chmod 644 "$mandir/man1/mlbackend.1"

echo "mlbackend $version is installed in $prefix; $link runs it; see man mlbackend."
echo "In Moodle, set the Python ML backend's \"Path to Python\" (pathtopython) to $link."

if [ $systemd = yes ]; then
    if ! id mlbackend >/dev/null 2>&1; then
        useradd --system --user-group --home-dir /var/lib/mlbackend --no-create-home \
            --shell /usr/sbin/nologin --comment "Moodle ML backend" mlbackend
    fi
    mkdir -p /etc/mlbackend /etc/systemd/system
    if [ ! -e /etc/mlbackend/server.env ]; then
        (umask 077 && cp "$prefix/packaging/server.env" /etc/mlbackend/server.env)
        echo "Wrote /etc/mlbackend/server.env: set MOODLE_MLBACKEND_PYTHON_USERS in it."
    fi
    sed "s|/opt/mlbackend/|$prefix/|g" "$prefix/packaging/mlbackend.service" \
        > /etc/systemd/system/mlbackend.service
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl daemon-reload
        systemctl try-restart mlbackend.service   # a running server picks up this version
    fi
    echo "Installed mlbackend.service; once server.env is complete: systemctl enable --now mlbackend"
elif [ -f /etc/systemd/system/mlbackend.service ]; then
    echo "A running mlbackend service keeps the old version until: systemctl restart mlbackend"
fi

#!/bin/sh
# Remove what install.sh installed:
#
#   sudo /opt/mlbackend/packaging/uninstall.sh [--purge]
#
# The service's settings (/etc/mlbackend), its models (/var/lib/mlbackend) and
# its user stay unless --purge is given. Models Moodle trained through the
# command line live in Moodle's own data directory and are never touched.
set -eu

prefix=/opt/mlbackend
bindir=/usr/local/bin
mandir=/usr/local/share/man
purge=no

usage() {
    cat <<EOF
Usage: $0 [--purge] [--prefix DIR] [--bindir DIR] [--mandir DIR]

  --prefix, --bindir, --mandir  as given to install.sh
  --purge   also remove the service's settings, models and user
            (/etc/mlbackend, /var/lib/mlbackend, user mlbackend)
EOF
}

die() {
    echo "uninstall.sh: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case $1 in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix=$2; shift ;;
        --bindir) [ $# -ge 2 ] || die "--bindir needs a directory"; bindir=$2; shift ;;
        --mandir) [ $# -ge 2 ] || die "--mandir needs a directory"; mandir=$2; shift ;;
        --purge) purge=yes ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; exit 1 ;;
    esac
    shift
done
prefix=${prefix%/}

unit=/etc/systemd/system/mlbackend.service
if [ -f "$unit" ]; then
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now mlbackend.service || true
    fi
    rm -f "$unit"
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl daemon-reload
    fi
    echo "Removed the mlbackend service."
fi

link="$bindir/mlbackend"
if [ -L "$link" ] && [ "$(readlink "$link")" = "$prefix/mlbackend" ]; then
    rm -f "$link"
fi
rm -f "$mandir/man1/mlbackend.1"

if [ -e "$prefix" ]; then
    # Only ever remove a directory that install.sh made.
    [ -f "$prefix/BUILD-INFO" ] && [ -x "$prefix/mlbackend" ] ||
        die "$prefix is not an mlbackend installation; leaving it"
    rm -rf "$prefix"
    echo "Removed $prefix."
fi

if [ $purge = yes ]; then
    rm -rf /etc/mlbackend /var/lib/mlbackend
    if id mlbackend >/dev/null 2>&1; then
        userdel mlbackend
    fi
    echo "Removed /etc/mlbackend, /var/lib/mlbackend and the user mlbackend."
elif [ -d /etc/mlbackend ] || [ -d /var/lib/mlbackend ]; then
    echo "Kept /etc/mlbackend and /var/lib/mlbackend (the server's models); --purge removes them."
fi

#!/bin/sh
# Remove what install.sh installed:
#
#   sudo /opt/mlbackend/current/packaging/uninstall.sh [--purge]
#
# The service's settings (/etc/mlbackend), its models (/var/lib/mlbackend) and
# its user stay unless --purge is given, and so do the sysadmin's drop-ins
# (/etc/systemd/system/mlbackend.service.d/). Models Moodle trained through the
# command line live in Moodle's own data directory and are never touched.
set -eu

prefix=/opt/mlbackend
bindir=/usr/local/bin
mandir=/usr/local/share/man
unitdir=/usr/local/lib/systemd/system
purge=no

usage() {
    cat <<EOF
Usage: $0 [--purge] [--prefix DIR] [--bindir DIR] [--mandir DIR]

  --prefix, --bindir, --mandir  as given to install.sh (every version
                                in --prefix goes, the previous one too)
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

have_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }
removed_unit=no
# The unit where install.sh puts it, and where earlier ones put it (in /etc).
for unit in "$unitdir/mlbackend.service" /etc/systemd/system/mlbackend.service; do
    [ -f "$unit" ] || continue
    if [ "$unit" = /etc/systemd/system/mlbackend.service ] &&
            ! grep -q "^# install.sh --systemd installs it as /etc/systemd/system/" "$unit"; then
        echo "Left $unit: install.sh did not write it."
        continue
    fi
    if [ $removed_unit = no ] && have_systemd; then
        systemctl disable --now mlbackend.service || true
    fi
    rm -f "$unit"
    removed_unit=yes
done
if [ $removed_unit = yes ]; then
    ! have_systemd || systemctl daemon-reload
    echo "Removed the mlbackend service."
    [ ! -d /etc/systemd/system/mlbackend.service.d ] ||
        echo "Left /etc/systemd/system/mlbackend.service.d, the sysadmin's drop-ins."
fi

link="$bindir/mlbackend"
case $(readlink "$link" 2>/dev/null) in
    "$prefix/current/mlbackend"|"$prefix/mlbackend") rm -f "$link" ;;
esac
rm -f "$mandir/man1/mlbackend.1"

if [ -e "$prefix" ]; then
    # Only ever remove what install.sh made: a release (earlier install.sh), or
    # releases in directories of their own with the links to them.
    is_release() { [ -f "$1/BUILD-INFO" ] && [ -x "$1/mlbackend" ]; }
    if is_release "$prefix" && [ ! -L "$prefix/current" ]; then
        rm -rf "$prefix"
    elif [ -L "$prefix/current" ]; then
        for dir in "$prefix"/* "$prefix"/.new-* "$prefix"/.old-*; do
            [ -e "$dir" ] || [ -L "$dir" ] || continue
            case ${dir##*/} in
                current|previous|_internal) rm -f "$dir" ;;
                .new-*|.old-*) rm -rf "$dir" ;;
                *) if is_release "$dir"; then rm -rf "$dir"; else echo "Left $dir: not an mlbackend release."; fi ;;
            esac
        done
        rmdir "$prefix" 2>/dev/null || true
    else
        die "$prefix is not an mlbackend installation; leaving it"
    fi
    [ -e "$prefix" ] || echo "Removed $prefix."
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

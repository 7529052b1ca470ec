#!/bin/sh
# Install mlbackend from its unpacked release archive:
#
#   tar xzf mlbackend-VERSION-linux-ARCH.tar.gz      (ARCH: x86_64 or aarch64)
#   sudo mlbackend-VERSION-linux-ARCH/packaging/install.sh [--systemd]
#
# Each version goes into a directory of its own, /opt/mlbackend/VERSION, and
# the link /opt/mlbackend/current is switched to it in one step (rename), so
# that a running server never loads a file of another version; the version
# it replaces stays as /opt/mlbackend/previous, for --rollback. Older ones
# are removed, unless a running process still uses them.
# /usr/local/bin/mlbackend links to current, and the man page is installed.
# It refuses to replace another version without --force (installing the same
# version again is fine, and restarts nothing).
# With --systemd it also sets up the server mode: a system user "mlbackend",
# /etc/mlbackend/server.env (kept if present) and the unit mlbackend.service
# in /usr/local/lib/systemd/system, where /etc/systemd/system and its
# drop-ins (systemctl edit mlbackend) stay the sysadmin's. It never enables
# the service, and restarts it only with --restart.
set -eu

prefix=/opt/mlbackend
bindir=/usr/local/bin
mandir=/usr/local/share/man
unitdir=/usr/local/lib/systemd/system
force=no
systemd=no
restart=no
rollback=no

usage() {
    cat <<EOF
Usage: $0 [--force] [--systemd] [--restart] [--prefix DIR] [--bindir DIR] [--mandir DIR]
       $0 --rollback [--restart] [--prefix DIR]

  --prefix DIR  install the program into DIR/VERSION, linked as DIR/current
                (default: $prefix)
  --bindir DIR  link DIR/mlbackend to it (default: $bindir)
  --mandir DIR  install the man page into DIR/man1 (default: $mandir)
  --force       replace another installed version, or a DIR/mlbackend that
                is not a link to this installation
  --systemd     also install the server mode's service: user mlbackend,
                /etc/mlbackend/server.env, $unitdir/mlbackend.service
  --restart     restart the service if it runs, so that it runs this version
                (otherwise it keeps the version it started with until
                systemctl restart mlbackend)
  --rollback    make the previous version (DIR/previous) current again
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
        --restart) restart=yes ;;
        --rollback) rollback=yes ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; exit 1 ;;
    esac
    shift
done
case $prefix in /*) ;; *) die "--prefix must be an absolute path" ;; esac
prefix=${prefix%/}

info() { sed -n "s/^$1: *//p" "$2" 2>/dev/null | head -n 1; }
is_release() { [ -f "$1/BUILD-INFO" ] && [ -x "$1/mlbackend" ]; }
# relink LINK TARGET: point LINK at TARGET in one rename, never missing.
relink() {
    ln -sfn "$2" "$1.new.$$"
    mv -fT "$1.new.$$" "$1"
}
have_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }
service_active() { have_systemd && systemctl -q is-active mlbackend.service 2>/dev/null; }
# The running service's version: the directory its program was started from.
service_version() {
    pid=$(systemctl show --property MainPID --value mlbackend.service 2>/dev/null) || pid=0
    [ "${pid:-0}" != 0 ] || return 0
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 0
    case $exe in *" (deleted)") return 0 ;; esac
    info version "$(dirname "$exe")/BUILD-INFO"
}
# After the switch: restart a running service (--restart), or say what it runs.
settle_service() {
    service_active || return 0
    running=$(service_version)
    [ "$running" != "$1" ] || return 0
    if [ $restart = yes ]; then
        systemctl restart mlbackend.service
        echo "Restarted mlbackend.service: it runs $1."
    else
        echo "mlbackend.service still runs ${running:-the version it started with}; to run $1: systemctl restart mlbackend"
    fi
}

# Earlier install.sh wrote the unit into /etc/systemd/system (where it hides
# the packaged one) and made /opt/mlbackend itself the program.
legacy_unit=/etc/systemd/system/mlbackend.service
legacy_marker="^# install.sh --systemd installs it as /etc/systemd/system/"
if [ -f "$legacy_unit" ] && grep -q "$legacy_marker" "$legacy_unit"; then
    systemd=yes   # that installation had --systemd: its unit moves too
fi
flat=no
! is_release "$prefix" || [ -L "$prefix/current" ] || flat=yes

if [ $rollback = yes ]; then
    { [ -L "$prefix/previous" ] && is_release "$prefix/previous"; } ||
        die "there is no previous version in $prefix to roll back to"
    back=$(readlink "$prefix/previous")
    now=$(readlink "$prefix/current")
    relink "$prefix/current" "$back"
    relink "$prefix/previous" "$now"
    version=$(info version "$prefix/current/BUILD-INFO")
    echo "mlbackend $version is current again in $prefix (previous: $(info version "$prefix/previous/BUILD-INFO"))."
    settle_service "$version"
    exit 0
fi

here=$(cd "$(dirname "$0")/.." && pwd)
version=$(info version "$here/BUILD-INFO")
{ [ -x "$here/mlbackend" ] && [ -n "$version" ]; } ||
    die "run me from an unpacked release archive ($here has no mlbackend and BUILD-INFO)"
case $version in */*|.*) die "$here/BUILD-INFO names a strange version: $version" ;; esac

# The loader refuses to start the program on an older glibc.
need=$(info glibc "$here/BUILD-INFO" | cut -d' ' -f1)
have=$(getconf GNU_LIBC_VERSION 2>/dev/null | cut -d' ' -f2) || have=
if [ -n "$need" ] && [ -n "$have" ] &&
        [ "$(printf '%s\n%s\n' "$need" "$have" | sort -t. -k1,1n -k2,2n | head -n 1)" != "$need" ]; then
    die "mlbackend $version needs glibc $need or later; this system has $have"
fi

installed=
if [ $flat = yes ]; then
    installed=$(info version "$prefix/BUILD-INFO")
    [ "$installed" = "$version" ] || [ $force = yes ] ||
        die "mlbackend $installed is installed in $prefix; use --force to replace it with $version (it stays as $prefix/previous)"
elif [ -e "$prefix" ]; then
    installed=$(info version "$prefix/current/BUILD-INFO")
    if [ -z "$installed" ] && [ -n "$(ls -A "$prefix")" ]; then
        [ $force = yes ] || die "$prefix exists and is not an mlbackend installation; use --force to replace it"
        rm -rf "$prefix"
    elif [ -n "$installed" ] && [ "$installed" != "$version" ] && [ $force = no ]; then
        die "mlbackend $installed is installed in $prefix; use --force to replace it with $version (it stays as $prefix/previous)"
    fi
fi
link="$bindir/mlbackend"
if [ -e "$link" ] || [ -L "$link" ]; then
    case $(readlink "$link" 2>/dev/null) in
        "$prefix/current/mlbackend"|"$prefix/mlbackend") ;;
        *) [ $force = yes ] || die "$link exists and is not a link to $prefix/current/mlbackend; use --force to replace it" ;;
    esac
fi

if [ $flat = yes ]; then
    # Into DIR/VERSION, linked as current. A server started from the old
    # place goes on loading its own libraries through DIR/_internal.
    echo "Moving mlbackend $installed to $prefix/$installed (one directory per version)."
    mv "$prefix" "$prefix.layout.$$"
    mkdir "$prefix"
    mv "$prefix.layout.$$" "$prefix/$installed"
    relink "$prefix/current" "$installed"
    ln -s "$installed/_internal" "$prefix/_internal"
fi

# The same build again: nothing to copy (a running server reads its files
# by name, also while one copy replaces another). --force copies it anyway.
same=no
if [ "$installed" = "$version" ] && [ $force = no ] && cmp -s "$here/BUILD-INFO" "$prefix/$version/BUILD-INFO"; then
    same=yes
fi

# Copy next to the target, check that the copy runs here, then rename it into
# place: a Moodle call never sees a half-copied program.
mkdir -p "$prefix"
if [ $same = no ]; then
    new="$prefix/.new-$version.$$"
    trap 'rm -rf "$new"' EXIT
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
    if [ -e "$prefix/$version" ]; then
        # The same version again, with --force or another build: a repair. A
        # server running the old copy may miss a file for a moment; restart it.
        mv "$prefix/$version" "$prefix/.old-$version.$$"
        mv "$new" "$prefix/$version"
        rm -rf "$prefix/.old-$version.$$"
    else
        mv "$new" "$prefix/$version"
    fi
fi
trap - EXIT
was=$(readlink "$prefix/current" 2>/dev/null) || was=
relink "$prefix/current" "$version"
if [ -n "$was" ] && [ "$was" != "$version" ]; then
    relink "$prefix/previous" "$was"
fi
# Versions older than previous go, unless a running process was started
# from one (its program would lose the libraries it loads later).
keep_current=$(readlink "$prefix/current")
keep_previous=$(readlink "$prefix/previous" 2>/dev/null) || keep_previous=
for dir in "$prefix"/* "$prefix"/.new-* "$prefix"/.old-*; do
    { [ -d "$dir" ] && [ ! -L "$dir" ]; } || continue
    name=${dir##*/}
    { [ "$name" != "$keep_current" ] && [ "$name" != "$keep_previous" ]; } || continue
    is_release "$dir" || case $name in .new-*|.old-*) ;; *) continue ;; esac
    in_use=no
    for exe in /proc/[0-9]*/exe; do
        case $(readlink "$exe" 2>/dev/null) in "$dir"/*) in_use=yes; break ;; esac
    done
    if [ $in_use = yes ]; then
        echo "Kept $dir: a running process uses it."
    else
        rm -rf "$dir"
    fi
done

[ ! -L "$prefix/_internal" ] || [ -e "$prefix/_internal" ] || rm -f "$prefix/_internal"

mkdir -p "$bindir" "$mandir/man1"
relink "$link" "$prefix/current/mlbackend"
cp "$prefix/current/mlbackend.1" "$mandir/man1/mlbackend.1"
chmod 644 "$mandir/man1/mlbackend.1"
# man -k and apropos find it once man-db's index has it (on the manual path).
if [ "$mandir" = /usr/local/share/man ] && command -v mandb >/dev/null 2>&1; then
    mandb -q >/dev/null 2>&1 || true
fi

if [ $same = yes ]; then
    echo "mlbackend $version is installed in $prefix/$version already (the same build): nothing copied."
elif [ "$installed" = "$version" ]; then
    echo "mlbackend $version was already installed in $prefix/$version; copied again."
else
    echo "mlbackend $version is installed in $prefix/$version ($prefix/current); $link runs it; see man mlbackend."
fi
[ -z "$installed" ] || [ "$installed" = "$version" ] ||
    echo "mlbackend $installed stays in $prefix/previous: install.sh --rollback makes it current again."
echo "In Moodle, set the Python ML backend's \"Path to Python\" (pathtopython) to $link."

if [ $systemd = yes ]; then
    if ! id mlbackend >/dev/null 2>&1; then
        useradd --system --user-group --home-dir /var/lib/mlbackend --no-create-home \
            --shell /usr/sbin/nologin --comment "Moodle ML backend" mlbackend
    fi
    mkdir -p /etc/mlbackend "$unitdir"
    if [ ! -e /etc/mlbackend/server.env ]; then
        (umask 077 && cp "$prefix/current/packaging/server.env" /etc/mlbackend/server.env)
        echo "Wrote /etc/mlbackend/server.env: set MOODLE_MLBACKEND_PYTHON_USERS in it."
    fi
    sed "s|/opt/mlbackend/|$prefix/|g" "$prefix/current/packaging/mlbackend.service" \
        >"$unitdir/mlbackend.service.new.$$"
    mv -f "$unitdir/mlbackend.service.new.$$" "$unitdir/mlbackend.service"
    if [ -f "$legacy_unit" ] && grep -q "$legacy_marker" "$legacy_unit"; then
        rm -f "$legacy_unit"
        echo "Removed $legacy_unit, which an earlier install.sh wrote; the unit is $unitdir/mlbackend.service."
    elif [ -f "$legacy_unit" ]; then
        echo "Note: $legacy_unit is not ours and overrides $unitdir/mlbackend.service; local changes belong in a drop-in (systemctl edit mlbackend)."
    fi
    if have_systemd; then
        systemctl daemon-reload
        settle_service "$version"
        if ! systemctl -q is-enabled mlbackend.service 2>/dev/null; then
            echo "Installed mlbackend.service; once server.env has a user: systemctl enable --now mlbackend"
        elif ! service_active; then
            echo "mlbackend.service is enabled but not running: systemctl start mlbackend; journalctl -u mlbackend says why it stopped."
        fi
    else
        echo "Installed $unitdir/mlbackend.service; once server.env has a user: systemctl enable --now mlbackend"
    fi
elif [ -f "$unitdir/mlbackend.service" ] || [ -f "$legacy_unit" ]; then
    settle_service "$version"
fi

#!/usr/bin/env bash
# `make packages-check`: the .deb and the .rpm of a release checked without
# installing them (for the aarch64 ones, what is checked of them here):
# metadata (dpkg-deb -I, rpm -qip), file lists (dpkg-deb -c, rpm -qlp) holding
# the archive's whole bundle in /usr/lib/mlbackend/VERSION, the program's ELF
# machine, the unit, the configuration file (0600), the maintainer scripts
# (sh -n, and the rpm's scriptlets as rpm -qp --scripts shows them) and the
# rpm's digests (rpm -K).
#
#   tests/service/package-check.sh dist/mlbackend-VERSION-linux-ARCH.tar.gz
#
# Prints one line per check and "packages (ARCH): N passed, N failed".

# The conditions handed to check() are strings it evaluates, hence:
# shellcheck disable=SC2016,SC2034
set -euo pipefail
cd "$(dirname "$0")/../.."
archive=$1
name=$(basename "$archive" .tar.gz)
version=$(cut -d- -f2 <<<"$name")
arch=${name##*-}
out=$(dirname "$archive")
case $arch in
    x86_64) debarch=amd64 elf_machine=3e ;;   # EM_X86_64
    aarch64) debarch=arm64 elf_machine=b7 ;;  # EM_AARCH64
esac
deb=$out/mlbackend_${version}_$debarch.deb
rpm=$out/mlbackend-$version-1.$arch.rpm
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# shellcheck source=tests/frozen/check-lib.sh
source tests/frozen/check-lib.sh
# machine FILE: the e_machine byte of an ELF file, in hex.
machine() { od -An -tx1 -j18 -N1 "$1" | tr -d ' '; }

check "checksums of the archive and both packages" \
    '(cd "$out" && sha256sum --check --quiet "$name.tar.gz.sha256" "$(basename "$deb").sha256" "$(basename "$rpm").sha256")'
# bundle: the paths below the bundle's _internal/, where the packages put them.
bundle() { sed 's|/$||' | grep "^/usr/lib/mlbackend/$version/_internal/" | sort; }
tar -tzf "$archive" | sed "s|^$name/|/usr/lib/mlbackend/$version/|" | bundle >"$tmp/bundle"

# --- .deb
dpkg-deb -I "$deb" >"$tmp/deb-info"
check ".deb: mlbackend $version for $debarch, needing glibc of the floor and nothing else unusual" \
    '[ "$(dpkg-deb -f "$deb" Package Version Architecture | tr "\n" " ")" = "Package: mlbackend Version: $version Architecture: $debarch " ] && [[ $(dpkg-deb -f "$deb" Depends) == "libc6 (>= 2.28), libstdc++6 (>= 7), passwd" ]]'
dpkg-deb -c "$deb" | awk '{ sub(/^\./, "", $6); print $1, $2, $6, $7, $8 }' >"$tmp/deb-files"
awk '{ print $3 }' "$tmp/deb-files" | bundle >"$tmp/deb-bundle"
check ".deb: the archive's whole bundle ($(wc -l <"$tmp/bundle") entries) in /usr/lib/mlbackend/$version" \
    'cmp -s "$tmp/bundle" "$tmp/deb-bundle" && grep -q "^-rwxr-xr-x root/root /usr/lib/mlbackend/$version/mlbackend " "$tmp/deb-files"'
check ".deb: /usr/bin/mlbackend links to it; the unit in /lib/systemd/system; nothing in /etc/systemd" \
    'grep -q "^lrwxrwxrwx root/root /usr/bin/mlbackend -> ../lib/mlbackend/$version/mlbackend" "$tmp/deb-files" && grep -q " /lib/systemd/system/mlbackend.service " "$tmp/deb-files" && ! grep -q " /etc/systemd" "$tmp/deb-files"'
check ".deb: /etc/mlbackend/server.env, 0600 root, a conffile" \
    'grep -q "^-rw------- root/root /etc/mlbackend/server.env" "$tmp/deb-files" && [ "$(dpkg-deb -I "$deb" conffiles)" = /etc/mlbackend/server.env ]'
mkdir "$tmp/deb"
dpkg-deb -x "$deb" "$tmp/deb"
dpkg-deb -e "$deb" "$tmp/deb/DEBIAN"
check ".deb: the program is an ELF file for $arch; the unit runs /usr/bin/mlbackend, stops on status 78" \
    '[ "$(machine "$tmp/deb/usr/lib/mlbackend/$version/mlbackend")" = $elf_machine ] && grep -qx "ExecStart=/usr/bin/mlbackend serve \$MLBACKEND_SERVE_OPTIONS" "$tmp/deb/lib/systemd/system/mlbackend.service" && grep -qx "RestartPreventExitStatus=78" "$tmp/deb/lib/systemd/system/mlbackend.service"'
check ".deb: maintainer scripts postinst, prerm, postrm (sh -n)" \
    'for s in postinst prerm postrm; do [ -x "$tmp/deb/DEBIAN/$s" ] && sh -n "$tmp/deb/DEBIAN/$s" || exit 1; done'
rm -rf "$tmp/deb"

# --- .rpm
rpm -qip "$rpm" >"$tmp/rpm-info" 2>/dev/null
check ".rpm: mlbackend $version-1 for $arch" \
    '[ "$(rpm -qp --qf "%{NAME} %{VERSION} %{RELEASE} %{ARCH}" "$rpm" 2>/dev/null)" = "mlbackend $version 1 $arch" ]'
check ".rpm: digests (rpm -K)" 'rpm -K --nosignature "$rpm" >/dev/null 2>&1'
check ".rpm: requires glibc of the floor, libstdc++, shadow-utils, systemd; no automatic requirement on bundled libraries" \
    '[ "$(rpm -qp --requires "$rpm" 2>/dev/null | grep -v -e "^rpmlib(" -e "^/bin/sh$" | sort -u | tr "\n" " ")" = "glibc >= 2.28 libstdc++ >= 7 shadow-utils systemd " ]'
rpm -qp --qf '[%{FILEMODES:perms} %{FILEUSERNAME}/%{FILEGROUPNAME} %{FILENAMES}\n]' "$rpm" 2>/dev/null >"$tmp/rpm-files"
awk '{ print $3 }' "$tmp/rpm-files" | bundle >"$tmp/rpm-bundle"
check ".rpm: the archive's whole bundle in /usr/lib/mlbackend/$version (rpm -qlp)" \
    'cmp -s "$tmp/bundle" "$tmp/rpm-bundle" && grep -q "^-rwxr-xr-x root/root /usr/lib/mlbackend/$version/mlbackend$" "$tmp/rpm-files"'
check ".rpm: the unit in /usr/lib/systemd/system, /usr/bin/mlbackend, server.env 0600 and %config(noreplace)" \
    'grep -q " /usr/lib/systemd/system/mlbackend.service$" "$tmp/rpm-files" && grep -q "^lrwxrwxrwx root/root /usr/bin/mlbackend$" "$tmp/rpm-files" && grep -q "^-rw------- root/root /etc/mlbackend/server.env$" "$tmp/rpm-files" && [ "$(rpm -qp --configfiles "$rpm" 2>/dev/null)" = /etc/mlbackend/server.env ] && ! grep -q " /etc/systemd" "$tmp/rpm-files"'
rpm -qp --scripts "$rpm" >"$tmp/scripts" 2>/dev/null
check ".rpm: scriptlets make the user (pre), apply the preset (post), stop on erase (preun), try-restart on upgrade (postun)" \
    'grep -q "^preinstall scriptlet" "$tmp/scripts" && grep -q "useradd -r -g mlbackend" "$tmp/scripts" && grep -q "preset mlbackend.service" "$tmp/scripts" && grep -q "disable --now mlbackend.service" "$tmp/scripts" && grep -q "try-restart mlbackend.service" "$tmp/scripts"'
mkdir "$tmp/rpm"
rpm2archive -n <"$rpm" | tar -xf - -C "$tmp/rpm" "./usr/lib/mlbackend/$version/mlbackend"
check ".rpm: the program is an ELF file for $arch" '[ "$(machine "$tmp/rpm/usr/lib/mlbackend/$version/mlbackend")" = $elf_machine ]'

echo "packages ($arch): $passed passed, $failed failed"
[ "$failed" = 0 ]

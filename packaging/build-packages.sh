#!/usr/bin/env bash
# `make packages`: the .deb (dpkg-deb) and the .rpm (rpmbuild, from Debian's
# rpm package) of a release archive, with their .sha256, in the archive's
# directory:
#
#   packaging/build-packages.sh dist/mlbackend-VERSION-linux-ARCH.tar.gz
#     -> dist/mlbackend_VERSION_DEBARCH.deb     (amd64, arm64)
#        dist/mlbackend-VERSION-1.ARCH.rpm      (x86_64, aarch64)
#
# Both hold the same frozen program as the archive, in a directory of its own
# version, /usr/lib/mlbackend/VERSION, linked as /usr/bin/mlbackend: an
# upgrade unpacks the new version beside the old one, so that a server
# still running the old one never loads a file of the new one (it runs the
# new one once restarted, which both packages do after an upgrade, as their
# package managers' conventions want). The unit goes where packages put
# theirs (/lib/systemd/system, /usr/lib/systemd/system): /etc/systemd/system
# and its drop-ins stay the sysadmin's. /etc/mlbackend/server.env (0600) is a
# configuration file the package manager keeps. The maintainer scripts
# (packaging/deb/, packaging/rpm/) create the system user mlbackend and its
# state directory /var/lib/mlbackend (the models), which removing the
# package keeps and purging the .deb removes. Packing another machine's
# archive needs no emulation: nothing of it runs here.
set -euo pipefail
cd "$(dirname "$0")/.."
archive=$1
name=$(basename "$archive" .tar.gz)                 # mlbackend-VERSION-linux-ARCH
version=$(cut -d- -f2 <<<"$name")
arch=${name##*-}
out=$(dirname "$archive")
case $arch in x86_64) debarch=amd64 ;; aarch64) debarch=arm64 ;; *) echo "build-packages.sh: no package for $arch" >&2; exit 1 ;; esac
command -v rpmbuild >/dev/null || { apt-get update -q && apt-get install -y -q rpm; } >&2
(cd "$out" && sha256sum --check --quiet "$name.tar.gz.sha256")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$archive" -C "$work"
rel=$work/$name
glibc=$(sed -n 's/^glibc: \([0-9.]*\).*/\1/p' "$rel/BUILD-INFO")
mtime=$(stat -c %Y "$rel/BUILD-INFO")   # the commit's time (build-dist.sh)

# stage ROOT UNITDIR: the files both packages install, below ROOT.
stage() {
    local root=$1 unitdir=$2
    mkdir -p "$root/usr/lib/mlbackend/$version" "$root/usr/bin" "$root$unitdir" \
        "$root/usr/share/man/man1" "$root/usr/share/doc/mlbackend" "$root/etc/mlbackend"
    cp -a "$rel/mlbackend" "$rel/_internal" "$rel/BUILD-INFO" "$root/usr/lib/mlbackend/$version/"
    chmod -R u+rwX,go+rX,go-w "$root/usr/lib/mlbackend"
    ln -s "../lib/mlbackend/$version/mlbackend" "$root/usr/bin/mlbackend"
    sed -e "s|/opt/mlbackend/current/mlbackend|/usr/bin/mlbackend|" "$rel/packaging/mlbackend.service" \
        >"$root$unitdir/mlbackend.service"
    gzip -9n <"$rel/mlbackend.1" >"$root/usr/share/man/man1/mlbackend.1.gz"
    cp "$rel/README.md" "$rel/LICENSE" "$root/usr/share/doc/mlbackend/"
    cp -r "$rel/docs" "$root/usr/share/doc/mlbackend/docs"
    install -m 0600 "$rel/packaging/server.env" "$root/etc/mlbackend/server.env"
    chmod 0644 "$root$unitdir/mlbackend.service" "$root/usr/share/man/man1/mlbackend.1.gz"
    find "$root" -exec touch -h -d "@$mtime" {} +
}

# PACKAGES: which to make (default: both); GZIP_LEVEL: their compression
# (default 6; the service checks' older build takes 1, for time).
packages=${PACKAGES:-deb rpm}
level=${GZIP_LEVEL:-6}
made=()

# --- the .deb
if [[ " $packages " == *" deb "* ]]; then
deb=$work/deb
stage "$deb" /lib/systemd/system
cat >"$deb/usr/share/doc/mlbackend/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: mlbackend
Comment: The frozen program bundles Python and its packages; their licences
 are in /usr/lib/mlbackend/$version/_internal/licenses/ (TensorFlow's
 third-party notices in _internal/tensorflow/THIRD_PARTY_NOTICES.txt).

Files: *
Copyright: the mlbackend developers
License: GPL-3+
 On Debian systems, the complete text of the GNU General Public License
 version 3 can be found in /usr/share/common-licenses/GPL-3.
EOF
mkdir -p "$deb/DEBIAN"
cp packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$deb/DEBIAN/"
chmod 0755 "$deb/DEBIAN/postinst" "$deb/DEBIAN/prerm" "$deb/DEBIAN/postrm"
echo /etc/mlbackend/server.env >"$deb/DEBIAN/conffiles"
cat >"$deb/DEBIAN/control" <<EOF
Package: mlbackend
Version: $version
Architecture: $debarch
Maintainer: mlbackend developers <mlbackend@localhost>
Installed-Size: $(du -sk --exclude=DEBIAN "$deb" | cut -f1)
Depends: libc6 (>= $glibc), libstdc++6 (>= 7), passwd
Section: science
Priority: optional
Description: machine-learning backend of Moodle Learning Analytics
 Moodle's Learning Analytics sends CSV datasets to this backend, which
 trains, predicts and evaluates. It replaces the moodlemlbackend Python
 package: set Moodle's "Path to Python" to /usr/bin/mlbackend, or run the
 server mode (mlbackend.service; set a user in /etc/mlbackend/server.env,
 then systemctl start mlbackend). One frozen program: it needs no Python.
EOF
deb_file=$out/mlbackend_${version}_$debarch.deb
rm -f "$deb_file" "$deb_file.sha256"
dpkg-deb --root-owner-group -Zgzip "-z$level" --build "$deb" "$deb_file.tmp" >/dev/null
mv "$deb_file.tmp" "$deb_file"
made+=("$deb_file")
fi

# --- the .rpm
if [[ " $packages " == *" rpm "* ]]; then
rpm=$work/rpm
stage "$rpm/root" /usr/lib/systemd/system
mkdir -p "$rpm/rpms" "$rpm/tmp"
{
    cat <<EOF
Name: mlbackend
Version: $version
Release: 1
Summary: Machine-learning backend of Moodle Learning Analytics
License: GPL-3.0-or-later
URL: https://moodle.org/
AutoReqProv: no
Requires: glibc >= $glibc, libstdc++ >= 7, shadow-utils, systemd
Requires(pre): shadow-utils

# The frozen program is built elsewhere (make dist): nothing is compiled,
# stripped or scanned for debug information here.
%global debug_package %{nil}
%global __os_install_post %{nil}
%global _build_id_links none
%global _binary_payload w$level.gzdio

%description
Moodle's Learning Analytics sends CSV datasets to this backend, which
trains, predicts and evaluates. It replaces the moodlemlbackend Python
package: set Moodle's "Path to Python" to /usr/bin/mlbackend, or run the
server mode (mlbackend.service; set a user in /etc/mlbackend/server.env,
then systemctl enable --now mlbackend). One frozen program: it needs no Python.

%install
cp -a $rpm/root/. %{buildroot}/

%files
%defattr(-,root,root,-)
/usr/lib/mlbackend
/usr/bin/mlbackend
/usr/lib/systemd/system/mlbackend.service
/usr/share/man/man1/mlbackend.1.gz
%doc /usr/share/doc/mlbackend
%dir /etc/mlbackend
%config(noreplace) %attr(0600,root,root) /etc/mlbackend/server.env

EOF
    for scriptlet in pre post preun postun; do
        echo "%$scriptlet"
        sed '1{/^#!/d}' "packaging/rpm/$scriptlet"
        echo
    done
} >"$rpm/mlbackend.spec"
rpmbuild --quiet -bb --target "$arch-linux" --define "_topdir $rpm" --define "_rpmdir $rpm/rpms" \
    --define "_tmppath $rpm/tmp" --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
    --define "use_source_date_epoch_as_buildtime 1" "$rpm/mlbackend.spec" >"$rpm/rpmbuild.log" 2>&1 ||
    { cat "$rpm/rpmbuild.log" >&2; exit 1; }
rpm_file=$out/mlbackend-$version-1.$arch.rpm
rm -f "$rpm_file" "$rpm_file.sha256"
mv "$rpm/rpms/mlbackend-$version-1.$arch.rpm" "$rpm_file"
made+=("$rpm_file")
fi

for f in "${made[@]}"; do
    (cd "$out" && sha256sum "$(basename "$f")" >"$(basename "$f").sha256")
    echo "$f: $(du -m "$f" | cut -f1) MB"
done

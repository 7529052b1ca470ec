#!/usr/bin/env bash
# The container image the service checks boot (tests/service/service-test.sh):
# Debian SUITE with systemd as PID 1, made from the minimal root of the
# frozen checks (tests/frozen/test-root.sh) plus systemd, dbus, man-db,
# python3 with requests for Moodle's client simulator (rest.py is Moodle's
# client, not our program, which never sees that Python), and rpm, to run
# the .rpm's scriptlets. Prints its tag.
#
#   tests/service/systemd-image.sh SUITE
#
# Kept as a tar in $MLBACKEND_CACHE (default /var/cache/mlbackend) and as a
# podman image, both keyed by a hash of this file: made again only when
# this recipe changes. Needs root and podman (packaging/container/containers.conf).
set -euo pipefail
cd "$(dirname "$0")/../.."
suite=${1:?usage: systemd-image.sh SUITE}
cache=${MLBACKEND_CACHE:-/var/cache/mlbackend}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/packaging/container/containers.conf}
stamp=$(sha256sum <tests/service/systemd-image.sh | cut -c1-12)
tag=localhost/mlbackend-systemd:$suite-$stamp
tar=$cache/systemd-image-$suite-$stamp.tar

[ "$(id -u)" = 0 ] || { echo "systemd-image.sh: needs root (chroot, podman)" >&2; exit 1; }
{ command -v podman >/dev/null && command -v runc >/dev/null; } ||
    { apt-get update -q && apt-get install -y -q podman runc; } >&2
base=$(bash tests/frozen/test-root.sh "$suite" x86_64)
exec 7>"$cache/systemd-image-$suite.lock"
flock 7
if [ ! -s "$tar" ]; then
    echo "systemd-image.sh: $suite with systemd, from $base" >&2
    root=$cache/systemd-image-$suite
    rm -rf "$root" "$cache"/systemd-image-"$suite"-*.tar
    cp -a "$base" "$root"
    rm -f "$root/.minbase-done"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    if ! chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive sh -euc '
            apt-get update -q
            apt-get install -y -q --no-install-recommends systemd systemd-sysv dbus man-db \
                python3 python3-requests procps rpm
            # The web server'"'"'s user exists (www-data, base-passwd); nothing to log in to.
            systemctl mask getty@tty1.service console-getty.service systemd-logind.service \
                systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer
            apt-get clean
            rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/locale/*' \
            >"$root.log" 2>&1; then
        tail -n 20 "$root.log" >&2
        exit 1
    fi
    : >"$root/etc/resolv.conf"
    tar --numeric-owner --xattrs -C "$root" -cf "$tar.tmp" .
    mv "$tar.tmp" "$tar"
    rm -rf "$root"
fi
# Images of earlier recipes are of no further use.
podman images --format '{{.Repository}}:{{.Tag}}' | grep "^localhost/mlbackend-systemd:$suite-" \
    | grep -v ":$suite-$stamp\$" | xargs -r podman rmi --force >/dev/null 2>&1 || true
podman image exists "$tag" ||
    podman import --quiet --os linux --arch amd64 --change 'CMD ["/sbin/init"]' "$tar" "$tag" >/dev/null
echo "$tag"

#!/usr/bin/env bash
# `make image`: the container image of the release, made from the release
# archive (packaging/container/Containerfile) on a minimal Debian root built
# here with debootstrap and imported with `podman import` (no registry is
# needed or used). Tags localhost/mlbackend:VERSION-ARCH (and :VERSION and
# :latest for this machine's own architecture), and writes
# dist/mlbackend-VERSION-image-ARCH.tar (`docker load` / `podman load` it).
# Another machine's image (aarch64 on x86-64) is built under qemu-user
# (packaging/emulation.sh).
#
#   packaging/build-image.sh dist/mlbackend-VERSION-linux-ARCH.tar.gz
#
# The base root is cached in $MLBACKEND_CACHE (default /var/cache/mlbackend)
# and made again when its recipe (part 1 below) changes. Needs root and podman; podman is
# run with packaging/container/containers.conf (CONTAINERS_CONF).
set -euo pipefail
cd "$(dirname "$0")/.."
archive=$1
name=$(basename "$archive" .tar.gz)                 # mlbackend-VERSION-linux-ARCH
version=$(cut -d- -f2 <<<"$name")
arch=${name##*-}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
CACHE=${MLBACKEND_CACHE:-/var/cache/mlbackend}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/packaging/container/containers.conf}
say() { echo "build-image: $*" >&2; }

[ "$(id -u)" = 0 ] || { echo "build-image.sh: needs root (debootstrap, podman)" >&2; exit 1; }
command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null \
    || { apt-get update -q && apt-get install -y -q podman runc debootstrap; } >&2
case $arch in x86_64) debarch=amd64 ;; aarch64) debarch=arm64 ;; *) exit 1 ;; esac
[ "$arch" = "$(uname -m)" ] || bash packaging/emulation.sh "$arch"
(cd "$(dirname "$archive")" && sha256sum --check --quiet "$name.tar.gz.sha256")

# 1. The base: Debian minbase, the user that runs the server (uid 999) and its
#    home with the models directory, without apt's lists and the docs.
stamp=$(sed -n '/^# 1\. The base/,/^# 2\. The image/p' packaging/build-image.sh | sha256sum | cut -c1-12)
base_tar=$CACHE/image-base-$SUITE-$arch-$stamp.tar
base_tag=localhost/mlbackend-base:$SUITE-$arch-$stamp
if [ ! -s "$base_tar" ]; then
    say "debootstrap $SUITE into the image's base root"
    root=$CACHE/image-base-$SUITE-$arch
    rm -rf "$root" "$CACHE"/image-base-"$SUITE"-"$arch"-*.tar
    mkdir -p "$CACHE"
    debootstrap --variant=minbase --arch="$debarch" "$SUITE" "$root" "$MIRROR" \
        >"$CACHE/image-base-$arch.log" 2>&1 || { tail -n 20 "$CACHE/image-base-$arch.log" >&2; exit 1; }
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin sh -euc '
        groupadd --system --gid 999 mlbackend
        useradd --system --uid 999 --gid 999 --home-dir /var/lib/mlbackend \
            --shell /usr/sbin/nologin mlbackend
        install -d -o 999 -g 999 -m 750 /var/lib/mlbackend /var/lib/mlbackend/models
        apt-get clean
        rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* /usr/share/locale/* \
            /var/log/*.log /var/cache/debconf/*-old'
    tar --numeric-owner --xattrs -C "$root" -cf "$base_tar.tmp" .
    mv "$base_tar.tmp" "$base_tar"
    rm -rf "$root"
fi
# Bases of earlier versions of this script are of no further use.
podman images --format '{{.Repository}}:{{.Tag}}' | grep "^localhost/mlbackend-base:$SUITE-$arch-" \
    | grep -v ":$SUITE-$arch-$stamp\$" | xargs -r podman rmi --force >/dev/null || true
if ! podman image exists "$base_tag"; then
    say "podman import $base_tar"
    podman import --quiet --os linux --arch "$debarch" "$base_tar" "$base_tag" >/dev/null
fi

# 2. The image: the archive unpacked into the build context, then the Containerfile.
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
tar -xzf "$archive" -C "$context"
mv "$context/$name" "$context/mlbackend"
tag=localhost/mlbackend:$version-$arch
tags=(--tag "$tag")
[ "$arch" != "$(uname -m)" ] || tags+=(--tag "localhost/mlbackend:$version" --tag localhost/mlbackend:latest)
podman build --quiet --file packaging/container/Containerfile --platform "linux/$debarch" \
    --build-arg BASE="$base_tag" --build-arg VERSION="$version" "${tags[@]}" "$context" >/dev/null
# The image this build replaced, left without a tag, goes (850 MB each).
podman image prune --force --filter label=org.opencontainers.image.title=mlbackend >/dev/null
mkdir -p dist
image_tar=dist/mlbackend-$version-image-$arch.tar
rm -f "$image_tar"
podman save --quiet --format docker-archive -o "$image_tar" "$tag"
echo "$tag ($(podman image inspect --format '{{.Size}}' "$tag" | awk '{printf "%d MB", $1/1e6}')), saved as $image_tar"

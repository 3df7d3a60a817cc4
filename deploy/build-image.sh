#!/usr/bin/env bash
# Builds the `weir` container image without pulling anything (there need not be a registry):
# `FROM scratch` plus a root filesystem staged here from this machine — the weir binary (release
# build), the shared libraries `ldd` says it needs, /etc/passwd and /etc/group entries for the
# unprivileged user 65532, and /etc/nsswitch.conf.
#
#   deploy/build-image.sh                      # builds target/release/weir, tags weir:local
#   deploy/build-image.sh --tag weir:dev       # another tag
#   deploy/build-image.sh --binary PATH        # package an existing weir binary, skip cargo
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TAG=weir:local
BINARY=

usage() {
    sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
    case "$1" in
        --tag) TAG=${2:?--tag needs a value}; shift 2 ;;
        --binary) BINARY=${2:?--binary needs a path}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "build-image.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done

command -v docker >/dev/null || { echo "build-image.sh: docker is not installed" >&2; exit 1; }
command -v ldd >/dev/null || { echo "build-image.sh: ldd is missing (glibc's libc-bin)" >&2; exit 1; }

if [ -z "$BINARY" ]; then
    echo "==> cargo build --release -p weir" >&2
    (cd "$ROOT" && cargo build --release --locked -p weir --bin weir)
    BINARY="$ROOT/target/release/weir"
fi
[ -x "$BINARY" ] || { echo "build-image.sh: $BINARY is not an executable" >&2; exit 1; }

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/weir-image.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/rootfs/etc" "$STAGE/rootfs/tmp" "$STAGE/data"
chmod 1777 "$STAGE/rootfs/tmp"
cp "$BINARY" "$STAGE/rootfs/weir"
# Debug info stays in target/; the image gets the code only.
if command -v strip >/dev/null; then strip --strip-debug "$STAGE/rootfs/weir"; fi

# The dynamic loader and every library the binary links, at the paths the binary looks for them.
libraries=$(ldd "$BINARY" | awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }')
[ -n "$libraries" ] || { echo "build-image.sh: ldd found no libraries in $BINARY" >&2; exit 1; }
for lib in $libraries; do
    mkdir -p "$STAGE/rootfs$(dirname "$lib")"
    cp -L "$lib" "$STAGE/rootfs$lib"
done
# Host names resolve through /etc/hosts, then DNS (Docker and Kubernetes provide both files).
printf 'hosts: files dns\n' >"$STAGE/rootfs/etc/nsswitch.conf"
printf 'root:x:0:0:root:/:/sbin/nologin\nweir:x:65532:65532:weir:/var/lib/weir:/sbin/nologin\n' \
    >"$STAGE/rootfs/etc/passwd"
printf 'root:x:0:\nweir:x:65532:\n' >"$STAGE/rootfs/etc/group"
cp "$ROOT/deploy/Dockerfile" "$STAGE/Dockerfile"

echo "==> docker build -t $TAG (FROM scratch; $(echo "$libraries" | wc -w) libraries)" >&2
# DOCKER_BUILDKIT=0: the classic builder needs nothing but the engine (BuildKit may want to pull
# its frontend image).
if ! DOCKER_BUILDKIT=0 docker build --quiet --pull=false -t "$TAG" "$STAGE" >"$STAGE/build.log" 2>&1; then
    cat "$STAGE/build.log" >&2
    echo "build-image.sh: docker build failed" >&2
    exit 1
fi
# Prove the image runs before anyone depends on it.
docker run --rm "$TAG" --version
echo "built $TAG" >&2

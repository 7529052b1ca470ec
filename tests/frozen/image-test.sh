#!/usr/bin/env bash
# `make image-test`: the container image (make image) run as moodle-docker and
# Moodle's CI run it, with its defaults (port 5000, default:sshhhh, models in a
# volume), and driven over HTTP by Moodle's client simulator
# (../shared/tools/rest.py flow) with data made by tests/frozen/make_data.py.
# Then: the loud warning about the test password is in its log, it runs as a
# non-root user, a model lands in the volume and a new container on that
# volume predicts with it, and it stops cleanly on SIGTERM (podman stop: exit
# status 0 and "stopped" logged, not killed).
#
#   tests/frozen/image-test.sh IMAGE
# The conditions handed to check() are strings it evaluates, hence:
# shellcheck disable=SC2016
set -euo pipefail
cd "$(dirname "$0")/../.."
image=$1
PYTHON=${PYTHON:-.venv/bin/python}
REST=${REST:-../shared/tools/rest.py}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/packaging/container/containers.conf}

tmp=$(mktemp -d)
container=mlbackend-image-test-$$
volume=mlbackend-image-test-$$
cleanup() {
    podman rm --force --time 0 "$container" >/dev/null 2>&1 || true
    podman volume rm --force "$volume" >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT
# shellcheck source=tests/frozen/check-lib.sh
source tests/frozen/check-lib.sh

"$PYTHON" tests/frozen/make_data.py "$tmp/data" >/dev/null
port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
podman volume create "$volume" >/dev/null
podman run --detach --name "$container" --publish "127.0.0.1:$port:5000" \
    --volume "$volume:/var/lib/mlbackend/models" "$image" >/dev/null
url=http://127.0.0.1:$port
wait_for_server() {
    for _ in $(seq 120); do
        "$PYTHON" -c "import requests, sys; requests.get(sys.argv[1] + '/version', timeout=2)" "$url" \
            2>/dev/null && return
        [ "$(podman inspect --format '{{.State.Running}}' "$container")" = true ] || return
        sleep 1
    done
}
wait_for_server
podman logs "$container" >"$tmp/log" 2>&1
check "the server answers on port 5000 (published as $port)" \
    '"$PYTHON" -c "import requests, sys; r = requests.get(sys.argv[1] + \"/version\", timeout=5); assert r.ok" "$url"'
check "the log warns loudly about the well-known test password" \
    'grep -q "User '"'"'default'"'"' has the well-known test password" "$tmp/log" && grep -q "!!!!!!!!!!" "$tmp/log"'
check "it runs as a non-root user" '[ "$(podman exec "$container" id -u)" = 999 ]'

"$PYTHON" "$REST" flow "$url" default sshhhh "$tmp/data/training.csv" "$tmp/data/prediction.csv" \
    >"$tmp/flow.json" || true
echo "# rest.py flow: $(tail -c 2000 "$tmp/flow.json")"
check "rest.py flow: every step of Moodle's server mode passes" \
    '"$PYTHON" -c "import json, sys; r = json.load(open(sys.argv[1])); sys.exit(0 if r[\"ok\"] else 1)" "$tmp/flow.json"'
# moodle(ENDPOINT, DATASET): Moodle's POST with the test user; prints the JSON answer's status.
moodle() {
    "$PYTHON" - "$url" "$1" "$2" <<'PY'
import hashlib, sys
import requests
url, endpoint, dataset = sys.argv[1:]
with open(dataset, "rb") as f:
    r = requests.post(f"{url}/{endpoint}", auth=("default", "sshhhh"), timeout=600,
                      data={"uniqueid": "imagetest", "dirhash": hashlib.md5(b"imagetest").hexdigest()},
                      files={"dataset": ("dataset.csv", f)})
print(r.json()["status"] if r.ok else f"HTTP {r.status_code}")
PY
}
check "a model trained over HTTP lands in the volume" \
    '[ "$(moodle training "$tmp/data/training.csv")" = 0 ] && [ -n "$(podman exec "$container" find /var/lib/mlbackend/models -name model.npz -print -quit)" ]'

podman stop --time 60 "$container" >/dev/null
podman logs "$container" >"$tmp/log" 2>&1
check "SIGTERM stops it cleanly: exit status 0, 'stopped' logged" \
    '[ "$(podman inspect --format "{{.State.ExitCode}}" "$container")" = 0 ] && grep -q "stopped" "$tmp/log"'

podman rm "$container" >/dev/null
podman run --detach --name "$container" --publish "127.0.0.1:$port:5000" \
    --volume "$volume:/var/lib/mlbackend/models" "$image" >/dev/null
wait_for_server
check "a new container on the same volume predicts with that model" \
    '[ "$(moodle prediction "$tmp/data/prediction.csv")" = 0 ]'

echo "image: $passed passed, $failed failed"
[ "$failed" = 0 ]

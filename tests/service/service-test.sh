#!/usr/bin/env bash
# `make service-test`: the server mode installed as a sysadmin installs it,
# in a Debian container whose PID 1 is systemd (podman --systemd=always;
# tests/service/systemd-image.sh), from the release archive (install.sh
# --systemd) or from the .deb (apt install ./mlbackend_VERSION_amd64.deb):
#
#   tests/service/service-test.sh SUITE archive NEW.tar.gz OLD.tar.gz
#   tests/service/service-test.sh SUITE deb NEW.deb OLD.deb
#   tests/service/service-test.sh SUITE rpm NEW.rpm OLD.rpm
#
# The rpm form runs the .rpm's scriptlets with Debian's rpm (rpm -i
# --nodeps: no RHEL here), and only what differs from the others: install,
# upgrade (its %postun restarts the server), rollback, erase.
# OLD is an older build (tests/service/old-build.py: the same program made
# to be 3.0.99). The checks, in order: install OLD; a configuration error
# (no user) leaves the unit failed with status 78 and the sentence in the
# journal, not restarting; with a user it starts, and Moodle's client
# simulator (../shared/tools/rest.py flow) passes; models are mlbackend's
# with 0750/0640, no secret is in the journal; kill -9 restarts it; NEW is
# installed while the server runs, and that process, training afterwards,
# maps only files of its own version's directory; after a restart NEW
# answers and the models are kept; installing NEW again during a training
# restarts nothing and keeps a drop-in; stopping during a training is clean;
# the service starts on boot; a rollback to OLD; removing keeps the models,
# purging removes them. Prints one line per check and
# "service (SUITE, FORM): N passed, N failed".

# The conditions handed to check() are strings it evaluates, hence:
# shellcheck disable=SC2016,SC2034
set -euo pipefail
cd "$(dirname "$0")/../.."
suite=$1 form=$2 new=$3 old=$4
PYTHON=${PYTHON:-.venv/bin/python}
REST=${REST:-../shared/tools/rest.py}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/packaging/container/containers.conf}
started=$(date +%s)

image=$(bash tests/service/systemd-image.sh "$suite")
tmp=$(mktemp -d)
container=mlbackend-service-$suite-$form-$$
cleanup() {
    podman rm --force --time 0 "$container" >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT
# shellcheck source=tests/frozen/check-lib.sh
source tests/frozen/check-lib.sh
check_detail() { [ ! -s "$tmp/out" ] || sed 's/^/    output: /' "$tmp/out" | tail -n 15; }
note() { echo "# $*"; }

# What goes into the container (read-only, /srv/in): the two versions,
# Moodle-format data, Moodle's client simulator and a client for one request.
mkdir -p "$tmp/in"
cp "$new" "$old" "$REST" "$tmp/in/"
case $form in
    archive) for f in "$new" "$old"; do cp "$f.sha256" "$tmp/in/"; done ;;
    deb|rpm) ;;
    *) echo "service-test.sh: FORM is archive, deb or rpm" >&2; exit 1 ;;
esac
new_file=/srv/in/$(basename "$new") old_file=/srv/in/$(basename "$old")
"$PYTHON" tests/frozen/make_data.py "$tmp/in/data" >/dev/null
# A training long enough to be interrupted (about 20 s here): the rows 600 times over
# (30 MB; a training runs a fixed 24 epochs, whatever the data).
{ head -n 3 "$tmp/in/data/training.csv"
  for _ in $(seq 600); do tail -n +4 "$tmp/in/data/training.csv"; done; } >"$tmp/in/data/long.csv"
cat >"$tmp/in/moodle.py" <<'PY'
"""moodle.py ENDPOINT UNIQUEID DATASET: Moodle's POST as user moodle; prints the answer's status."""
import hashlib, sys
import requests
endpoint, uniqueid, dataset = sys.argv[1:]
try:
    with open(dataset, "rb") as f:
        r = requests.post(f"http://127.0.0.1:5000/{endpoint}", auth=("moodle", "s3cret"), timeout=900,
                          data={"uniqueid": uniqueid, "dirhash": hashlib.md5(uniqueid.encode()).hexdigest()},
                          files={"dataset": ("dataset.csv", f)})
    print(r.json()["status"] if r.ok else f"HTTP {r.status_code}")
except requests.RequestException as exc:
    print(f"no answer: {type(exc).__name__}")
PY
case $form in
    archive) new_version=$(cut -d- -f2 <<<"$(basename "$new")") old_version=$(cut -d- -f2 <<<"$(basename "$old")")
             versions=/opt/mlbackend ;;
    deb) new_version=$(dpkg-deb -f "$new" Version) old_version=$(dpkg-deb -f "$old" Version)
         versions=/usr/lib/mlbackend ;;
    rpm) new_version=$(rpm -qp --qf '%{VERSION}' "$new" 2>/dev/null) old_version=$(rpm -qp --qf '%{VERSION}' "$old" 2>/dev/null)
         versions=/usr/lib/mlbackend ;;
esac

# SYS_PTRACE: root in the container reads the server's /proc/PID/maps (and
# install.sh its /proc/PID/exe), as root on a host does; podman drops it.
podman run --detach --name "$container" --systemd=always --cap-add SYS_PTRACE \
    --volume "$tmp/in:/srv/in:ro" "$image" >/dev/null
ctr() { podman exec "$container" "$@"; }
sh_in() { podman exec "$container" bash -c "$1"; }
# waitfor SECONDS CONDITION: until the bash CONDITION (on this side) holds.
waitfor() {
    local end=$(($(date +%s) + $1))
    until eval "$2"; do
        [ "$(date +%s)" -lt "$end" ] || return 1
        sleep 0.5
    done
}
unit() { ctr systemctl show --property "$1" --value mlbackend.service; }
main_pid() { unit MainPID; }
version_answer() {
    ctr python3 -c 'import requests; print(requests.get("http://127.0.0.1:5000/version", timeout=5).text)' \
        2>/dev/null || echo down
}
moodle() { ctr python3 /srv/in/moodle.py "$@"; }
# maps PID: the distinct files of the versions' directory PID maps, one a line.
maps() { sh_in "grep -o ' $versions/[^ ]*' /proc/$1/maps | sort -u" || true; }
only_own_version() {   # PID VERSION: it maps files of VERSION's directory, and none of another
    maps "$1" >"$tmp/maps"
    grep -q "^ $versions/$2/" "$tmp/maps" && ! grep -v "^ $versions/$2/" "$tmp/maps" | grep -q .
}
run_out() { "$@" >"$tmp/out" 2>&1; }

waitfor 60 '[ "$(ctr systemctl is-system-running 2>/dev/null)" = running ] || [ "$(ctr systemctl is-system-running 2>/dev/null)" = degraded ]' || true
note "$suite: $(ctr cat /etc/debian_version), systemd $(ctr systemctl --version | sed -n '1s/^systemd \([0-9]*\).*/\1/p'), $form"

# --- install OLD
case $form in
    archive)
        rc=0
        run_out ctr bash -c "set -e; (cd /srv/in && sha256sum -c --quiet $(basename "$old").sha256)
            cd /root && tar -xzf $old_file && mlbackend-$old_version-linux-x86_64/packaging/install.sh --systemd" || rc=$?
        check "install.sh --systemd installs $old_version into $versions/$old_version" \
            '[ $rc = 0 ] && [ "$(ctr readlink $versions/current)" = "$old_version" ] && [ "$(ctr mlbackend version)" = "$old_version" ]'
        check "the unit is in /usr/local/lib/systemd/system, /etc/systemd/system is left alone" \
            'ctr test -f /usr/local/lib/systemd/system/mlbackend.service && ! ctr test -e /etc/systemd/system/mlbackend.service'
        check "it says to enable the service once server.env has a user" 'grep -q "enable --now mlbackend" "$tmp/out"'
        check "man mlbackend is indexed (apropos finds it)" 'ctr apropos mlbackend 2>/dev/null | grep -q "^mlbackend"'
        run_out ctr systemctl enable --now mlbackend
        ;;
    deb)
        rc=0
        run_out ctr env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$old_file" || rc=$?
        check "apt install ./$(basename "$old")" '[ $rc = 0 ] && [ "$(ctr mlbackend version)" = "$old_version" ]'
        check "the unit is enabled (Debian's way) but not started: server.env has no user" \
            '[ "$(ctr systemctl is-enabled mlbackend)" = enabled ] && [ "$(unit ActiveState)" = inactive ] && grep -q "needs a user" "$tmp/out"'
        check "system user mlbackend, /var/lib/mlbackend 0750, server.env 0600 (a conffile)" \
            'ctr id mlbackend >/dev/null && [ "$(ctr stat -c "%U %a" /var/lib/mlbackend)" = "mlbackend 750" ] && [ "$(ctr stat -c %a /etc/mlbackend/server.env)" = 600 ] && ctr grep -qx /etc/mlbackend/server.env /var/lib/dpkg/info/mlbackend.conffiles'
        check "man mlbackend is indexed (apropos finds it)" 'ctr apropos mlbackend 2>/dev/null | grep -q "^mlbackend"'
        run_out ctr systemctl start mlbackend
        ;;
    rpm)
        rc=0
        run_out ctr rpm -i --nodeps "$old_file" || rc=$?
        check "rpm -i $(basename "$old"): the scriptlets ran" '[ $rc = 0 ] && [ "$(ctr mlbackend version)" = "$old_version" ] && grep -q "needs a user" "$tmp/out"'
        check "%pre made the system user, %post /var/lib/mlbackend (0750); server.env 0600" \
            'ctr id mlbackend >/dev/null && [ "$(ctr stat -c "%U %a" /var/lib/mlbackend)" = "mlbackend 750" ] && [ "$(ctr stat -c %a /etc/mlbackend/server.env)" = 600 ]'
        note "after %post's preset the unit is $(ctr systemctl is-enabled mlbackend) (Debian's preset; RHEL's disables)"
        run_out ctr systemctl enable --now mlbackend
        ;;
esac

# --- a configuration error fails the unit, visibly, without restarting it
start_rc=0
waitfor 30 '[ "$(unit ActiveState)" = failed ]' || start_rc=$?
ctr journalctl --no-pager -u mlbackend >"$tmp/out" 2>&1 || true
check "no user in server.env: the unit fails (status 78, not restarted) and the journal says why" \
    '[ $start_rc = 0 ] && [ "$(unit ExecMainStatus)" = 78 ] && [ "$(unit NRestarts)" = 0 ] && grep -q "no users" "$tmp/out"'

# --- a user, then Moodle's whole server flow
rc=0
ctr mlbackend passwd moodle </dev/null >"$tmp/out" 2>&1 || rc=$?
check "passwd without a terminal says so and points to --stdin" \
    '[ $rc = 1 ] && grep -q "no terminal" "$tmp/out" && grep -q -- "--stdin" "$tmp/out" && ! grep -q -e Traceback -e Unexpected "$tmp/out"'
entry=$(ctr bash -c 'mlbackend passwd moodle --stdin --iterations 10000 <<<s3cret')
ctr sed -i "s|^MOODLE_MLBACKEND_PYTHON_USERS=.*|MOODLE_MLBACKEND_PYTHON_USERS=$entry|" /etc/mlbackend/server.env
ctr systemctl restart mlbackend
waitfor 60 '[ "$(version_answer)" = "$old_version" ]' || true
check "with a user it starts and answers $old_version" '[ "$(version_answer)" = "$old_version" ] && [ "$(unit ActiveState)" = active ]'
note "systemd-analyze security: $(ctr systemd-analyze security mlbackend.service 2>/dev/null | tail -n 1 | sed 's/^→ //')"
# systemd may skip its mount protections in a container: say whether they hold.
pid=$(main_pid)
if [ "$(ctr readlink "/proc/$pid/ns/mnt")" = "$(ctr readlink /proc/1/ns/mnt)" ]; then
    note "the service shares PID 1's mount namespace: ProtectSystem=, PrivateTmp=, ProtectHome=," \
        "PrivateDevices= are not in force in this container (systemd says nothing about them)"
else
    note "the service has a mount namespace of its own (ProtectSystem=, PrivateTmp= in force)"
fi
ctr python3 /srv/in/rest.py flow http://127.0.0.1:5000 moodle s3cret /srv/in/data/training.csv \
    /srv/in/data/prediction.csv >"$tmp/flow.json" 2>&1 || true
flow=$("$PYTHON" -c 'import json, sys; r = json.loads(open(sys.argv[1]).read().splitlines()[-1]); print(r["passed"], r["total"])' "$tmp/flow.json" 2>/dev/null) || flow="0 0"
note "rest.py flow: ${flow% *}/${flow#* }"
check "rest.py flow: every step of Moodle's server mode passes" '[ "${flow% *}" = "${flow#* }" ] && [ "${flow#* }" -ge 13 ]'
check "a model trained over HTTP" '[ "$(moodle training m1 /srv/in/data/training.csv)" = 0 ]'
check "models are mlbackend's: directories 0750, files 0640" \
    '[ -z "$(ctr find /var/lib/mlbackend/models ! -user mlbackend)" ] && [ -z "$(ctr find /var/lib/mlbackend/models -type d ! -perm 0750)" ] && [ -z "$(ctr find /var/lib/mlbackend/models -type f ! -perm 0640)" ] && [ -n "$(ctr find /var/lib/mlbackend/models -name model.npz)" ]'
ctr journalctl --no-pager -u mlbackend >"$tmp/journal" 2>&1 || true
check "no secret in the journal (neither the password nor its hash)" \
    '! grep -q -e s3cret -e "${entry##*:}" "$tmp/journal" && grep -q " access: " "$tmp/journal"'

# --- kill -9: systemd restarts it
pid=$(main_pid)
ctr kill -9 "$pid"
waitfor 30 '[ "$(main_pid)" != "$pid" ] && [ "$(main_pid)" != 0 ] && [ "$(version_answer)" = "$old_version" ]' || true
check "kill -9: restarted within 30 s (RestartSec=5)" '[ "$(main_pid)" != "$pid" ] && [ "$(version_answer)" = "$old_version" ]'

# --- NEW installed under the running server, which has loaded no TensorFlow yet
pid=$(main_pid)
rc=0
case $form in
    archive)
        run_out ctr bash -c "cd /root && tar -xzf $new_file && mlbackend-$new_version-linux-x86_64/packaging/install.sh --systemd" || rc=$?
        check "install.sh refuses another version without --force, and changes nothing" \
            '[ $rc != 0 ] && grep -q -- --force "$tmp/out" && [ "$(ctr readlink $versions/current)" = "$old_version" ]'
        rc=0
        run_out ctr /root/mlbackend-"$new_version"-linux-x86_64/packaging/install.sh --systemd --force || rc=$?
        check "install.sh --force: $new_version current, $old_version previous, the server not restarted, and told so" \
            '[ $rc = 0 ] && [ "$(ctr readlink $versions/current)" = "$new_version" ] && [ "$(ctr readlink $versions/previous)" = "$old_version" ] && [ "$(main_pid)" = "$pid" ] && grep -q "still runs $old_version" "$tmp/out"'
        ;;
    deb)
        # The sysadmin defers restarts (policy-rc.d), to see the running server meanwhile.
        ctr bash -c 'printf "#!/bin/sh\nexit 101\n" >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
        run_out ctr env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$new_file" || rc=$?
        ctr rm -f /usr/sbin/policy-rc.d
        check "apt install ./$(basename "$new") (restart deferred by policy-rc.d): $new_version installed, $old_version's directory gone" \
            '[ $rc = 0 ] && [ "$(ctr mlbackend version)" = "$new_version" ] && [ "$(main_pid)" = "$pid" ] && ! ctr test -e $versions/$old_version/mlbackend'
        ;;
    rpm)
        run_out ctr rpm -U --nodeps "$new_file" || rc=$?
        waitfor 60 '[ "$(version_answer)" = "$new_version" ]' || true
        check "rpm -U $(basename "$new"): %postun restarted the running server into $new_version" \
            '[ $rc = 0 ] && [ "$(main_pid)" != "$pid" ] && [ "$(version_answer)" = "$new_version" ] && ! ctr test -e $versions/$old_version'
        ;;
esac
[ "$form" = rpm ] || check "the running server still answers $old_version" '[ "$(version_answer)" = "$old_version" ]'
if [ "$form" = archive ]; then
    # It trains now: TensorFlow's libraries load, from its own version's directory.
    check "the running server ($old_version) trains after the upgrade" '[ "$(moodle training m2 /srv/in/data/training.csv)" = 0 ]'
fi
if [ "$form" != rpm ]; then
    note "the running $old_version server maps $(maps "$pid" | wc -l) files of $versions"
    check "the running server maps only files of $versions/$old_version" 'only_own_version "$pid" "$old_version"'
fi
ctr systemctl restart mlbackend
waitfor 60 '[ "$(version_answer)" = "$new_version" ]' || true
check "after systemctl restart: $new_version answers" '[ "$(version_answer)" = "$new_version" ]'
check "the model trained by $old_version predicts with $new_version (models kept)" '[ "$(moodle prediction m1 /srv/in/data/prediction.csv)" = 0 ]'
check "a training with $new_version" '[ "$(moodle training m3 /srv/in/data/training.csv)" = 0 ]'
check "the new server maps only files of $versions/$new_version" 'only_own_version "$(main_pid)" "$new_version"'

# The unit's behaviour, the same from the archive, the .deb and the .rpm:
# checked with the first two.
if [ "$form" != rpm ]; then
# --- a drop-in, then NEW installed again during a training: nothing restarts
ctr mkdir -p /etc/systemd/system/mlbackend.service.d
ctr bash -c 'printf "[Service]\nEnvironment=MLBACKEND_CHECK_DROPIN=kept\n" >/etc/systemd/system/mlbackend.service.d/check.conf'
ctr systemctl daemon-reload
ctr systemctl restart mlbackend
waitfor 60 '[ "$(version_answer)" = "$new_version" ]' || true
pid=$(main_pid)
podman exec --detach "$container" bash -c 'python3 /srv/in/moodle.py training long /srv/in/data/long.csv >/root/long.out 2>&1' >/dev/null
sleep 3
rc=0
case $form in
    archive) run_out ctr /root/mlbackend-"$new_version"-linux-x86_64/packaging/install.sh --systemd || rc=$? ;;
    deb) run_out ctr env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --reinstall "$new_file" || rc=$? ;;
esac
check "installing $new_version again during a training restarts nothing, and gives no hint to enable it" \
    '[ $rc = 0 ] && [ "$(main_pid)" = "$pid" ] && ! grep -q -e "enable --now" -e "needs a user" "$tmp/out"'
waitfor 900 'ctr test -s /root/long.out' || true
check "that training finishes (status 0)" '[ "$(ctr cat /root/long.out)" = 0 ]'
check "the drop-in is kept and in force" \
    'ctr test -f /etc/systemd/system/mlbackend.service.d/check.conf && unit Environment | grep -q MLBACKEND_CHECK_DROPIN=kept'

# --- stopping during a training
podman exec --detach "$container" bash -c 'python3 /srv/in/moodle.py training long2 /srv/in/data/long.csv >/root/long2.out 2>&1' >/dev/null
sleep 5
check "a long training is under way" '! ctr test -s /root/long2.out'
t0=$(date +%s)
ctr systemctl stop mlbackend
stop_s=$(($(date +%s) - t0))
note "systemctl stop during a training took $stop_s s"
ctr journalctl --no-pager -u mlbackend -n 20 >"$tmp/out" 2>&1 || true
check "systemctl stop during a training: a clean stop (SIGTERM, exit 0, 'stopped' logged) well within TimeoutStopSec" \
    '[ "$(unit Result)" = success ] && [ "$(unit ExecMainStatus)" = 0 ] && [ $stop_s -lt 25 ] && grep -q "INFO: stopped" "$tmp/out"'
check "the interrupted training left no model behind" '[ -z "$(ctr find /var/lib/mlbackend/models -path "*long2*" -name model.npz)" ]'

# --- start on boot
podman restart --time 30 "$container" >/dev/null
waitfor 90 '[ "$(version_answer)" = "$new_version" ]' || true
check "after a reboot of the container the service runs (enabled)" '[ "$(version_answer)" = "$new_version" ] && [ "$(unit ActiveState)" = active ]'
fi

# --- rollback
rc=0
case $form in
    archive) run_out ctr /opt/mlbackend/current/packaging/install.sh --rollback --restart || rc=$? ;;
    deb) run_out ctr env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades "$old_file" || rc=$? ;;
    rpm) run_out ctr rpm -U --oldpackage --nodeps "$old_file" || rc=$? ;;
esac
waitfor 60 '[ "$(version_answer)" = "$old_version" ]' || true
check "rollback to $old_version: it runs after the restart" '[ $rc = 0 ] && [ "$(version_answer)" = "$old_version" ] && [ "$(ctr mlbackend version)" = "$old_version" ]'
check "the models are kept: $old_version predicts with the model $new_version trained" \
    '[ "$(moodle prediction m3 /srv/in/data/prediction.csv)" = 0 ]'

# --- remove, then purge
rc=0
case $form in
    archive) run_out ctr /opt/mlbackend/current/packaging/uninstall.sh || rc=$? ;;
    deb) run_out ctr env DEBIAN_FRONTEND=noninteractive apt-get remove -y -q mlbackend || rc=$? ;;
    rpm) run_out ctr rpm -e mlbackend || rc=$? ;;
esac
settings=/etc/mlbackend/server.env
[ "$form" != rpm ] || settings=$settings.rpmsave   # a changed %config(noreplace) file
check "removing it stops the service and keeps the settings and the models" \
    '[ $rc = 0 ] && [ "$(unit ActiveState)" = inactive ] && ! ctr test -e /usr/bin/mlbackend && ! ctr test -e /usr/local/bin/mlbackend && ctr test -f $settings && [ -n "$(ctr find /var/lib/mlbackend/models -name model.npz)" ]'
if [ "$form" = rpm ]; then
    check "rpm -e: the service disabled, the changed server.env kept as server.env.rpmsave" \
        '! ctr systemctl -q is-enabled mlbackend 2>/dev/null && ctr test -f /etc/mlbackend/server.env.rpmsave && ! ctr test -e $versions'
    echo "service ($suite, $form): $passed passed, $failed failed in $(($(date +%s) - started)) s"
    [ "$failed" = 0 ]
    exit
fi
check "the sysadmin's drop-in is left" 'ctr test -f /etc/systemd/system/mlbackend.service.d/check.conf'
rc=0
case $form in
    archive) run_out ctr /root/mlbackend-"$new_version"-linux-x86_64/packaging/uninstall.sh --purge || rc=$? ;;
    deb) run_out ctr env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q mlbackend || rc=$? ;;
esac
check "purging removes the settings and the models" \
    '[ $rc = 0 ] && ! ctr test -e /etc/mlbackend && ! ctr test -e /var/lib/mlbackend && ! ctr test -e $versions'

echo "service ($suite, $form): $passed passed, $failed failed in $(($(date +%s) - started)) s"
[ "$failed" = 0 ]

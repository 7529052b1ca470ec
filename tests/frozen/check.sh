#!/usr/bin/env bash
# The release, checked as a sysadmin and Moodle use it: its contents, the
# frozen program run as Moodle runs it through every module, the server mode,
# and install.sh / uninstall.sh. Needs nothing but bash and coreutils, so that
# it runs on a host without Python too (make dist-chroot-test runs it in a
# minimal Debian).
#
#   tests/frozen/check.sh RELEASEDIR DATADIR
#
# RELEASEDIR is the unpacked archive (mlbackend-VERSION-linux-ARCH/), DATADIR
# what tests/frozen/make_data.py wrote. With MLBACKEND_CHECK_INSTALL=system,
# install.sh installs into the system's own places with --systemd (for a
# throwaway root only); otherwise into a scratch directory. make dist-test
# runs this under `env -i` with a minimal PATH and an empty HOME. Prints one
# line per check and "frozen: N passed, N failed"; exits 1 on any failure.

# The conditions handed to check() are strings it evaluates, hence:
# shellcheck disable=SC2016,SC2034
set -u

R=$(cd "$1" && pwd)
B=$R/mlbackend
DATA=$(cd "$2" && pwd)
VERSION=$(sed -n 's/^version: //p' "$R/BUILD-INFO")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mlbackend-frozen.XXXXXX")
chmod 755 "$WORK"   # the install check runs the program as other users
SERVER_PID=
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
HOME_FILES_BEFORE=$( [ -n "${HOME:-}" ] && [ -d "$HOME" ] && ls -A "$HOME" | wc -l)

passed=0
failed=0
rc=0
last=

# run ARG...: the program's exit status in $rc, its last non-blank stdout line
# in $last, stdout and stderr in $WORK/out and $WORK/err.
run() {
    timeout 900 "$B" "$@" >"$WORK/out" 2>"$WORK/err" </dev/null
    rc=$?
    last=$(grep -v '^[[:space:]]*$' "$WORK/out" | tail -n 1)
}
moodle() {
    local module=$1
    shift
    run -m "moodlemlbackend.$module" "$@"
}

# check NAME CONDITION: CONDITION is a bash expression; on failure show the call.
check() {
    if eval "$2"; then
        passed=$((passed + 1))
        echo "ok - $1"
    else
        failed=$((failed + 1))
        echo "FAILED - $1"
        echo "    condition: $2"
        echo "    exit status: $rc"
        echo "    last stdout line: ${last:0:400}"
        [ -s "$WORK/err" ] && sed 's/^/    stderr: /' "$WORK/err" | head -n 30
    fi
    return 0
}
quiet() { [ ! -s "$WORK/err" ]; }   # no TensorFlow chatter, no warnings
status_is() { [[ $last == "{\"status\": $1,"* ]]; }
data_rows() { echo $(($(wc -l <"$1") - 3)); }
prediction_rows() { grep -o '\["[^"]*", "[0-9]*", "[0-9.e-]*"\]' <<<"$last" | wc -l; }

if [ -n "${QEMU_LD_PREFIX:-}" ]; then   # another machine's program, emulated (dist-test.sh)
    echo "# $R ($VERSION) under qemu-user on $(uname -sm), glibc $(readlink "$QEMU_LD_PREFIX"/lib/*-linux-gnu/libc.so.6 | sed 's/^libc-\(.*\)\.so$/\1/') of $QEMU_LD_PREFIX"
else
    echo "# $R ($VERSION) on $(uname -sm), glibc $(getconf GNU_LIBC_VERSION 2>/dev/null | cut -d' ' -f2)"
fi
[ -n "$VERSION" ] || { echo "FAILED - no version in $R/BUILD-INFO"; exit 1; }

# --- the archive
: >"$WORK/err"
check "the archive holds the program, BUILD-INFO, README.md, LICENSE, the man page, packaging/" \
    '[ -x "$B" ] && [ -s "$R/README.md" ] && [ -s "$R/packaging/BUILD-ROOT.md" ] && grep -q "GNU GENERAL PUBLIC LICENSE" "$R/LICENSE" && grep -q "^\.TH MLBACKEND" "$R/mlbackend.1" && [ -x "$R/packaging/install.sh" ] && [ -x "$R/packaging/uninstall.sh" ] && grep -q "^ExecStart=/opt/mlbackend/current/mlbackend serve" "$R/packaging/mlbackend.service" && grep -q "^MOODLE_MLBACKEND_PYTHON_USERS=" "$R/packaging/server.env"'
last=$(grep "^glibc: " "$R/BUILD-INFO")
check "BUILD-INFO names the glibc floor" '[[ $last =~ ^glibc:\ 2\.[0-9]+\ \(needed\ by ]]'
last=$(cd "$R/_internal" && ls -d keras tensorboard h5py grpc cryptography yaml pytest moto setuptools tensorflow/include 2>/dev/null | tr '\n' ' ')
check "the bundle is trimmed (no Keras, TensorBoard, HDF5, gRPC, test tools, headers)" '[ -z "$last" ]'

M="$WORK/model"
moodle version
check "version answers $VERSION alone" '[ $rc = 0 ] && [ "$(cat "$WORK/out")" = "$VERSION" ] && quiet'
MLBACKEND_REPORTED_VERSION=2.6.5 moodle version
check "MLBACKEND_REPORTED_VERSION changes the version" '[ $rc = 0 ] && [ "$last" = 2.6.5 ]'

moodle training u1 "$M" "$DATA/training.csv"
check "training" '[ $rc = 0 ] && [ "$last" = "{\"status\": 0, \"info\": []}" ] && [ -s "$M/classifier/model.npz" ] && quiet'

moodle prediction u1 "$M" "$DATA/prediction.csv"
check "prediction answers every row" '[ $rc = 0 ] && status_is 0 && [ "$(prediction_rows)" = "$(data_rows "$DATA/prediction.csv")" ] && quiet'

moodle training u1 "$M" "$DATA/training.csv"
check "training again continues from the model" '[ $rc = 0 ] && status_is 0 && quiet'

moodle evaluation u1 "$M" "$DATA/training.csv" 0.7 0.05 3
logdir=$(sed -n 's/.*"dir": "\([^"]*\)".*/\1/p' <<<"$last")
check "evaluation answers, exit status = status" '[ -n "$last" ] && status_is $rc && [[ $last == *"\"auc\": "* ]] && quiet'
check "evaluation logs: info.log, metrics.json, roc-curve.png, TensorBoard events" \
    '[ -s "$logdir/info.log" ] && [ -s "$logdir/metrics.json" ] && [ -s "$logdir/roc-curve.png" ] && [ -n "$(find "$logdir/tensor" -name "events.out.tfevents.*" -size +0)" ]'

moodle evaluation u1 "$WORK/eval" "$DATA/training.csv" 0.7 0.05 10 "$M"
check "evaluation of the trained model" 'status_is $rc && [[ $last == *"\"accuracy\": "* ]] && quiet'

moodle prediction u1 "$M" "$DATA/prediction.csv"
prediction=$last
moodle export u1 "$M" "$WORK/exported"
check "export prints the directory" '[ $rc = 0 ] && [ "$last" = "$WORK/exported" ] && [ -s "$WORK/exported/model.npz" ] && quiet'

moodle import u2 "$WORK/imported" "$WORK/exported"
check "import answers Ok" '[ $rc = 0 ] && [ "$last" = Ok ] && quiet'
moodle prediction u2 "$WORK/imported" "$DATA/prediction.csv"
check "the imported model predicts as the exported one" '[ $rc = 0 ] && [ "$last" = "$prediction" ]'

moodle prediction u3 "$WORK/untrained" "$DATA/prediction.csv"
check "prediction without a model: status 2" '[ $rc = 2 ] && status_is 2'

moodle training u1 "$M"
check "bad input: missing arguments, status 1" '[ $rc = 1 ] && status_is 1 && [[ $last == *"Missing arguments"* ]]'

before=$(cksum <"$M/classifier/model.npz")
moodle training u1 "$M" "$DATA/bad-training.csv"
check "bad input: a word in the dataset, status 1 naming the line" \
    '[ $rc = 1 ] && status_is 1 && [[ $last == *"Line "*"abc"* ]] && [ "$(cksum <"$M/classifier/model.npz")" = "$before" ]'

mkdir -p "$WORK/legacy"
cp -R "$DATA/legacy3/classifier" "$WORK/legacy/"
moodle prediction u4 "$WORK/legacy" "$DATA/prediction.csv"
check "a moodlemlbackend 3.x model predicts as unfrozen (TensorFlow checkpoint reader)" \
    '[ $rc = 0 ] && [ "$last" = "$(cat "$DATA/legacy3-prediction.txt")" ] && [ -d "$WORK/legacy/classifier/legacy-moodlemlbackend" ] && ! grep -v "^mlbackend: WARNING: converted the moodlemlbackend 3.x model" "$WORK/err" | grep -q .'

timeout 60 "$B" passwd moodle --stdin --iterations 10000 <<<"s3cret" >"$WORK/out" 2>"$WORK/err"
rc=$?
last=$(tail -n 1 "$WORK/out")
check "passwd makes a PBKDF2 entry" '[ $rc = 0 ] && [[ $last == moodle:pbkdf2_sha256:10000:* ]]'
users=$last

# --- server mode
# http METHOD PATH [AUTH] [BODYFILE] [CONTENT-TYPE]: HTTP/1.0 over bash's
# /dev/tcp to the server on $port; the status code in $rc, the body in
# $WORK/body and its last line in $last.
http() {
    local head="$1 $2 HTTP/1.0\r\nHost: 127.0.0.1\r\n"
    [ -n "${3:-}" ] && head+="Authorization: Basic $(printf %s "$3" | base64 -w0)\r\n"
    [ -n "${4:-}" ] && head+="Content-Type: $5\r\nContent-Length: $(wc -c <"$4")\r\n"
    exec 3<>"/dev/tcp/127.0.0.1/$port" || { rc=0; return; }
    { printf '%b\r\n' "$head"; [ -n "${4:-}" ] && cat "$4"; } >&3
    cat <&3 >"$WORK/response"
    exec 3<&-
    rc=$(head -n 1 "$WORK/response" | cut -d' ' -f2)
    sed '1,/^\r$/d' "$WORK/response" >"$WORK/body"
    last=$(tail -n 1 "$WORK/body")
}
# form FILE NAME=VALUE... FILEFIELD=@PATH: a multipart/form-data body in FILE.
form() {
    local out=$1 field
    shift
    : >"$out"
    for field in "$@"; do
        printf -- '--frozencheck\r\nContent-Disposition: form-data; name="%s"' "${field%%=*}" >>"$out"
        if [ "${field#*=@}" != "$field" ]; then
            printf '; filename="%s"\r\nContent-Type: text/csv\r\n\r\n' "$(basename "${field#*=@}")" >>"$out"
            cat "${field#*=@}" >>"$out"
        else
            printf '\r\n\r\n%s' "${field#*=}" >>"$out"
        fi
        printf '\r\n' >>"$out"
    done
    printf -- '--frozencheck--\r\n' >>"$out"
}
multipart="multipart/form-data; boundary=frozencheck"

# serve_check WHAT VAR=VALUE...: `mlbackend serve` with the storage these
# variables choose, on a free port it picks and logs; Moodle's requests to it.
serve_check() {
    local what=$1
    shift
    : >"$WORK/serve.err"   # before the server starts: no earlier server's port in it
    env MOODLE_MLBACKEND_PYTHON_USERS="$users" "$@" \
        "$B" serve --host 127.0.0.1 --port 0 >"$WORK/serve.out" 2>"$WORK/serve.err" </dev/null &
    SERVER_PID=$!
    port=
    for _ in $(seq 600); do
        port=$(sed -n 's|.*serving Moodle on http://127\.0\.0\.1:\([0-9]*\)/.*|\1|p' "$WORK/serve.err")
        [ -n "$port" ] || ! kill -0 "$SERVER_PID" 2>/dev/null && break
        sleep 0.1
    done
    rc=
    last=
    cp "$WORK/serve.err" "$WORK/err"
    check "serve ($what) listens on a loopback port" '[ -n "$port" ]'
    if [ -n "$port" ]; then
        : >"$WORK/err"
        http GET /version
        check "serve ($what) answers /version" '[ "$rc" = 200 ] && [ "$(cat "$WORK/body")" = "$VERSION" ]'
        form "$WORK/form" uniqueid=s1 dirhash=h1 "dataset=@$DATA/training.csv"
        http POST /training "" "$WORK/form" "$multipart"
        check "serve ($what) refuses a request without a user: 401" '[ "$rc" = 401 ]'
        http POST /training "moodle:s3cret" "$WORK/form" "$multipart"
        check "serve ($what) trains" '[ "$rc" = 200 ] && [ "$last" = "{\"status\": 0, \"info\": []}" ]'
        form "$WORK/form" uniqueid=s1 dirhash=h1 "dataset=@$DATA/prediction.csv"
        http POST /prediction "moodle:s3cret" "$WORK/form" "$multipart"
        check "serve ($what) predicts every row" '[ "$rc" = 200 ] && status_is 0 && [ "$(prediction_rows)" = "$(data_rows "$DATA/prediction.csv")" ]'
    fi
    kill -TERM "$SERVER_PID" 2>/dev/null
    timeout 60 tail --pid="$SERVER_PID" -f /dev/null
    wait "$SERVER_PID"
    rc=$?
    SERVER_PID=
    cp "$WORK/serve.err" "$WORK/err"
    last=$(tail -n 1 "$WORK/serve.err")
    check "serve ($what) stops on SIGTERM with status 0, TensorFlow silent" \
        '[ $rc = 0 ] && ! grep -v -e " access: " -e " mlbackend[a-z0-9._]* INFO: " "$WORK/serve.err" | grep -q .'
}

serve_check "models in a directory" MOODLE_MLBACKEND_PYTHON_DIR="$WORK/server"
# MLBACKEND_CHECK_S3=ENDPOINT/BUCKET: an S3 server with that bucket (make
# dist-test starts moto's): the bundle's boto3, with the AWS models it keeps.
if [ -n "${MLBACKEND_CHECK_S3:-}" ]; then
    serve_check "models in S3" MOODLE_MLBACKEND_PYTHON_S3_BUCKET_NAME="${MLBACKEND_CHECK_S3##*/}" \
        AWS_ENDPOINT_URL="${MLBACKEND_CHECK_S3%/*}" AWS_ACCESS_KEY_ID=testing \
        AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
fi

# --- install.sh and uninstall.sh
if [ "${MLBACKEND_CHECK_INSTALL:-}" = system ]; then
    prefix=/opt/mlbackend bindir=/usr/local/bin mandir=/usr/local/share/man
    install_options=(--systemd)
    uninstall_options=(--purge)
else
    prefix=$WORK/root/opt/mlbackend bindir=$WORK/root/bin mandir=$WORK/root/man
    install_options=(--prefix "$prefix" --bindir "$bindir" --mandir "$mandir")
    uninstall_options=("${install_options[@]}")
fi
# script NAME ARG...: run packaging/NAME from the release; its last stderr line in $last.
script() {
    local name=$1
    shift
    sh "$R/packaging/$name" "$@" >"$WORK/out" 2>"$WORK/err" </dev/null
    rc=$?
    last=$(tail -n 1 "$WORK/err")
}
installed_version() { sed -n 's/^version: //p' "$prefix/current/BUILD-INFO" 2>/dev/null; }

script install.sh "${install_options[@]}"
check "install.sh installs into PREFIX/VERSION, linked as PREFIX/current" \
    '[ $rc = 0 ] && [ "$(installed_version)" = "$VERSION" ] && [ "$(readlink "$prefix/current")" = "$VERSION" ] && [ -s "$mandir/man1/mlbackend.1" ]'
"$bindir/mlbackend" version >"$WORK/out" 2>"$WORK/err"
rc=$?
last=$(cat "$WORK/out")
check "the linked program runs" '[ $rc = 0 ] && [ "$last" = "$VERSION" ]'
if [ "${MLBACKEND_CHECK_INSTALL:-}" = system ]; then
    last=$(grep "^ExecStart=" /usr/local/lib/systemd/system/mlbackend.service)
    check "install.sh --systemd: user, server.env (0600) and unit (in /usr/local/lib, not /etc)" \
        'id mlbackend >/dev/null && [ "$(stat -c %a /etc/mlbackend/server.env)" = 600 ] && [ "$last" = "ExecStart=/opt/mlbackend/current/mlbackend serve \$MLBACKEND_SERVE_OPTIONS" ] && [ ! -e /etc/systemd/system/mlbackend.service ]'
fi
if [ "$(id -u)" = 0 ] && id www-data >/dev/null 2>&1 && [ -x /usr/sbin/runuser ]; then
    # As Moodle calls it: the web server's user, no HOME, a directory of its own.
    mkdir "$WORK/moodledata"
    cp "$DATA/training.csv" "$DATA/prediction.csv" "$WORK/moodledata/"
    chown -R www-data "$WORK/moodledata"
    # QEMU_LD_PREFIX: another machine's program keeps its emulated loader (dist-test.sh).
    as_www() { /usr/sbin/runuser -u www-data -- env -i PATH=/usr/bin:/bin \
                   ${QEMU_LD_PREFIX:+QEMU_LD_PREFIX="$QEMU_LD_PREFIX"} "$bindir/mlbackend" "$@" \
                   >"$WORK/out" 2>"$WORK/err" </dev/null; rc=$?; last=$(tail -n 1 "$WORK/out"); }
    as_www -m moodlemlbackend.training u5 "$WORK/moodledata/model" "$WORK/moodledata/training.csv"
    check "the web server's user trains with the installed program" '[ $rc = 0 ] && status_is 0 && quiet'
    as_www -m moodlemlbackend.prediction u5 "$WORK/moodledata/model" "$WORK/moodledata/prediction.csv"
    check "the web server's user predicts with it" '[ $rc = 0 ] && [ "$(prediction_rows)" = "$(data_rows "$DATA/prediction.csv")" ] && quiet'
fi
script install.sh "${install_options[@]}"
check "install.sh again, same version: fine" '[ $rc = 0 ] && [ "$(installed_version)" = "$VERSION" ]'
sed -i "s/^version: .*/version: 0.0.1/" "$prefix/current/BUILD-INFO"
script install.sh "${install_options[@]}"
check "install.sh refuses to replace another version" '[ $rc != 0 ] && [[ $last == *"--force"* ]] && [ "$(installed_version)" = 0.0.1 ]'
script install.sh "${install_options[@]}" --force
check "install.sh --force replaces it" '[ $rc = 0 ] && [ "$(installed_version)" = "$VERSION" ]'
script install.sh --rollback --prefix "$prefix"
check "install.sh --rollback refuses when there is no previous version" \
    '[ $rc != 0 ] && [[ $last == *"no previous version"* ]] && [ "$(installed_version)" = "$VERSION" ]'
script uninstall.sh "${uninstall_options[@]}"
check "uninstall.sh removes the program, the link and the man page" \
    '[ $rc = 0 ] && [ ! -e "$prefix" ] && [ ! -L "$bindir/mlbackend" ] && [ ! -e "$mandir/man1/mlbackend.1" ]'
if [ "${MLBACKEND_CHECK_INSTALL:-}" = system ]; then
    check "uninstall.sh --purge removes the service, its settings and user" \
        '[ ! -e /usr/local/lib/systemd/system/mlbackend.service ] && [ ! -e /etc/mlbackend ] && ! id mlbackend >/dev/null 2>&1'
fi

if [ -n "$HOME_FILES_BEFORE" ]; then
    rc=
    last=$(ls -A "$HOME" | head -n 3 | tr '\n' ' ')
    : >"$WORK/err"
    check "nothing was written to HOME" '[ "$(ls -A "$HOME" | wc -l)" = "$HOME_FILES_BEFORE" ]'
fi

echo "frozen: $passed passed, $failed failed"
[ "$failed" = 0 ]

#!/usr/bin/env bash
# Part of `make cpu-test`: the frozen program on CPUs emulated by qemu-user.
#
#   tests/frozen/qemu-check.sh dist/mlbackend-VERSION-linux-ARCH.tar.gz
#
# x86_64: CPUs it cannot fully use, `Nehalem` (x86-64-v2 without AVX: no
# TensorFlow) and `kvm64` (below x86-64-v2: no NumPy). Every call must
# answer, never die: training and evaluation say the CPU lacks AVX on
# Nehalem, and everything but `version` says it lacks x86-64-v2 on kvm64,
# while prediction, export and import keep working on Nehalem.
# tests/test_cpu.py does the same for the unfrozen program.
#
# aarch64 (run on an x86-64 machine): the oldest and the common ARM cores,
# `cortex-a53` (ARMv8.0 without the ARMv8.1 atomics; Raspberry Pi 3; qemu's
# `cortex-a72`, the Pi 4's, has the same features), `neoverse-n1` (ARMv8.2:
# AWS Graviton 2, Ampere Altra; qemu's `cortex-a76`, the Pi 5's, has the
# same features) and `max` (every feature qemu has: SVE, SVE2...) train,
# evaluate and predict, with the same answers as on `max`. QEMU_ARM_CPUS
# (default "cortex-a53 neoverse-n1") chooses the cores besides `max`. The emulated CPU
# is chosen with QEMU_CPU (binfmt_misc), with the loader and glibc of a
# bullseye arm64 root (QEMU_LD_PREFIX); the check first proves that QEMU_CPU
# is obeyed: the kernel's feature bits (AT_HWCAP) differ between the cores.
#
# x86_64:
# PyInstaller's launcher sets LD_LIBRARY_PATH and re-executes itself, which
# qemu-user does not follow (the new process would run on the real CPU). So
# the emulated process is started as that second process: the variables the
# launcher would set are passed with qemu's -E. The check proves the emulated
# CPU is the one asked: this machine has AVX (checked first), so an answer
# that says the CPU lacks AVX can only come from the emulated one.
# TensorFlow never runs under emulation: the model is trained natively.
set -euo pipefail
cd "$(dirname "$0")/../.."
archive=$1
PYTHON=${PYTHON:-.venv/bin/python}
name=$(basename "$archive" .tar.gz)
arch=${name##*-}
case $arch in
    x86_64)
        QEMU=${QEMU:-qemu-x86_64}
        command -v "$QEMU" >/dev/null || { echo "qemu-check.sh: $QEMU missing (Debian: qemu-user)" >&2; exit 1; }
        "$PYTHON" -c 'from mlbackend import cpu; import sys; sys.exit(bool(cpu.missing_features(cpu.X86_64_V2 + cpu.TENSORFLOW)))' \
            || { echo "qemu-check.sh: this machine lacks AVX or x86-64-v2, so the check would prove nothing" >&2; exit 1; }
        ;;
    aarch64)
        [ "$(uname -m)" != aarch64 ] || { echo "qemu-check.sh: the aarch64 check runs emulated on another machine" >&2; exit 1; }
        arm_root=$(bash tests/frozen/test-root.sh bullseye aarch64)
        ;;
    *) echo "qemu-check.sh: no CPU check for $arch" >&2; exit 1 ;;
esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$archive" -C "$tmp"
"$PYTHON" tests/frozen/make_data.py "$tmp/data" >/dev/null
mkdir "$tmp/home"
R=$tmp/$name
B=$R/mlbackend
D=$tmp/data
M=$tmp/model
VERSION=$(sed -n 's/^version: //p' "$R/BUILD-INFO")

passed=0
failed=0
rc=0
last=
# native ARG... / on CPU ARG...: the program's status in $rc, its last stdout line in $last.
native() {
    env -i PATH=/usr/bin:/bin HOME="$tmp/home" timeout 900 "$B" "$@" >"$tmp/out" 2>"$tmp/err" </dev/null
    rc=$?
    last=$(grep -v '^[[:space:]]*$' "$tmp/out" | tail -n 1)
}
on() {
    local cpu=$1
    shift
    if [ "$arch" = aarch64 ]; then   # binfmt_misc's qemu, which follows the re-execution
        env -i PATH=/usr/bin:/bin HOME="$tmp/home" QEMU_CPU="$cpu" QEMU_LD_PREFIX="$arm_root" \
            timeout 900 "$B" "$@" >"$tmp/out" 2>"$tmp/err" </dev/null
    else
        env -i PATH=/usr/bin:/bin HOME="$tmp/home" timeout 900 "$QEMU" -cpu "$cpu" \
            -E _PYI_ARCHIVE_FILE="$B" -E _PYI_PARENT_PROCESS_LEVEL=-1 \
            -E _PYI_LINUX_PROCESS_NAME=mlbackend -E LD_LIBRARY_PATH="$R/_internal" \
            "$B" "$@" >"$tmp/out" 2>"$tmp/err" </dev/null
    fi
    rc=$?
    last=$(grep -v '^[[:space:]]*$' "$tmp/out" | tail -n 1)
}
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
        grep -v "TCG doesn't support" "$tmp/err" | sed 's/^/    stderr: /' | head -n 20
    fi
    return 0
}
lacks() { [ "$rc" = 1 ] && [[ $last == "{\"status\": 1, \"info\": [\"This computer's CPU lacks $1"* ]]; }
set +e

# The same predictions: classes equal, probabilities within 1e-5 (SSE kernels
# round differently from AVX ones in the last digit, NEON ones from SVE ones).
same_predictions() {
    "$PYTHON" -c 'import json, sys
a, b = (json.loads(x)["predictions"] for x in sys.argv[1:3])
ok = [r[:2] for r in a] == [r[:2] for r in b] and all(
    abs(float(x[2]) - float(y[2])) < 1e-5 for x, y in zip(a, b))
sys.exit(0 if ok else 1)' "$1" "$2"
}

# checks_ARCH: the checks of the archive's machine.
checks_aarch64() {
    # AT_HWCAP of the emulated CPU, as the loader shows it (LD_SHOW_AUXV).
    hwcap() {
        env -i QEMU_CPU="$1" QEMU_LD_PREFIX="$arm_root" LD_SHOW_AUXV=1 "$arm_root/bin/true" \
            | sed -n 's/^AT_HWCAP: *//p'
    }
    atomics() { [ $((0x$(hwcap "$1") >> 8 & 1)) = 1 ]; }   # HWCAP_ATOMICS (LSE), ARMv8.1
    sve() { [ $((0x$(hwcap "$1") >> 22 & 1)) = 1 ]; }      # HWCAP_SVE
    check "QEMU_CPU is obeyed: cortex-a53 lacks the ARMv8.1 atomics, neoverse-n1 has them, max has SVE" \
        '! atomics cortex-a53 && atomics neoverse-n1 && ! sve neoverse-n1 && sve max'

    echo "# max: every feature qemu emulates"
    on max -m moodlemlbackend.training u1 "$M" "$D/training.csv"
    check "training" '[ $rc = 0 ] && [[ $last == "{\"status\": 0,"* ]]'
    on max -m moodlemlbackend.prediction u1 "$M" "$D/prediction.csv"
    prediction=$last
    check "prediction" '[ $rc = 0 ] && [[ $last == "{\"status\": 0,"* ]]'
    # qemu's cortex-a72 has cortex-a53's features and cortex-a76 neoverse-n1's
    # (the same AT_HWCAP: 8fb and 119ffb); all five passed this check once
    # (docs/release.md), so CI runs one of each pair.
    for cpu in ${QEMU_ARM_CPUS:-cortex-a53 neoverse-n1}; do
        echo "# $cpu (AT_HWCAP $(hwcap $cpu))"
        on "$cpu" -m moodlemlbackend.training u1 "$tmp/model-$cpu" "$D/training.csv"
        check "training" '[ $rc = 0 ] && [[ $last == "{\"status\": 0,"* ]]'
        on "$cpu" -m moodlemlbackend.evaluation u1 "$tmp/eval-$cpu" "$D/training.csv" 0.7 0.05 1
        check "evaluation answers, exit status = status" '[[ $last == "{\"status\": $rc,"* ]] && [[ $last == *"\"auc\": "* ]]'
        on "$cpu" -m moodlemlbackend.prediction u1 "$M" "$D/prediction.csv"
        check "prediction with max's model, the same answer as on max" '[ $rc = 0 ] && same_predictions "$last" "$prediction"'
    done
}

checks_x86_64() {
    native -m moodlemlbackend.training u1 "$M" "$D/training.csv"
    check "natively: training" '[ $rc = 0 ]'
    native -m moodlemlbackend.prediction u1 "$M" "$D/prediction.csv"
    prediction=$last
    check "natively: prediction" '[ $rc = 0 ] && [[ $last == "{\"status\": 0,"* ]]'

    echo "# Nehalem: x86-64-v2, no AVX"
    on Nehalem -m moodlemlbackend.training u1 "$M" "$D/training.csv"
    check "training answers that the CPU lacks AVX, which TensorFlow needs, and what to do" \
        'lacks "AVX, which TensorFlow needs" && [[ $last == *"'"'host'"'"*"server mode"* ]]'
    on Nehalem -m moodlemlbackend.evaluation u1 "$tmp/eval" "$D/training.csv" 0.7 0.05 1
    check "evaluation answers the same" 'lacks "AVX, which TensorFlow needs"'
    on Nehalem -m moodlemlbackend.prediction u1 "$M" "$D/prediction.csv"
    check "prediction works, the same answer as natively" '[ $rc = 0 ] && same_predictions "$last" "$prediction"'
    on Nehalem -m moodlemlbackend.export u1 "$M" "$tmp/exported"
    check "export works" '[ $rc = 0 ] && [ "$last" = "$tmp/exported" ]'
    on Nehalem -m moodlemlbackend.import u2 "$tmp/imported" "$tmp/exported"
    check "import works" '[ $rc = 0 ] && [ "$last" = Ok ]'
    on Nehalem -m moodlemlbackend.version
    check "version works" '[ $rc = 0 ] && [ "$last" = "$VERSION" ]'

    echo "# kvm64: below x86-64-v2"
    for call in "prediction u1 $M $D/prediction.csv" "training u1 $M $D/training.csv" \
            "export u1 $M $tmp/exported2" "import u3 $tmp/imported3 $tmp/exported"; do
        # shellcheck disable=SC2086 # the words of $call are the arguments
        on kvm64 -m moodlemlbackend.$call
        check "${call%% *} answers that the CPU lacks SSE4.2 and POPCNT, which NumPy needs" \
            'lacks "SSSE3, SSE4.1, SSE4.2, POPCNT and LAHF-SAHF (x86-64-v2), which NumPy needs"'
    done
    on kvm64 serve --host 127.0.0.1 --port 0
    check "the server refuses to start, saying so" 'lacks "SSSE3"'
    on kvm64 -m moodlemlbackend.version
    check "version works" '[ $rc = 0 ] && [ "$last" = "$VERSION" ]'
}

"checks_$arch"

echo "qemu: $passed passed, $failed failed"
[ "$failed" = 0 ]

# Sourced by the release's checks that run on the build machine
# (image-test.sh, tests/service/*.sh): `check NAME CONDITION` evaluates the
# bash CONDITION, prints "ok - NAME" or "FAILED - NAME" with the condition
# (and whatever the caller's check_detail function prints, if it has one),
# and counts them in $passed and $failed for the caller's closing line.
# (check.sh has its own, which also shows the program's output.)
# shellcheck shell=bash
passed=0
failed=0
check() {
    if eval "$2"; then
        passed=$((passed + 1)); echo "ok - $1"
    else
        failed=$((failed + 1)); echo "FAILED - $1"; echo "    condition: $2"
        if declare -F check_detail >/dev/null; then check_detail; fi
    fi
}

#!/usr/bin/env bash
# The fault soak: three latchkey replicas on a throwaway PostgreSQL cluster
# (initdb + pg_ctl on a free loopback port), AWS KMS envelope mode against the
# emulator, rotation every 10 s, token load over every replica and strict
# caching verifiers (no leeway, JWKS held exactly max-age, no refetch on an
# unknown kid). During the run: SIGKILL of a replica at a transition's second
# and restart, one replica's KMS cut for 15 s (three leads), one replica 1 s
# fast and later 6 s fast (past the 2 s allowance: it must stop signing), and a
# rolling restart of every replica. It prints one line:
#
#   rotations N, tokens N, verifications N, failures 0, unpublished-signed 0, ...
#
# and fails unless there were 0 failures, 0 tokens signed by an unpublished
# key, exactly one active key per algorithm at every sample, and every replica
# serving the same JWKS at the end.
#
#   scripts/fault-soak.sh [SECONDS]     default 90 (at least 60)
#
# Needs PostgreSQL's server binaries (/usr/lib/postgresql/*/bin: initdb, pg_ctl;
# as root they run as the postgres user) and Python 3 for the KMS emulator
# (installed into a venv by scripts/kms-emulator.sh). Never touches a running
# PostgreSQL: the cluster lives in a temporary directory and is removed after.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${1:-90}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/latchkey/target}"

log="$(mktemp)"
started_kms=""
cleanup() {
    [[ -n "$started_kms" ]] && scripts/kms-emulator.sh stop >/dev/null 2>&1 || true
    rm -f "$log"
}
trap cleanup EXIT
# An emulator already given (as .ci/run does) is used; otherwise one is started
# (a venv is made on first use) and stopped afterwards.
if [[ -z "${LATCHKEY_TEST_KMS_ENDPOINT:-}" ]]; then
    scripts/kms-emulator.sh status >/dev/null 2>&1 || started_kms=1
    eval "$(scripts/kms-emulator.sh start)"
fi
export LATCHKEY_TEST_KMS_ENDPOINT

LATCHKEY_TEST_SOAK_SECS="$SECS" cargo test --test it soak::fault_soak -- --nocapture --test-threads 1 2>&1 |
    tee "$log" | grep -E '^(rotations |soak: |thread )' || true
grep -q '^test result: ok. 1 passed' "$log" || {
    echo "fault soak FAILED" >&2
    tail -40 "$log" >&2
    exit 1
}
grep -q '^rotations .*failures 0,' "$log"

#!/usr/bin/env bash
# A local AWS KMS emulator (moto's server) for latchkey's KMS tests.
#
#   scripts/kms-emulator.sh start [PORT]   install moto into a venv if needed, start it,
#                                          print `export LATCHKEY_TEST_KMS_ENDPOINT=...`
#   scripts/kms-emulator.sh stop           stop the emulator started by `start`
#   scripts/kms-emulator.sh status         say whether it runs (exit 0) or not (exit 1)
#
# Only the export line goes to stdout, so `eval "$(scripts/kms-emulator.sh start)"`
# sets the variable in the calling shell. Progress and errors go to stderr.
#
# Environment:
#   LATCHKEY_KMS_VENV   the Python venv to use (default ~/.cache/latchkey/kms-venv)
#   LATCHKEY_KMS_PORT   default port when none is given (default 5566)
#
# moto keeps every key in memory: stopping the emulator forgets them all.
set -euo pipefail

VENV="${LATCHKEY_KMS_VENV:-$HOME/.cache/latchkey/kms-venv}"
# Run state lives next to the venv, so recreating a broken venv never loses it.
STATE_DIR="$(dirname "$VENV")"
STATE_NAME="$(basename "$VENV")"
PIDFILE="$STATE_DIR/$STATE_NAME.pid"
PORTFILE="$STATE_DIR/$STATE_NAME.port"
LOGFILE="$STATE_DIR/$STATE_NAME.log"
MOTO_SPEC='moto[server]>=5,<6'
DEFAULT_PORT="${LATCHKEY_KMS_PORT:-5566}"
PYTHON="${PYTHON:-python3}"

say() { printf 'kms-emulator: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

usage() {
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# The pid of the running emulator, if the pidfile names a live moto_server.
running_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # Guard against a recycled pid belonging to something else.
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q moto_server || return 1
    printf '%s\n' "$pid"
}

print_export() {
    printf 'export LATCHKEY_TEST_KMS_ENDPOINT=http://127.0.0.1:%s\n' "$1"
}

venv_ok() {
    [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -m pip --version >/dev/null 2>&1
}

moto_ok() {
    [[ -x "$VENV/bin/moto_server" ]] &&
        "$VENV/bin/python" -c 'import sys, moto, moto.server; sys.exit(0 if moto.__version__.startswith("5.") else 1)' \
            >/dev/null 2>&1
}

ensure_venv() {
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found; install Python 3 (Debian: apt-get install python3 python3-venv)"
    if ! venv_ok; then
        if [[ -e "$VENV" ]]; then
            say "recreating incomplete venv at $VENV"
            rm -rf -- "$VENV"
        fi
        say "creating venv at $VENV"
        mkdir -p "$STATE_DIR"
        if ! "$PYTHON" -m venv "$VENV" >&2 || ! venv_ok; then
            rm -rf -- "$VENV"
            die "could not create a Python venv with pip. On Debian/Ubuntu install the venv module: apt-get install python3-venv (or python3.X-venv matching 'python3 --version'), then run this again"
        fi
    fi
    if ! moto_ok; then
        say "installing $MOTO_SPEC into $VENV (this takes a minute the first time)"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$MOTO_SPEC" >&2 ||
            die "pip could not install $MOTO_SPEC (network or proxy?)"
        moto_ok || die "moto was installed but moto_server does not start; see pip's output above"
    fi
}

# Succeeds once the server answers a real KMS call (ListKeys).
kms_answers() {
    "$VENV/bin/python" - "$1" <<'PY' >/dev/null 2>&1
import sys, urllib.request
req = urllib.request.Request(
    f"http://127.0.0.1:{sys.argv[1]}/",
    data=b"{}",
    method="POST",
    headers={
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": "TrentService.ListKeys",
        # moto routes by the service in the credential scope; it checks no signature.
        "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/kms/aws4_request, "
        "SignedHeaders=host, Signature=0",
    },
)
with urllib.request.urlopen(req, timeout=2) as resp:
    sys.exit(0 if resp.status == 200 and b"Keys" in resp.read() else 1)
PY
}

port_in_use() {
    "$VENV/bin/python" - "$1" <<'PY' >/dev/null 2>&1
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)
PY
}

cmd_start() {
    local port="${1:-$DEFAULT_PORT}"
    [[ "$port" =~ ^[0-9]+$ ]] && ((port > 0 && port < 65536)) || die "invalid port: $port"

    local pid
    if pid="$(running_pid)"; then
        local current
        current="$(cat "$PORTFILE" 2>/dev/null || echo "$port")"
        if [[ "$current" != "$port" && $# -gt 0 ]]; then
            say "already running (pid $pid) on port $current, not $port; stop it first to change ports"
        else
            say "already running (pid $pid) on port $current"
        fi
        print_export "$current"
        return 0
    fi
    rm -f -- "$PIDFILE" "$PORTFILE"

    ensure_venv
    if port_in_use "$port"; then
        die "port $port is already in use by another program; pass another: $0 start PORT"
    fi

    say "starting moto_server on 127.0.0.1:$port (log: $LOGFILE)"
    # setsid detaches it from this shell's session and signals (Ctrl-C in the terminal).
    setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$LOGFILE" 2>&1 </dev/null &
    pid=$!
    printf '%s\n' "$pid" >"$PIDFILE"
    printf '%s\n' "$port" >"$PORTFILE"

    local i
    for ((i = 0; i < 150; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f -- "$PIDFILE" "$PORTFILE"
            say "moto_server exited during start-up; last lines of $LOGFILE:"
            tail -n 20 "$LOGFILE" >&2 || true
            exit 1
        fi
        if kms_answers "$port"; then
            say "ready (pid $pid)"
            print_export "$port"
            return 0
        fi
        sleep 0.2
    done
    kill "$pid" 2>/dev/null || true
    rm -f -- "$PIDFILE" "$PORTFILE"
    die "moto_server did not answer on port $port within 30 s; see $LOGFILE"
}

cmd_stop() {
    local pid
    if ! pid="$(running_pid)"; then
        rm -f -- "$PIDFILE" "$PORTFILE"
        say "not running"
        return 0
    fi
    kill "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "pid $pid ignored SIGTERM; sending SIGKILL"
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f -- "$PIDFILE" "$PORTFILE"
    say "stopped (pid $pid)"
}

cmd_status() {
    local pid
    if pid="$(running_pid)"; then
        local port
        port="$(cat "$PORTFILE" 2>/dev/null || echo '?')"
        if [[ "$port" != '?' ]] && kms_answers "$port"; then
            say "running (pid $pid) on port $port, answering KMS calls"
        else
            say "running (pid $pid) on port $port, but not answering KMS calls; see $LOGFILE"
        fi
        print_export "$port"
        return 0
    fi
    say "not running"
    return 1
}

case "${1:-}" in
    start) shift; cmd_start "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    -h | --help | help | '') usage ;;
    *) say "unknown command: $1"; usage ;;
esac

#!/usr/bin/env bash
# A local KMS-compatible server (moto) for the aws-kms key provider tests.
#
#   out=$(scripts/kms-server.sh) && eval "$out"   # start (or reuse) it; sets TEST_KMS_ENDPOINT
#   scripts/kms-server.sh stop                    # stop it
#
# Capture the output before eval: `eval "$(scripts/kms-server.sh)"` would hide a failure.
# Only the export line goes to stdout; progress and errors go to stderr.
# Settings: CB_VENV (virtualenv, default .venv at the repo root), PORT (default 5599).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${CB_VENV:-.venv}"
PORT="${PORT:-5599}"
HOST=127.0.0.1
MOTO_SPEC='moto[server]>=5.2,<5.3'
PIDFILE="$VENV/kms-server-$PORT.pid"
LOG="$VENV/kms-server-$PORT.log"

say() { printf 'kms-server: %s\n' "$*" >&2; }
die() {
  printf '\n!!!!! kms-server: %s !!!!!\n\n' "$*" >&2
  exit 1
}

running_pid() {
  [[ -f "$PIDFILE" ]] || return 1
  local pid
  pid=$(cat "$PIDFILE")
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# Any HTTP answer (even an error status) means the server is up.
answers() {
  "$VENV/bin/python" - "$HOST" "$PORT" <<'PY' 2>/dev/null
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(f"http://{sys.argv[1]}:{sys.argv[2]}/moto-api/", timeout=1)
except urllib.error.HTTPError:
    pass
except Exception:
    sys.exit(1)
PY
}

stop() {
  local pid
  if pid=$(running_pid); then
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
    say "stopped moto_server (pid $pid)"
  else
    say "not running on port $PORT"
  fi
  rm -f "$PIDFILE"
}

install() {
  command -v python3 >/dev/null || die "python3 is not installed (apt-get install python3 python3-venv)"
  if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating virtualenv $VENV"
    python3 -m venv "$VENV" || die "cannot create virtualenv $VENV (is python3-venv installed and the path writable?)"
  fi
  [[ -x "$VENV/bin/pip" ]] || die "virtualenv $VENV has no pip (apt-get install python3-venv, or remove $VENV)"
  if ! "$VENV/bin/python" -c 'import sys, moto; sys.exit(0 if moto.__version__.startswith("5.2.") else 1)' 2>/dev/null ||
    [[ ! -x "$VENV/bin/moto_server" ]]; then
    say "installing $MOTO_SPEC into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$MOTO_SPEC" ||
      die "pip could not install $MOTO_SPEC"
  fi
  [[ -x "$VENV/bin/moto_server" ]] || die "moto_server missing from $VENV/bin after installing $MOTO_SPEC"
}

start() {
  install
  if running_pid >/dev/null && answers; then
    say "already running on $HOST:$PORT (pid $(running_pid))"
  else
    rm -f "$PIDFILE"
    if answers; then
      die "something else already answers on $HOST:$PORT: choose another PORT"
    fi
    # setsid + nohup: the server outlives this script and the shell that ran it.
    setsid nohup "$VENV/bin/moto_server" -H "$HOST" -p "$PORT" >"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    local up=""
    for _ in $(seq 1 150); do
      if answers; then up=1; break; fi
      running_pid >/dev/null || break
      sleep 0.2
    done
    if [[ -z "$up" ]]; then
      tail -n 20 "$LOG" >&2 || true
      stop
      die "moto_server did not start on $HOST:$PORT (log: $LOG)"
    fi
    say "moto_server running on $HOST:$PORT (pid $(running_pid), log $LOG)"
  fi
  echo "export TEST_KMS_ENDPOINT=http://$HOST:$PORT"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) die "usage: $0 [start|stop]" ;;
esac

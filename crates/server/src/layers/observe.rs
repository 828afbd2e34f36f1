//! The outermost tower layer of our RPCs: one server span per call (continuing the caller's W3C
//! trace context), the RPC metrics (count and latency by method and code), and the caller's
//! deadline (`grpc-timeout`) answered with DEADLINE_EXCEEDED. Health checks and reflection pass
//! through untouched (probes would drown the traces).

use super::{BoxFuture, Inner, Middleware, Request, Response};
use crate::grpc::status::{transport_reason::INVALID_DEADLINE, transport_status};
use crate::layers::rpc::Rpc;
use crate::runtime::metrics::{Metrics, code_name};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::{Code, Status};
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The layer.
#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
}

impl ObserveLayer {
    /// Records into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

super::middleware_layer!(ObserveLayer);

/// The caller's deadline header, as a header name made once.
const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let unit = value.chars().last()?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC code of a response: the `grpc-status` header of a trailers-only (error) response,
/// else OK (a unary success carries its status in the trailers).
fn response_code(resp: &http::Response<Body>) -> Code {
    resp.headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from)
}

/// How much earlier than the caller's deadline we answer: tonic's own timer (armed a moment
/// before ours) would otherwise win the race and answer CANCELLED instead of DEADLINE_EXCEEDED.
fn margin(timeout: Duration) -> Duration {
    (timeout / 20).min(Duration::from_millis(20))
}

impl<S: Inner> Middleware<S> for ObserveLayer {
    type Error = S::Error;

    fn handle(&self, mut inner: S, mut req: Request) -> BoxFuture<Response, S::Error> {
        let Some(rpc) = Rpc::from_path(req.uri().path()) else {
            return Box::pin(inner.call(req));
        };
        // Resolved once here, the outermost layer; the layers and handlers below read it.
        req.extensions_mut().insert(rpc);
        // The `rpc` span only when something consumes spans (traces exported, or a log that
        // prints them): otherwise creating, entering and closing it is work for nobody.
        let span = if crate::runtime::telemetry::spans_wanted() {
            let span = tracing::info_span!(
                "rpc",
                otel.name = %format_args!("{}/{}", rpc.service(), rpc.method()),
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.service = rpc.service(),
                rpc.method = rpc.method(),
                rpc.grpc.status_code = Empty,
                caller = Empty,
                otel.status_code = Empty,
            );
            // No OpenTelemetry layer installed (tests, traces off): nothing to continue.
            let _ = span.set_parent(crate::runtime::telemetry::extract_trace_context(
                req.headers(),
            ));
            span
        } else {
            tracing::Span::none()
        };
        let deadline = match req.headers().get(GRPC_TIMEOUT) {
            None => None,
            Some(v) => match v.to_str().ok().and_then(parse_grpc_timeout) {
                Some(d) => Some(d),
                None => {
                    // An unreadable deadline is the caller's bug: say so rather than run without one.
                    let status = transport_status(
                        Code::InvalidArgument,
                        INVALID_DEADLINE,
                        "the grpc-timeout header is not a gRPC timeout (1 to 8 digits and a unit: \
                         H, M, S, m, u or n)"
                            .to_owned(),
                        None,
                    );
                    self.metrics
                        .observe_rpc(rpc, Code::InvalidArgument, Duration::ZERO);
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            },
        };
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let call = {
            let _entered = span.enter();
            inner.call(req)
        };
        let record = span.clone();
        Box::pin(
            async move {
                let result = match deadline {
                    Some(d) => {
                        match tokio::time::timeout(d.saturating_sub(margin(d)), call).await {
                            Ok(r) => r,
                            Err(_) => Ok(Status::deadline_exceeded(format!(
                                "the call did not finish within its deadline ({} ms)",
                                d.as_millis()
                            ))
                            .into_http()),
                        }
                    }
                    None => call.await,
                };
                if let Ok(resp) = &result {
                    let code = response_code(resp);
                    record.record("rpc.grpc.status_code", code as i32);
                    // Server errors per the OpenTelemetry gRPC conventions; the rest is the
                    // caller's doing.
                    if matches!(
                        code,
                        Code::Unknown
                            | Code::DeadlineExceeded
                            | Code::Unimplemented
                            | Code::Internal
                            | Code::Unavailable
                            | Code::DataLoss
                    ) {
                        record.record("otel.status_code", "ERROR");
                    }
                    metrics.observe_rpc(rpc, code, started.elapsed());
                    if code != Code::Ok {
                        tracing::debug!(code = code_name(code), "rpc failed");
                    }
                }
                result
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(parse_grpc_timeout("-1S"), None);
    }
}

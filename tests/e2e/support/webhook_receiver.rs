//! A webhook receiver over plain HTTP on loopback: records every request (headers and body) and
//! answers 204 while up, 503 while down. Signatures are checked by the tests, not here.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`.
    pub timestamp: String,
    /// `webhook-signature`.
    pub signature: String,
    /// The raw body.
    pub body: Vec<u8>,
    /// What the receiver answered.
    pub status: u16,
}

/// A running receiver.
pub struct WebhookReceiver {
    /// Where it listens.
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookReceiver {
    /// Starts a receiver on a free loopback port, up (or down) from the start.
    pub async fn start(up: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(up));
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (up2, received2) = (up.clone(), received.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (up, received) = (up2.clone(), received2.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (up, received) = (up.clone(), received.clone());
                            async move {
                                let header = |name: &str| {
                                    req.headers()
                                        .get(name)
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or_default()
                                        .to_owned()
                                };
                                let (id, timestamp, signature) = (
                                    header("webhook-id"),
                                    header("webhook-timestamp"),
                                    header("webhook-signature"),
                                );
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let status = if up.load(Ordering::SeqCst) { 204 } else { 503 };
                                received.lock().unwrap().push(Received {
                                    id,
                                    timestamp,
                                    signature,
                                    body: body.to_vec(),
                                    status,
                                });
                                let response = hyper::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap();
                                Ok::<_, Infallible>(response)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            up,
            received,
            task,
        }
    }

    /// The URL to configure.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answers 204 (`true`) or 503 (`false`) from now on.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs the independent verifier (tests/e2e/support/verify_webhooks.py, Python's hmac) on
/// `deliveries` (at least one) with `secrets`; whether every delivery verified under every
/// secret. Panics when the verifier gives no verdict (a crash is not a mismatch).
pub fn verified_independently(deliveries: &[Received], secrets: &[&str]) -> bool {
    assert!(!deliveries.is_empty(), "nothing to verify");
    let doc = serde_json::json!({
        "secrets": secrets,
        "deliveries": deliveries.iter().map(|d| serde_json::json!({
            "id": d.id, "timestamp": d.timestamp, "signature": d.signature, "body": d.body,
        })).collect::<Vec<_>>(),
    });
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), doc.to_string()).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/e2e/support/verify_webhooks.py"
    );
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(file.path())
        .output()
        .expect("python3 runs the independent verifier");
    match out.status.code() {
        Some(0) => true,
        Some(3) => false,
        _ => panic!(
            "the verifier gave no verdict: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

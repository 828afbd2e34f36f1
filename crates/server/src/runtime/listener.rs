//! The accepted connections, before HTTP/2 sees them: at most `limits.max_connections` open at
//! once (one more is closed at accept), a deadline for the HTTP/2 preface (a connection that
//! sends nothing, or too little, is closed after `limits.handshake_timeout_seconds`) and an idle
//! timeout (closed when no call has been in flight for `limits.idle_timeout_seconds`).
//! Dead peers are found by HTTP/2 keepalive pings (configured on the server).

use crate::runtime::metrics::Metrics;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

/// Bytes of the HTTP/2 connection preface (`PRI * HTTP/2.0…`), or of a TLS ClientHello that
/// must at least be this long.
const PREFACE_LEN: usize = 24;

/// What a listener enforces on each connection.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// Open connections at most (0: no cap).
    pub max_connections: usize,
    /// How long a new connection may take to send its first bytes.
    pub handshake_timeout: Duration,
    /// How long a connection may stay without calls (None: forever).
    pub idle_timeout: Option<Duration>,
}

/// Accepts from `listener` under `limits`.
pub fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = io::Result<GuardedStream>> {
    let permits =
        (limits.max_connections > 0).then(|| Arc::new(Semaphore::new(limits.max_connections)));
    let accepted = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio_stream::StreamExt::filter_map(accepted, move |conn| {
        let stream = match conn {
            Ok(stream) => stream,
            Err(e) => return Some(Err(e)),
        };
        // tonic's tcp_nodelay does not apply to an incoming stream: without it Nagle's algorithm
        // adds ~40 ms stalls to small unary replies.
        let _ = stream.set_nodelay(true);
        let permit = match &permits {
            None => None,
            Some(p) => match p.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    // Closed at once (dropped): a connection flood cannot grow without bound.
                    metrics.rejected("any", "max_connections");
                    tracing::debug!("connection refused: limits.max_connections reached");
                    return None;
                }
            },
        };
        Some(Ok(GuardedStream::new(stream, permit, &limits)))
    })
}

/// Calls in flight on one connection and when the last one started or ended.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since `epoch` of the last start or end of a call.
    last_change_ms: AtomicU64,
    epoch: Instant,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_change_ms.store(ms, Ordering::Relaxed);
    }

    /// Marks a call as started; it ends when the guard is dropped.
    pub fn start(self: &Arc<Self>) -> CallGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        CallGuard(self.clone())
    }

    fn quiet_since(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_change_ms.load(Ordering::Relaxed))
    }
}

/// One call in flight on a connection.
#[derive(Debug)]
pub struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per-connection information handed to every request (tonic request extensions).
#[derive(Clone, Debug)]
pub struct GuardedInfo {
    /// Addresses of the TCP connection.
    pub tcp: TcpConnectInfo,
    /// The connection's calls.
    pub activity: Arc<Activity>,
}

/// Marks a call as in flight on its connection (for the idle timeout), if the request came
/// through a guarded listener.
pub fn track_call<B>(req: &tonic::codegen::http::Request<B>) -> Option<CallGuard> {
    let ext = req.extensions();
    ext.get::<GuardedInfo>()
        .or_else(|| {
            ext.get::<TlsConnectInfo<GuardedInfo>>()
                .map(TlsConnectInfo::get_ref)
        })
        .map(|info| info.activity.start())
}

/// A TCP connection with the handshake deadline, the idle timeout and its connection permit.
pub struct GuardedStream {
    inner: TcpStream,
    _permit: Option<OwnedSemaphorePermit>,
    activity: Arc<Activity>,
    preface_left: usize,
    idle: Option<Duration>,
    timer: Pin<Box<Sleep>>,
}

impl GuardedStream {
    fn new(
        inner: TcpStream,
        permit: Option<OwnedSemaphorePermit>,
        limits: &ConnectionLimits,
    ) -> Self {
        let now = Instant::now();
        Self {
            inner,
            _permit: permit,
            activity: Arc::new(Activity {
                in_flight: AtomicUsize::new(0),
                last_change_ms: AtomicU64::new(0),
                epoch: now,
            }),
            preface_left: PREFACE_LEN,
            idle: limits.idle_timeout,
            timer: Box::pin(tokio::time::sleep_until(now + limits.handshake_timeout)),
        }
    }

    /// Whether the connection should be closed now; otherwise re-arms the timer.
    fn expired(&mut self, now: Instant) -> bool {
        if self.preface_left > 0 {
            tracing::debug!("connection closed: no HTTP/2 preface within the handshake timeout");
            return true;
        }
        let Some(idle) = self.idle else {
            // No idle timeout: sleep for a long while (re-armed if it ever fires).
            self.timer.as_mut().reset(now + Duration::from_secs(86_400));
            return false;
        };
        let deadline = if self.activity.in_flight.load(Ordering::Relaxed) > 0 {
            now + idle
        } else {
            self.activity.quiet_since() + idle
        };
        if deadline <= now {
            tracing::debug!("connection closed: idle");
            return true;
        }
        self.timer.as_mut().reset(deadline);
        false
    }
}

impl Connected for GuardedStream {
    type ConnectInfo = GuardedInfo;
    fn connect_info(&self) -> GuardedInfo {
        GuardedInfo {
            tcp: self.inner.connect_info(),
            activity: self.activity.clone(),
        }
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        if let Poll::Ready(r) = Pin::new(&mut this.inner).poll_read(cx, buf) {
            this.preface_left = this
                .preface_left
                .saturating_sub(buf.filled().len() - before);
            return Poll::Ready(r);
        }
        // Nothing to read: a pending read always has the timer armed beside it.
        while this.timer.as_mut().poll(cx).is_ready() {
            if this.expired(Instant::now()) {
                // End of stream: HTTP/2 (and TLS) close the connection.
                return Poll::Ready(Ok(()));
            }
        }
        Poll::Pending
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

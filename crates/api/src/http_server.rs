//! Serving a router over HTTP/1.1 with the limits `axum::serve` cannot set: a client must finish its headers within
//! [`HttpLimits::header_read_timeout`], and a request head is bounded in header count and bytes (431 beyond).
//! Connections are tracked, so a shutdown lets in-flight requests finish for up to the drain timeout.

use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a client may send before its request reaches the router, and how long it may take.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// From the first byte of a request (or a new connection) to the end of its headers. A client that trickles its
    /// headers (slowloris) is disconnected after this, holding a connection no longer.
    pub header_read_timeout: Duration,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// Largest request head (request line and headers) in bytes; hyper's floor is 8 KiB.
    pub max_head_bytes: usize,
    /// How long in-flight requests may take to finish after shutdown.
    pub drain_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_headers: 64,
            max_head_bytes: 16 * 1024,
            drain_timeout: crate::DRAIN_TIMEOUT,
        }
    }
}

/// Serves `app` on `listener` until `shutdown`, then asks every connection to finish its current request and waits
/// for them for up to `limits.drain_timeout`.
///
/// # Errors
/// None today: accept errors are logged and retried, per-connection errors end only that connection. The signature
/// keeps room for a fatal listener error.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_head_bytes.max(8192));
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        // Small responses go out at once instead of waiting for Nagle's algorithm.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let stop = shutdown.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stop.cancelled() => {
                    // Finish the request in flight (if any), then close instead of waiting for the next one.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(limits.drain_timeout, connections.wait()).await.is_err() {
        tracing::warn!(timeout = ?limits.drain_timeout, "in-flight requests did not finish in time; exiting anyway");
    }
    Ok(())
}

/// Accept errors on a connection that is already gone are routine; anything else (out of file descriptors) gets a
/// short pause so the loop does not spin while the condition lasts.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(error.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::error!(%error, "accepting a connection failed; pausing 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

//! [`HoldingProxy`]: a TCP proxy that holds every connection made during its first moments and answers them only
//! afterwards, like an emulator still starting a service: LocalStack holds a DynamoDB request while it starts
//! DynamoDB Local (a JVM), then serves it. Connections made after the hold are forwarded at once.
//!
//! A held connection is accepted (the kernel completes the handshake), its bytes are left unread until the hold ends,
//! then it is connected to the upstream and forwarded both ways, so a client that waited gets its answer late, and one
//! that gave up meanwhile has closed it. Dropping the proxy stops listening and closes every connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// A holding TCP proxy on `127.0.0.1:<free port>` in front of one upstream. See the module documentation.
pub struct HoldingProxy {
    addr: SocketAddr,
    held: Arc<AtomicU64>,
    /// The accept loop; it owns the connection tasks, so aborting it aborts them all.
    accept: tokio::task::JoinHandle<()>,
}

impl HoldingProxy {
    /// Starts the proxy in front of `upstream` (`http://127.0.0.1:<port>`), holding every connection accepted within
    /// `hold` from now until then. Must be called within a Tokio runtime.
    ///
    /// # Panics
    /// When `upstream` has no `host:port`, or no local port can be bound (a harness failure, not a test result).
    pub fn start(upstream: &str, hold: Duration) -> Self {
        let target = crate::fault::upstream_address(upstream).unwrap_or_else(|e| panic!("HoldingProxy: {e}"));
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(TcpListener::from_std)
            .unwrap_or_else(|e| panic!("HoldingProxy: cannot listen on 127.0.0.1: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("HoldingProxy: no local address: {e}"));
        let held = Arc::new(AtomicU64::new(0));
        let accept = tokio::spawn(accept_loop(listener, target, Instant::now() + hold, Arc::clone(&held)));
        Self { addr, held, accept }
    }

    /// `http://127.0.0.1:<port>`: give this to a client instead of the upstream.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted during the hold.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }
}

impl Drop for HoldingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: String, release: Instant, held: Arc<AtomicU64>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                if Instant::now() < release {
                    held.fetch_add(1, Ordering::Relaxed);
                }
                connections.spawn(forward_after(client, target.clone(), release));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Waits until `release`, then forwards bytes between `client` and a new connection to `target` until either closes.
async fn forward_after(mut client: TcpStream, target: String, release: Instant) {
    tokio::time::sleep_until(release).await;
    let Ok(mut upstream) = TcpStream::connect(&target).await else { return };
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::fault::tests::echo_upstream;

    async fn round_trip(proxy: &HoldingProxy) -> Vec<u8> {
        let addr = proxy.endpoint().trim_start_matches("http://").to_owned();
        let mut socket = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect: {e}"));
        socket.write_all(b"ping").await.unwrap_or_else(|e| panic!("write: {e}"));
        let mut answer = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut answer)).await;
        read.unwrap_or_else(|_| panic!("no answer within 5 s")).unwrap_or_else(|e| panic!("read: {e}"));
        answer.to_vec()
    }

    #[tokio::test]
    async fn connections_during_the_hold_are_answered_after_it_and_later_ones_at_once() {
        let (upstream, server) = echo_upstream().await;
        let hold = Duration::from_millis(300);
        let started = Instant::now();
        let proxy = HoldingProxy::start(&upstream, hold);
        assert_eq!(round_trip(&proxy).await, b"ping");
        assert!(started.elapsed() >= hold, "answered after {:?}, inside the hold", started.elapsed());
        assert_eq!(proxy.held(), 1);
        let after = Instant::now();
        assert_eq!(round_trip(&proxy).await, b"ping");
        assert!(after.elapsed() < hold, "a connection after the hold waited {:?}", after.elapsed());
        assert_eq!(proxy.held(), 1);
        server.abort();
    }
}

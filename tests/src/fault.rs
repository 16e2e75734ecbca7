//! [`FaultProxy`]: a TCP proxy in front of one endpoint that can refuse or black-hole connections on demand, so a test
//! can take one dependency of a process away (DynamoDB, or SNS/SQS) while the emulator itself keeps running for
//! everyone else (the API, the test's own SDK clients).
//!
//! Bytes are forwarded unchanged in both directions, one task per connection. [`FaultProxy::set`] switches the mode
//! ([`Mode`]) for existing and new connections alike:
//! - `Up`: forward.
//! - `Refuse`: existing connections are closed at once; new ones are accepted and closed immediately (what a client
//!   sees when an endpoint's process is gone or a load balancer resets: a fast error).
//! - `Hang`: existing connections stop forwarding and are held open; new ones are accepted and held without ever
//!   reaching the upstream (a black-holed route: only the client's own timeouts end a call). Leaving `Hang` closes
//!   every held connection; new connections are then served according to the new mode.
//!
//! Dropping the proxy stops listening and closes every connection (its tasks are aborted).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Up,
    Refuse,
    Hang,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Refuse => "refuse",
            Self::Hang => "hang",
        }
    }
}

/// Connection counts of a [`FaultProxy`] since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted, whatever happened to them.
    pub accepted: u64,
    /// Connections forwarded to the upstream (accepted while up).
    pub forwarded: u64,
    /// Connections closed by `Refuse` (new ones at once, and forwarded ones cut).
    pub refused: u64,
    /// Connections held by `Hang` (new ones, and forwarded ones frozen).
    pub held: u64,
    /// Connections accepted while up whose upstream connect failed.
    pub upstream_errors: u64,
}

impl ProxyStats {
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({"accepted": self.accepted, "forwarded": self.forwarded, "refused": self.refused,
                           "held": self.held, "upstream_errors": self.upstream_errors})
    }
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    forwarded: AtomicU64,
    refused: AtomicU64,
    held: AtomicU64,
    upstream_errors: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A fault-injecting TCP proxy on `127.0.0.1:<free port>` in front of one upstream. See the module documentation.
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: String,
    mode: watch::Sender<Mode>,
    counters: Arc<Counters>,
    /// The accept loop; it owns the connection tasks (a [`JoinSet`]), so aborting it aborts them all.
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts forwarding (mode [`Mode::Up`]) to `upstream`, given as `http://127.0.0.1:<port>` (a trailing path is
    /// ignored: the proxy works at the TCP level). Must be called within a Tokio runtime.
    ///
    /// # Panics
    /// When `upstream` has no `host:port`, or no local port can be bound (a harness failure, not a test result).
    pub fn start(upstream: &str) -> Self {
        let target = upstream_address(upstream).unwrap_or_else(|e| panic!("FaultProxy: {e}"));
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(|l| TcpListener::from_std(l))
            .unwrap_or_else(|e| panic!("FaultProxy: cannot listen on 127.0.0.1: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("FaultProxy: no local address: {e}"));
        let (mode, _) = watch::channel(Mode::Up);
        let counters = Arc::new(Counters::default());
        let accept = tokio::spawn(accept_loop(listener, target, mode.subscribe(), Arc::clone(&counters)));
        Self { addr, upstream: upstream.to_owned(), mode, counters, accept }
    }

    /// `http://127.0.0.1:<port>`: give this to a client instead of the upstream.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The upstream as given to [`FaultProxy::start`].
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Switches every connection, existing and new, to `mode`.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    pub fn stats(&self) -> ProxyStats {
        let c = &self.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ProxyStats {
            accepted: load(&c.accepted),
            forwarded: load(&c.forwarded),
            refused: load(&c.refused),
            held: load(&c.held),
            upstream_errors: load(&c.upstream_errors),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its listener and its JoinSet, which aborts every connection task and so
        // closes every socket.
        self.accept.abort();
    }
}

/// `host:port` of an `http://host:port[/path]` URL.
pub(crate) fn upstream_address(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("upstream {url:?} is not an http:// URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(authority.to_owned()),
        _ => Err(format!("upstream {url:?} has no host:port")),
    }
}

async fn accept_loop(listener: TcpListener, target: String, mut mode: watch::Receiver<Mode>, counters: Arc<Counters>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                Counters::add(&counters.accepted);
                let current = *mode.borrow_and_update();
                match current {
                    Mode::Refuse => {
                        Counters::add(&counters.refused);
                        drop(client);
                    }
                    Mode::Hang => {
                        Counters::add(&counters.held);
                        connections.spawn(hold(client, mode.clone()));
                    }
                    Mode::Up => {
                        connections.spawn(forward(client, target.clone(), mode.clone(), Arc::clone(&counters)));
                    }
                }
            }
            // Reap finished connection tasks so the set does not grow with every connection ever made.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Holds `socket` open without reading or writing until the mode leaves [`Mode::Hang`], then closes it.
async fn hold(socket: TcpStream, mut mode: watch::Receiver<Mode>) {
    leaves(&mut mode, Mode::Hang).await;
    drop(socket);
}

/// Waits until the mode is no longer `current`; returns the new mode (`Refuse` when the proxy is gone).
async fn leaves(mode: &mut watch::Receiver<Mode>, current: Mode) -> Mode {
    mode.wait_for(|m| *m != current).await.map(|m| *m).unwrap_or(Mode::Refuse)
}

/// Forwards bytes between `client` and a new connection to `target` until either side closes or the mode changes.
async fn forward(mut client: TcpStream, target: String, mut mode: watch::Receiver<Mode>, counters: Arc<Counters>) {
    // Connecting while the mode changes: the change wins (the client never got a byte from the upstream).
    let connected = tokio::select! {
        connected = TcpStream::connect(&target) => Ok(connected),
        now = leaves(&mut mode, Mode::Up) => Err(now),
    };
    let mut upstream = match connected {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(_)) => {
            Counters::add(&counters.upstream_errors);
            return;
        }
        Err(now) => return cut(client, now, mode, &counters).await,
    };
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    Counters::add(&counters.forwarded);
    let now = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => return,
        now = leaves(&mut mode, Mode::Up) => now,
    };
    drop(upstream);
    cut(client, now, mode, &counters).await;
}

/// A forwarded connection whose mode changed to `now`: closed at once (refuse) or held until the hang ends.
async fn cut(client: TcpStream, now: Mode, mode: watch::Receiver<Mode>, counters: &Counters) {
    if now == Mode::Hang {
        Counters::add(&counters.held);
        hold(client, mode).await;
    } else {
        Counters::add(&counters.refused);
        drop(client);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An echo server on a free port; it stops when the returned handle is aborted.
    pub(crate) async fn echo_upstream() -> (String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                connections.spawn(async move {
                    let (mut read, mut write) = socket.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        (format!("http://{addr}"), task)
    }

    async fn connect(proxy: &FaultProxy) -> TcpStream {
        let addr = proxy.endpoint().trim_start_matches("http://").to_owned();
        TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect to the proxy: {e}"))
    }

    /// Writes `text` and reads back as many bytes, within 5 s.
    async fn round_trip(socket: &mut TcpStream, text: &str) -> Result<String, String> {
        socket.write_all(text.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut buffer = vec![0; text.len()];
        match tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut buffer)).await {
            Ok(Ok(_)) => Ok(String::from_utf8_lossy(&buffer).into_owned()),
            Ok(Err(e)) => Err(format!("read: {e}")),
            Err(_) => Err("no answer within 5 s".into()),
        }
    }

    /// What a read sees within `within`: `Some(bytes read)` (0: closed; an error counts as closed), `None`: nothing.
    async fn read_within(socket: &mut TcpStream, within: Duration) -> Option<usize> {
        let mut buffer = [0u8; 64];
        match tokio::time::timeout(within, socket.read(&mut buffer)).await {
            Ok(Ok(n)) => Some(n),
            Ok(Err(_)) => Some(0),
            Err(_) => None,
        }
    }

    #[test]
    fn upstream_must_be_an_http_url_with_a_port() {
        assert_eq!(upstream_address("http://127.0.0.1:4566"), Ok("127.0.0.1:4566".into()));
        assert_eq!(upstream_address("http://localhost:5000/x/y"), Ok("localhost:5000".into()));
        assert!(upstream_address("127.0.0.1:4566").is_err());
        assert!(upstream_address("http://127.0.0.1").is_err());
        assert!(upstream_address("http://:80").is_err());
    }

    #[tokio::test]
    async fn up_forwards_both_ways() {
        let (upstream, server) = echo_upstream().await;
        let proxy = FaultProxy::start(&upstream);
        assert_eq!(proxy.upstream(), upstream);
        assert_ne!(proxy.endpoint(), upstream);
        let mut socket = connect(&proxy).await;
        assert_eq!(round_trip(&mut socket, "hello").await, Ok("hello".into()));
        assert_eq!(round_trip(&mut socket, "again").await, Ok("again".into()));
        let stats = proxy.stats();
        assert_eq!((stats.accepted, stats.forwarded, stats.refused, stats.held), (1, 1, 0, 0));
        server.abort();
    }

    #[tokio::test]
    async fn refuse_closes_existing_connections_and_new_ones_at_once() {
        let (upstream, server) = echo_upstream().await;
        let proxy = FaultProxy::start(&upstream);
        let mut existing = connect(&proxy).await;
        assert_eq!(round_trip(&mut existing, "up").await, Ok("up".into()));
        proxy.set(Mode::Refuse);
        assert_eq!(proxy.mode(), Mode::Refuse);
        assert_eq!(read_within(&mut existing, Duration::from_secs(5)).await, Some(0), "existing connection closed");
        let mut new = connect(&proxy).await;
        let _ = new.write_all(b"anyone?").await;
        assert_eq!(read_within(&mut new, Duration::from_secs(5)).await, Some(0), "new connection closed at once");
        proxy.set(Mode::Up);
        let mut after = connect(&proxy).await;
        assert_eq!(round_trip(&mut after, "back").await, Ok("back".into()));
        assert_eq!(proxy.stats().refused, 2);
        server.abort();
    }

    #[tokio::test]
    async fn hang_holds_connections_open_without_forwarding_until_up() {
        let (upstream, server) = echo_upstream().await;
        let proxy = FaultProxy::start(&upstream);
        let mut existing = connect(&proxy).await;
        assert_eq!(round_trip(&mut existing, "up").await, Ok("up".into()));
        proxy.set(Mode::Hang);
        // The switch reaches the connection task asynchronously; give it a moment before writing.
        tokio::time::sleep(Duration::from_millis(100)).await;
        existing.write_all(b"lost").await.unwrap_or_else(|e| panic!("write into a held connection: {e}"));
        assert_eq!(read_within(&mut existing, Duration::from_millis(500)).await, None, "held: no echo, not closed");
        let mut new = connect(&proxy).await;
        new.write_all(b"queued").await.unwrap_or_else(|e| panic!("write into a new held connection: {e}"));
        assert_eq!(read_within(&mut new, Duration::from_millis(500)).await, None, "new one held too");
        assert_eq!(proxy.stats().held, 2);
        proxy.set(Mode::Up);
        assert_eq!(read_within(&mut existing, Duration::from_secs(5)).await, Some(0), "released: closed");
        assert_eq!(read_within(&mut new, Duration::from_secs(5)).await, Some(0), "released: closed");
        let mut after = connect(&proxy).await;
        assert_eq!(round_trip(&mut after, "served").await, Ok("served".into()));
        server.abort();
    }

    #[tokio::test]
    async fn hang_then_refuse_closes_the_held_connections() {
        let (upstream, server) = echo_upstream().await;
        let proxy = FaultProxy::start(&upstream);
        proxy.set(Mode::Hang);
        let mut held = connect(&proxy).await;
        assert_eq!(read_within(&mut held, Duration::from_millis(300)).await, None);
        proxy.set(Mode::Refuse);
        assert_eq!(read_within(&mut held, Duration::from_secs(5)).await, Some(0));
        server.abort();
    }

    #[tokio::test]
    async fn an_unreachable_upstream_closes_the_client() {
        let port = crate::free_port();
        let proxy = FaultProxy::start(&format!("http://127.0.0.1:{port}"));
        let mut socket = connect(&proxy).await;
        assert_eq!(read_within(&mut socket, Duration::from_secs(5)).await, Some(0));
        assert_eq!(proxy.stats().upstream_errors, 1);
    }

    #[tokio::test]
    async fn drop_closes_connections_and_stops_listening() {
        let (upstream, server) = echo_upstream().await;
        let proxy = FaultProxy::start(&upstream);
        let addr = proxy.endpoint().trim_start_matches("http://").to_owned();
        let mut forwarded = connect(&proxy).await;
        assert_eq!(round_trip(&mut forwarded, "x").await, Ok("x".into()));
        proxy.set(Mode::Hang);
        let mut held = connect(&proxy).await;
        drop(proxy);
        assert_eq!(read_within(&mut forwarded, Duration::from_secs(5)).await, Some(0), "forwarded one closed");
        assert_eq!(read_within(&mut held, Duration::from_secs(5)).await, Some(0), "held one closed");
        // The listener is gone once the aborted task has been dropped.
        let refused = async {
            loop {
                if TcpStream::connect(&addr).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        assert!(tokio::time::timeout(Duration::from_secs(5), refused).await.is_ok(), "port still accepting");
        server.abort();
    }
}

//! `<binary> healthcheck`: exits 0 when the local `/health` answers 200. Container health checks call it because
//! distroless images have no curl or wget.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// Returns the process exit code: 0 healthy, 1 not.
pub fn run(port: u16) -> i32 {
    match check(port) {
        Ok(()) => 0,
        Err(reason) => {
            eprintln!("unhealthy: {reason}");
            1
        }
    }
}

fn check(port: u16) -> Result<(), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let timeout = Duration::from_secs(3);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut head = [0u8; 16];
    let n = stream.read(&mut head).map_err(|e| format!("read: {e}"))?;
    let status_line = String::from_utf8_lossy(&head[..n]);
    if status_line.starts_with("HTTP/1.1 200") || status_line.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        Err(format!("/health answered {status_line:?}"))
    }
}

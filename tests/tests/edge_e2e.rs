//! The HTTP edge of the real binaries, as a browser, a load balancer's health check and a hostile client reach it:
//! admin sessions (random per login, ended by logout), login throttling with the client's address in the log, the
//! `Host` check of the console and of the worker's live page (DNS rebinding) while health checks answer under any
//! name, `HTTP_MAX_CONNECTIONS`, and the `ADMIN_TOKEN` minimum. The rules themselves are tested in the crates
//! (`crates/api/tests/{admin,http_edge}.rs`, `crates/worker/tests/http_edge.rs`); this proves the binaries read
//! their configuration and serve through that edge.
//!
//! No emulator: the API's `/health`, login and console need no AWS call, and a worker answers `/health`
//! (`"status": "starting"`) and its live page while its SQS endpoint refuses connections.

use std::time::Duration;

use e2e::{eventually, free_port, Service};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `ADMIN_TOKEN` of the API under test.
const ADMIN_TOKEN: &str = "edge-e2e-admin-token-0123456789abcdef";
/// How long a binary may take to answer its first `/health`.
const START: Duration = Duration::from_secs(20);
/// How long one request may take.
const ANSWER: Duration = Duration::from_secs(10);
/// A topic ARN the API never calls here.
const TOPIC: &str = "arn:aws:sns:us-east-1:000000000000:edge-e2e-never-called";

/// An AWS endpoint that refuses every connection (nothing listens on a port just freed).
fn refused_endpoint() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

fn api(extra: &[(&str, &str)]) -> Service {
    let mut builder = Service::builder("pedidos-api")
        .name(e2e::unique("api-edge"))
        .env("AWS_ENDPOINT_URL", refused_endpoint())
        .env("SNS_TOPIC_ARN", TOPIC)
        .env("ADMIN_TOKEN", ADMIN_TOKEN);
    for (key, value) in extra {
        builder = builder.env(*key, *value);
    }
    builder.spawn()
}

/// Reads what the server sends until the end of a response head and as much of the body as `Content-Length` says
/// (or until it closes); `None` if the head did not come within `deadline`.
async fn read_answer<R: AsyncRead + Unpin>(stream: &mut R, deadline: Duration) -> Option<String> {
    let mut received = Vec::new();
    tokio::time::timeout(deadline, async {
        let mut chunk = [0_u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&received);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                    .and_then(|v| v.parse::<usize>().ok());
                if length.is_some_and(|length| body.len() >= length) {
                    break;
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .ok()?;
    (!received.is_empty()).then(|| String::from_utf8_lossy(&received).into_owned())
}

/// One request on its own connection, `Host: host`, with `headers` (each `Name: value`) and `body`: the answer.
async fn send(port: u16, method: &str, path: &str, host: &str, headers: &[String], body: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap_or_else(|e| panic!("connect: {e}"));
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    read_answer(&mut stream, ANSWER).await.unwrap_or_else(|| panic!("{method} {path}: no answer within {ANSWER:?}"))
}

fn status(answer: &str) -> &str {
    answer.lines().next().unwrap_or_default()
}

/// The value of the first `name` header of `answer`.
fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    let head = answer.split("\r\n\r\n").next().unwrap_or_default();
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

/// Waits until `GET /health` answers 200 on `port`.
async fn wait_live(service: &mut Service) {
    let port = service.port();
    eventually(START, Duration::from_millis(100), || async move {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        drop(stream);
        let answer = send(port, "GET", "/health", "localhost", &[], "").await;
        status(&answer).starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
    assert!(service.try_wait().is_none(), "{} exited; log:\n{}", service.name(), service.log_text());
}

/// Logs in from 127.0.0.1 with `token`: the answer.
async fn login(port: u16, token: &str) -> String {
    let form = format!("token={token}");
    let headers = ["Content-Type: application/x-www-form-urlencoded".to_owned()];
    send(port, "POST", "/console/login", &format!("127.0.0.1:{port}"), &headers, &form).await
}

/// The session cookie (`pedidos_admin=<value>`) a login set.
fn session_cookie(answer: &str) -> String {
    let cookie = header(answer, "set-cookie").unwrap_or_else(|| panic!("no Set-Cookie in {answer}"));
    cookie.split(';').next().unwrap_or_default().to_owned()
}

/// `GET /console/api/session` with `cookie`: the status line and the body.
async fn session(port: u16, cookie: &str) -> (String, serde_json::Value) {
    let answer = send(port, "GET", "/console/api/session", "localhost", &[format!("Cookie: {cookie}")], "").await;
    (status(&answer).to_owned(), serde_json::from_str(body(&answer)).unwrap_or_default())
}

/// On the real binary: every login gets its own session and CSRF token, logout ends its session for every copy of
/// the cookie while the other goes on; the console and its login answer only under loopback names and
/// `ALLOWED_HOSTS` (421), while `/health` answers under the task's IP as a load balancer sends it; failed logins
/// from one address are throttled (429 with `Retry-After`, the right token included), each refusal logged with
/// `client=127.0.0.1`; neither the token nor an email address in a path reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_binary_ends_sessions_throttles_logins_and_checks_host_names() {
    let mut api = api(&[("ALLOWED_HOSTS", "console.internal")]);
    wait_live(&mut api).await;
    let port = api.port();

    let (first, second) = (login(port, ADMIN_TOKEN).await, login(port, ADMIN_TOKEN).await);
    for answer in [&first, &second] {
        assert!(status(answer).starts_with("HTTP/1.1 303"), "{answer}");
    }
    let (first, second) = (session_cookie(&first), session_cookie(&second));
    assert_ne!(first, second, "two logins, one cookie");
    let ((status_one, one), (status_two, two)) = (session(port, &first).await, session(port, &second).await);
    assert!(status_one.ends_with("200 OK") && status_two.ends_with("200 OK"), "{status_one} / {status_two}");
    let csrf = one["csrfToken"].as_str().unwrap_or_default().to_owned();
    assert_eq!(csrf.len(), 64, "{one}");
    assert_ne!(one["csrfToken"], two["csrfToken"], "two logins, one CSRF token");

    let logout = [format!("Cookie: {first}"), format!("X-CSRF-Token: {csrf}")];
    let answer = send(port, "POST", "/console/logout", "localhost", &logout, "").await;
    assert!(status(&answer).starts_with("HTTP/1.1 303"), "{answer}");
    assert!(session(port, &first).await.0.ends_with("401 Unauthorized"), "the logged-out cookie still works");
    assert!(session(port, &second).await.0.ends_with("200 OK"), "logout ended another session");

    for host in ["evil.example".to_owned(), format!("evil.example:{port}"), "console.internal.evil.example".into()] {
        for (path, cookie) in [("/console/login", String::new()), ("/console/api/session", format!("Cookie: {second}"))]
        {
            let answer = send(port, "GET", path, &host, &[cookie], "").await;
            assert!(status(&answer).starts_with("HTTP/1.1 421"), "{path} as {host}: {answer}");
        }
    }
    let answer = send(port, "GET", "/console/login", &format!("console.internal:{port}"), &[], "").await;
    assert!(status(&answer).starts_with("HTTP/1.1 200"), "under ALLOWED_HOSTS: {answer}");
    for path in ["/health", "/metrics"] {
        let answer = send(port, "GET", path, "10.0.3.17:8080", &[], "").await;
        assert!(!status(&answer).contains(" 421 "), "{path} under the task's IP: {answer}");
    }
    let answer = send(port, "GET", "/health", "10.0.3.17:8080", &[], "").await;
    assert!(status(&answer).starts_with("HTTP/1.1 200"), "a load balancer's health check: {answer}");

    let answer = send(port, "GET", "/api/suscripcion/estado/ops%40example.com", "localhost", &[], "").await;
    assert!(status(&answer).starts_with("HTTP/1.1 401"), "{answer}");

    let free = 5;
    for n in 0..free {
        let answer = login(port, "a-wrong-token-of-the-right-length-0123").await;
        assert!(status(&answer).starts_with("HTTP/1.1 401"), "failure {n}: {answer}");
    }
    let answer = login(port, ADMIN_TOKEN).await;
    assert!(status(&answer).starts_with("HTTP/1.1 429"), "locked out, the right token too: {answer}");
    let retry_after: u64 = header(&answer, "retry-after").and_then(|v| v.parse().ok()).unwrap_or_default();
    assert!(retry_after >= 1, "Retry-After: {retry_after}");
    assert!(header(&answer, "set-cookie").is_none(), "{answer}");

    api.signal_term();
    let exit = api.wait_exit(Duration::from_secs(10)).await;
    assert!(exit.is_some_and(|s| s.success()), "exit {exit:?}; log:\n{}", api.log_text());
    let log = api.log_text();
    let refused: Vec<&str> = log.lines().filter(|line| line.contains("admin login refused")).collect();
    assert_eq!(refused.len(), free + 1, "{log}");
    assert!(refused.iter().all(|line| line.contains(r#""client":"127.0.0.1""#)), "{log}");
    assert!(log.contains("too many failures"), "{log}");
    assert!(log.lines().filter(|l| l.contains(r#""message":"admin login""#)).count() >= 2, "{log}");
    for secret in [ADMIN_TOKEN, "example.com", first.as_str(), second.as_str(), csrf.as_str()] {
        assert!(!log.contains(secret), "{secret} reached the log:\n{log}");
    }
}

/// An `ADMIN_TOKEN` under 32 characters stops the API at start, naming the variable and never the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_admin_token_is_refused_at_start() {
    let short = "only-thirty-one-characters-long";
    assert_eq!(short.len(), 31);
    let completed = Service::builder("pedidos-api")
        .name(e2e::unique("api-short-token"))
        .env("AWS_ENDPOINT_URL", refused_endpoint())
        .env("SNS_TOPIC_ARN", TOPIC)
        .env("ADMIN_TOKEN", short)
        .run(START)
        .await;
    assert!(completed.status.is_some_and(|s| !s.success()), "{completed:?}");
    assert!(completed.stderr.contains("ADMIN_TOKEN") && completed.stderr.contains("at least 32"), "{completed:?}");
    assert!(!completed.stderr.contains(short) && !completed.stdout.contains(short), "the value was printed");
}

/// The status line of the next answer on a kept-alive connection, or `None` if none came within `deadline`.
async fn next_status(stream: &mut TcpStream, deadline: Duration) -> Option<String> {
    read_answer(stream, deadline).await.map(|answer| status(&answer).to_owned())
}

/// `HTTP_MAX_CONNECTIONS` on both binaries: with 2, a third connection waits (unanswered) while two are held, and is
/// answered once one closes; the API says so in one WARN. The worker's live page answers only under loopback names
/// and `ALLOWED_HOSTS`, its `/health` under any name, on a port that also drops a client that never finishes its
/// headers (`HTTP_HEADER_READ_TIMEOUT_SECONDS`, 3 s here: the held connections stay well within it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_and_the_worker_host_check_hold_on_the_real_binaries() {
    let mut api = api(&[("HTTP_MAX_CONNECTIONS", "2")]);
    wait_live(&mut api).await;
    let mut worker = Service::builder("pedidos-worker")
        .name(e2e::unique("worker-edge"))
        .env("AWS_ENDPOINT_URL", refused_endpoint())
        .env("SQS_QUEUE_URL", "edge-e2e-never-found")
        .env("WORKER_ROLE", "process")
        .env("ALLOWED_HOSTS", "worker.internal")
        .env("HTTP_MAX_CONNECTIONS", "2")
        .env("HTTP_HEADER_READ_TIMEOUT_SECONDS", "3")
        .spawn();
    wait_live(&mut worker).await;

    for service in [&api, &worker] {
        let port = service.port();
        let ask = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap_or_else(|e| panic!("{e}"));
            stream.write_all(ask).await.unwrap_or_else(|e| panic!("{e}"));
            let answer = next_status(&mut stream, ANSWER).await;
            assert_eq!(answer.as_deref(), Some("HTTP/1.1 200 OK"), "{}", service.name());
            held.push(stream);
        }
        let mut third = TcpStream::connect(("127.0.0.1", port)).await.unwrap_or_else(|e| panic!("{e}"));
        third.write_all(ask).await.unwrap_or_else(|e| panic!("{e}"));
        let early = next_status(&mut third, Duration::from_millis(500)).await;
        assert_eq!(early, None, "{}: served past HTTP_MAX_CONNECTIONS=2", service.name());
        held.truncate(1);
        let answer = next_status(&mut third, ANSWER).await;
        assert_eq!(answer.as_deref(), Some("HTTP/1.1 200 OK"), "{}: served once a slot was free", service.name());
    }

    let port = worker.port();
    for path in ["/", "/live.js", "/events"] {
        for host in ["evil.example".to_owned(), format!("evil.example:{port}"), "127.0.0.2".into()] {
            let answer = send(port, "GET", path, &host, &[], "").await;
            assert!(status(&answer).starts_with("HTTP/1.1 421"), "{path} as {host}: {answer}");
        }
    }
    for host in [format!("worker.internal:{port}"), format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let answer = send(port, "GET", "/live.js", &host, &[], "").await;
        assert!(status(&answer).starts_with("HTTP/1.1 200"), "as {host}: {answer}");
    }
    let answer = send(port, "GET", "/health", "10.0.3.17:8081", &[], "").await;
    assert!(status(&answer).starts_with("HTTP/1.1 200"), "a health check under the task's IP: {answer}");
    let mut slow = TcpStream::connect(("127.0.0.1", port)).await.unwrap_or_else(|e| panic!("{e}"));
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n").await.unwrap_or_else(|e| panic!("{e}"));
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(ANSWER, slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a client that never finished its headers was not disconnected");
    assert!(!String::from_utf8_lossy(&rest).contains("HTTP/1.1 200"), "a stalled request was served");

    for service in [&mut api, &mut worker] {
        service.signal_term();
        let exit = service.wait_exit(Duration::from_secs(15)).await;
        assert!(exit.is_some_and(|s| s.success()), "{} exit {exit:?}; log:\n{}", service.name(), service.log_text());
    }
    let log = api.log_text();
    let warnings = log.lines().filter(|l| l.contains("connection limit reached")).count();
    assert_eq!(warnings, 1, "one WARN for the episode:\n{log}");
    assert!(log.contains(r#""limit":2"#), "{log}");
}

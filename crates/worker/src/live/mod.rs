//! The worker's own live page on its health port: the stream of outcome lines the seed's console showed, filterable
//! by outcome, with the counters since start.
//!
//! [`Feed`] is a bounded `broadcast` channel fed by [`crate::consumer::Consumer::settle`], plus a ring of the last
//! [`BACKLOG`] lines, so a page opened after something happened still shows it. With nobody watching it costs one
//! atomic add, one small line and one short lock per message; lines are serialised only for a viewer. A viewer that
//! falls behind skips lines and is told how many (`lagged` event) instead of slowing the worker down.
//!
//! Routes (merged into [`crate::health::router`]): `GET /` (the page), `/live.js`, `/live.css`, and `GET /events`
//! (Server-Sent Events: `outcome` lines as JSON, `counters` every [`COUNTERS_EVERY`], `lagged` notices). They answer
//! only requests made to the port directly, never through a proxy or load balancer ([`direct_only`]), and only under
//! a loopback name or one of `ALLOWED_HOSTS` (DNS rebinding). The page is
//! plain HTML, CSS and JavaScript compiled into the binary: no CDN, no build step. Everything it displays is inserted
//! with `textContent`, and a Content-Security-Policy without inline script backs that up, because a message's body,
//! request id and note are attacker-controlled text.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::{self, HeaderName};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use platform::http::AllowedHosts;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::consumer::Outcome;
use crate::health::Health;

/// Lines a viewer may fall behind by before it skips (and is told so).
pub const CAPACITY: usize = 1024;
/// Lines kept for a page opened later (about 100 KB at most).
pub const BACKLOG: usize = 200;
/// How often `/events` sends the `counters` event (and so keeps idle connections alive).
pub const COUNTERS_EVERY: Duration = Duration::from_secs(2);

const PAGE: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("live.js");
const STYLE: &str = include_str!("live.css");

/// Only the page's own files; `frame-ancestors` keeps it from being framed (clickjacking).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'";

/// One settled message, as the page shows it: the fields of the worker's log line.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutcomeLine {
    /// When it was settled, RFC 3339 UTC with milliseconds.
    pub time: String,
    pub outcome: Outcome,
    /// What was done with it: `delete`, `retry`, `release`, `dead_letter`, `none`, or why nothing could be done.
    pub action: &'static str,
    pub pedido_id: Option<Uuid>,
    pub version: Option<u64>,
    #[serde(rename = "type")]
    pub event_type: Option<&'static str>,
    pub request_id: Option<String>,
    /// The `rejectReason` of a dead letter.
    pub reason: Option<String>,
    /// The visibility delay of a retried message.
    pub retry_in_seconds: Option<u64>,
    /// The log line's message: what happened, in a few words (a decode error's detail for poison).
    pub note: String,
    pub message_id: String,
    pub receive_count: u32,
}

#[cfg(test)]
impl OutcomeLine {
    /// A duplicate's line for `message_id`, everything else empty.
    pub(crate) fn sample(message_id: &str) -> Self {
        Self {
            time: String::new(),
            outcome: Outcome::Duplicate,
            action: "delete",
            pedido_id: None,
            version: None,
            event_type: None,
            request_id: None,
            reason: None,
            retry_in_seconds: None,
            note: String::new(),
            message_id: message_id.to_owned(),
            receive_count: 1,
        }
    }
}

/// The live stream of outcome lines and the outcome counts since start.
pub struct Feed {
    lines: broadcast::Sender<Arc<OutcomeLine>>,
    /// The last [`BACKLOG`] lines, oldest first. Held while a line is sent, so a new viewer's backlog and its
    /// receiver meet exactly: no line lost or shown twice between them.
    recent: std::sync::Mutex<std::collections::VecDeque<Arc<OutcomeLine>>>,
    /// Indexed like [`Outcome::ALL`]; counted here as well as in the registry, so the page reads them cheaply.
    counts: [AtomicU64; Outcome::ALL.len()],
    /// Cancelled when the worker stops: open `/events` streams end, so the HTTP server's graceful shutdown does not
    /// wait for a browser tab.
    closed: CancellationToken,
}

impl Default for Feed {
    fn default() -> Self {
        Self::new()
    }
}

impl Feed {
    pub fn new() -> Self {
        let (lines, _) = broadcast::channel(CAPACITY);
        Self {
            lines,
            recent: std::sync::Mutex::new(std::collections::VecDeque::with_capacity(BACKLOG)),
            counts: Default::default(),
            closed: CancellationToken::new(),
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<Arc<OutcomeLine>>> {
        // A panic while holding it cannot leave the ring inconsistent (push and pop only): keep using it.
        self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts `outcome`, keeps the line `make` builds in the backlog, and sends it to the viewers.
    pub fn publish(&self, outcome: Outcome, make: impl FnOnce() -> OutcomeLine) {
        self.counts[outcome as usize].fetch_add(1, Ordering::Relaxed);
        let line = Arc::new(make());
        let mut recent = self.recent();
        if recent.len() == BACKLOG {
            recent.pop_front();
        }
        recent.push_back(Arc::clone(&line));
        if self.lines.receiver_count() > 0 {
            // An error means the last receiver left in the meantime: nobody to tell.
            let _ = self.lines.send(line);
        }
    }

    /// The backlog (oldest first) and a receiver of every line published after it.
    pub fn subscribe(&self) -> (Vec<Arc<OutcomeLine>>, broadcast::Receiver<Arc<OutcomeLine>>) {
        let recent = self.recent();
        (recent.iter().cloned().collect(), self.lines.subscribe())
    }

    /// Outcome counts since start, in [`Outcome::ALL`] order.
    pub fn counts(&self) -> [(Outcome, u64); Outcome::ALL.len()] {
        Outcome::ALL.map(|outcome| (outcome, self.counts[outcome as usize].load(Ordering::Relaxed)))
    }

    /// Ends every open `/events` stream (the worker is stopping).
    pub fn close(&self) {
        self.closed.cancel();
    }
}

/// `GET /`, `/live.js`, `/live.css` and `/events`, for requests made directly ([`direct_only`]) to one of `hosts`
/// or a loopback name (421 otherwise: a page reached under a foreign name was reached by DNS rebinding).
pub fn router(health: Arc<Health>, hosts: Arc<AllowedHosts>) -> Router {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", PAGE) }))
        .route("/live.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/live.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/events", get(events))
        .route_layer(middleware::from_fn_with_state(hosts, platform::http::require_allowed_host))
        .route_layer(middleware::from_fn(direct_only))
        .with_state(health)
}

/// Headers a proxy or load balancer adds to what it forwards.
const PROXY_HEADERS: [&str; 3] = ["x-forwarded-for", "forwarded", "x-real-ip"];

/// The page shows order ids, request ids and poison messages' details: it is for operators on the worker's own
/// (internal) port. A deployment that puts a load balancer in front of that port for `/health` (Elastic Beanstalk's
/// nginx and ALB do) must not publish it, so a request that came through a proxy is answered as if the page did not
/// exist.
async fn direct_only(request: Request, next: Next) -> Response {
    if PROXY_HEADERS.iter().any(|name| request.headers().contains_key(*name)) {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    next.run(request).await
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // Served from the binary: a new deploy must show its own page, not a cached one.
            (header::CACHE_CONTROL, "no-cache"),
            (HeaderName::from_static("referrer-policy"), "no-referrer"),
        ],
        body,
    )
}

/// What one `/events` connection holds.
struct Viewer {
    /// Lines from before the page connected, sent first.
    backlog: std::vec::IntoIter<Arc<OutcomeLine>>,
    lines: broadcast::Receiver<Arc<OutcomeLine>>,
    counters: tokio::time::Interval,
    health: Arc<Health>,
    closed: CancellationToken,
}

async fn events(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let (backlog, lines) = health.live.subscribe();
    let viewer = Viewer {
        backlog: backlog.into_iter(),
        lines,
        counters: tokio::time::interval(COUNTERS_EVERY),
        closed: health.live.closed.clone(),
        health,
    };
    let stream = futures_util::stream::unfold(viewer, |mut viewer| async move {
        if let Some(line) = viewer.backlog.next() {
            return Some((Ok::<_, Infallible>(json_event("outcome", &*line)), viewer));
        }
        let event = tokio::select! {
            // Counters first: they come every 2 s at most, so they never starve the lines, and a busy worker's page
            // still shows fresh totals.
            biased;
            () = viewer.closed.cancelled() => return None,
            _ = viewer.counters.tick() => json_event("counters", &counters(&viewer.health)),
            line = viewer.lines.recv() => match line {
                Ok(line) => json_event("outcome", &*line),
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    json_event("lagged", &serde_json::json!({ "skipped": skipped }))
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            },
        };
        Some((Ok::<_, Infallible>(event), viewer))
    });
    ([(header::X_CONTENT_TYPE_OPTIONS, "nosniff")], Sse::new(stream))
}

/// The `counters` event: outcome counts since start plus the `/health` report (status, in-flight, queue depth).
fn counters(health: &Health) -> serde_json::Value {
    let outcomes: serde_json::Map<String, serde_json::Value> =
        health.live.counts().into_iter().map(|(outcome, n)| (outcome.as_str().to_owned(), n.into())).collect();
    let mut report = health.report();
    if let Some(fields) = report.as_object_mut() {
        fields.insert("outcomes".into(), outcomes.into());
    }
    report
}

/// A named SSE event with `value` as JSON data (compact JSON has no raw newline, so it cannot break the framing).
fn json_event(name: &'static str, value: &impl Serialize) -> Event {
    let event = Event::default().event(name);
    match serde_json::to_string(value) {
        Ok(json) => event.data(json),
        // Our own structs always serialise; if one ever did not, the viewer sees why instead of a broken stream.
        Err(e) => Event::default().comment(format!("cannot serialise a {name} event: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Markup is never built from strings: every value reaches the page through `textContent`.
    #[test]
    fn the_page_never_parses_data_as_markup() {
        for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function(", "srcdoc"] {
            assert!(!SCRIPT.contains(sink), "live.js uses {sink}");
            assert!(!PAGE.contains(sink), "index.html uses {sink}");
        }
        assert!(SCRIPT.contains("textContent"), "live.js inserts text with textContent");
    }

    /// The CSP forbids inline script and style, so the page must have none (it would silently not run).
    #[test]
    fn the_page_has_no_inline_script_style_or_handlers() {
        let page = PAGE.to_ascii_lowercase();
        assert_eq!(page.matches("<script").count(), 1, "one script element");
        assert!(page.contains(r#"<script src="live.js" defer></script>"#), "the script is the external file");
        assert!(!page.contains("<style"), "no inline style element");
        assert!(!page.contains(" style="), "no style attributes");
        let handler_attribute = page.match_indices(" on").any(|(at, _)| {
            let rest = &page[at + 3..];
            let name_len = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            name_len > 0 && rest[name_len..].trim_start().starts_with('=')
        });
        assert!(!handler_attribute, "no inline event handler attributes (onclick=, onload=, ...)");
        assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("//cdn"), "nothing remote");
    }

    /// A page opened later gets the last [`BACKLOG`] lines, oldest first, then every new line, none twice.
    #[test]
    fn a_new_viewer_gets_the_bounded_backlog_then_the_new_lines() {
        let feed = Feed::new();
        for n in 0..BACKLOG + 5 {
            feed.publish(Outcome::Processed, || line(&format!("m{n}")));
        }
        assert_eq!(feed.counts()[0], (Outcome::Processed, BACKLOG as u64 + 5));
        let (backlog, mut viewer) = feed.subscribe();
        let ids: Vec<&str> = backlog.iter().map(|l| l.message_id.as_str()).collect();
        assert_eq!((ids.len(), ids.first().copied(), ids.last().copied()), (BACKLOG, Some("m5"), Some("m204")));
        feed.publish(Outcome::Duplicate, || line("next"));
        assert_eq!(viewer.try_recv().map(|l| l.message_id.clone()).ok().as_deref(), Some("next"));
        assert!(viewer.try_recv().is_err(), "nothing from the backlog comes again");
    }

    /// A viewer that falls behind skips the oldest lines and is told how many.
    #[test]
    fn a_lagging_viewer_is_told_how_many_lines_it_skipped() {
        let feed = Feed::new();
        let (_, mut viewer) = feed.subscribe();
        for n in 0..CAPACITY + 3 {
            feed.publish(Outcome::Duplicate, || line(&format!("m{n}")));
        }
        assert!(matches!(viewer.try_recv(), Err(broadcast::error::TryRecvError::Lagged(3))));
        assert_eq!(viewer.try_recv().map(|l| l.message_id.clone()).ok().as_deref(), Some("m3"));
    }

    fn line(message_id: &str) -> OutcomeLine {
        OutcomeLine::sample(message_id)
    }
}

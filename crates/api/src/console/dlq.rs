//! The DLQ panel: list, redrive and delete, with `pedidos-admin`'s scan (listing never consumes; a message is
//! deleted only after its copy was confirmed; everything else is made visible again). Every answer says whether the
//! walk reached the point where SQS counted no visible message left (`complete`), and if not, how many it still
//! counted (`visibleLeft`).

use std::collections::HashSet;
use std::time::Duration;

use pedidos_admin::error::AdminError;
use pedidos_admin::message::{now_ms, DlqMessage};
use pedidos_admin::redrive::{self, Tracker, Verdict};
use pedidos_admin::scan::{DlqReader, Scan};
use pedidos_admin::sqs;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::sampler::QueueRef;
use super::Selection;
use crate::error::ApiError;

/// Most messages the panel lists (the CLI is there for more).
const LIST_MAX: usize = 200;
/// Characters of the body the panel previews.
const PREVIEW: usize = 300;
/// How long a walk keeps receiving while SQS counts visible messages it cannot reach. Shorter than the CLI's
/// (`scan::PATIENCE`): a person waits on the page and other DLQ requests wait their turn; when it runs out the
/// answer says `complete: false` and the panel tells the operator to look again.
const PATIENCE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Redrive,
    Delete,
}

fn unavailable(error: AdminError) -> ApiError {
    if let AdminError::Denied(denied) = &error {
        tracing::error!(error = %denied, "console DLQ: denied; the API role's policy lacks this action");
    }
    ApiError::Unavailable(format!("console DLQ: {error}"))
}

fn dlq_url(queue: &QueueRef) -> Result<&str, ApiError> {
    queue.dlq_url.as_deref().ok_or_else(|| ApiError::NotFound(format!("queue {} has no DLQ", queue.name)))
}

fn entry(message: &DlqMessage, now: u64) -> Value {
    json!({
        "messageId": message.message_id,
        "pedidoId": message.pedido_id(),
        "rejectReason": message.reason(),
        "rejectDetail": message.attribute("rejectDetail"),
        "receiveCount": message.receive_count,
        "ageSeconds": message.age(now).map(|age| age.as_secs()),
        // Raw text: the page inserts it as text, never as markup.
        "bodyPreview": message.body.chars().take(PREVIEW).collect::<String>(),
    })
}

/// A walk over `queue`'s DLQ.
fn scan(client: &aws_sdk_sqs::Client, queue: &QueueRef) -> Result<Scan, ApiError> {
    Ok(Scan::new(client, dlq_url(queue)?).with_patience(PATIENCE))
}

/// Releases what `scan` holds, logging what could not be released.
async fn release<R: DlqReader>(scan: &mut Scan<R>) {
    let failures = scan.release().await;
    if !failures.is_empty() {
        tracing::warn!(
            count = failures.len(),
            "console: DLQ messages not made visible again; they reappear by themselves"
        );
    }
}

/// `{"queue", "dlq", "messages": [...], "truncated", "complete", "visibleLeft"}`: `complete` is false when the list
/// is not the whole DLQ (truncated, or the walk stopped while SQS still counted `visibleLeft` visible messages).
///
/// # Errors
/// 404 without a DLQ, 503 when SQS fails.
pub async fn list(client: &aws_sdk_sqs::Client, queue: &QueueRef) -> Result<Value, ApiError> {
    listing(scan(client, queue)?, queue).await
}

async fn listing<R: DlqReader>(mut scan: Scan<R>, queue: &QueueRef) -> Result<Value, ApiError> {
    let now = now_ms();
    let mut messages = Vec::new();
    let result = async {
        while messages.len() < LIST_MAX {
            let batch = scan.next_batch().await?;
            if batch.is_empty() {
                break;
            }
            messages.extend(batch.iter().map(|m| entry(m, now)));
        }
        Ok::<_, AdminError>(())
    }
    .await;
    // Whatever happened, nothing stays hidden.
    release(&mut scan).await;
    result.map_err(unavailable)?;
    let truncated = messages.len() >= LIST_MAX;
    Ok(json!({
        "queue": queue.name,
        "dlq": queue.dlq_name,
        "messages": messages,
        "truncated": truncated,
        "complete": scan.complete(),
        "visibleLeft": scan.stopped_early(),
    }))
}

/// Redrives (copy to the queue whose DLQ this is, then delete) or deletes the selected messages, within
/// [`ACTION_DEADLINE`].
/// `{"done": n, "failed": [{"messageId", "error"}], "notFound": [ids], "refused": [{"messageId", "sourceQueue"}],
/// "rejectedAgain": [{"messageId", "redrivenFrom", "reason", "detail"}], "leftForNextRun": n, "destination",
/// "deadlineReached", "complete", "visibleLeft"}`: `complete` is false when the walk stopped while SQS still
/// counted `visibleLeft` visible messages it had not reached (with `all`, those were not acted on; with ids, those in
/// `notFound` may be among them).
///
/// A redrive goes to the queue whose DLQ this is, never to a message's `sourceQueue` attribute (a message naming
/// another queue is refused and left), and touches each message at most once: a copy the worker rejects again comes
/// back under a new id and is reported in `rejectedAgain`, never redriven (see `pedidos_admin::redrive`).
///
/// # Errors
/// 404 without a DLQ, 503 when listing fails.
pub async fn act(
    client: &aws_sdk_sqs::Client,
    queue: &QueueRef,
    selection: &Selection,
    action: Action,
) -> Result<Value, ApiError> {
    let deadline = Instant::now() + ACTION_DEADLINE;
    acting(client, scan(client, queue)?.with_deadline(deadline), queue, selection, action, deadline).await
}

/// How long an action may take before it answers with what it did: a person waits on the page.
pub const ACTION_DEADLINE: Duration = Duration::from_secs(20);
/// The most of the deadline a redrive spends watching for its copies coming back rejected.
const WATCH: Duration = Duration::from_secs(10);

/// What one action did, as the answer says it.
#[derive(Default)]
struct Outcome {
    done: usize,
    failed: Vec<Value>,
    refused: Vec<Value>,
    rejected_again: Vec<Value>,
    left_for_next_run: usize,
}

impl Outcome {
    /// A message this run must not redrive: one of its copies back again (reported), or the next run's (counted).
    fn returned(&mut self, tracker: &mut Tracker, message: &DlqMessage) {
        if tracker.judge(message) == Verdict::RejectedAgain {
            let from = tracker.came_back(message);
            self.rejected_again.push(json!({
                "messageId": message.message_id,
                "redrivenFrom": from,
                "reason": message.reason(),
                "detail": message.attribute("rejectDetail"),
            }));
        } else {
            self.left_for_next_run += 1;
        }
    }
}

async fn acting<R: DlqReader>(
    client: &aws_sdk_sqs::Client,
    mut scan: Scan<R>,
    queue: &QueueRef,
    selection: &Selection,
    action: Action,
    deadline: Instant,
) -> Result<Value, ApiError> {
    let url = dlq_url(queue)?;
    let wanted: HashSet<&str> = selection.message_ids.iter().map(String::as_str).collect();
    // The queue whose DLQ this is (its redrive policy names the DLQ), never a message's own sourceQueue.
    let mut tracker = (action == Action::Redrive).then(|| Tracker::new(&queue.url, now_ms()));
    let mut outcome = Outcome::default();
    let mut found = HashSet::new();
    let mut deadline_reached = false;
    let result = async {
        'walk: loop {
            let batch = scan.next_batch().await?;
            if batch.is_empty() {
                break;
            }
            for message in batch {
                if Instant::now() >= deadline {
                    deadline_reached = true;
                    break 'walk;
                }
                let verdict = tracker.as_ref().map(|tracker| tracker.judge(&message));
                if let (Some(tracker), Some(Verdict::RejectedAgain | Verdict::AlreadyRedriven | Verdict::Arrived)) =
                    (tracker.as_mut(), &verdict)
                {
                    // Whatever the selection: a copy rejected again has a new id the operator never picked.
                    outcome.returned(tracker, &message);
                    continue;
                }
                if !selection.all && !wanted.contains(message.message_id.as_str()) {
                    continue;
                }
                found.insert(message.message_id.clone());
                let result = match (action, verdict, tracker.as_mut()) {
                    (Action::Redrive, Some(Verdict::Refused { source_queue }), _) => {
                        outcome.refused.push(json!({
                            "messageId": message.message_id,
                            "sourceQueue": source_queue,
                            "destination": queue.url,
                        }));
                        continue;
                    }
                    (Action::Redrive, _, Some(tracker)) => {
                        match sqs::send_copy(client, tracker.destination(), &message).await {
                            Ok(copy_id) => {
                                tracker.redriven(&message, &copy_id);
                                // Deleted only once the copy exists.
                                sqs::delete(client, url, &message.receipt_handle).await
                            }
                            Err(error) => Err(error),
                        }
                    }
                    _ => sqs::delete(client, url, &message.receipt_handle).await,
                };
                match result {
                    Ok(()) => {
                        scan.deleted(&message);
                        outcome.done += 1;
                    }
                    Err(error) => {
                        outcome.failed.push(json!({"messageId": message.message_id, "error": error.to_string()}));
                    }
                }
            }
            if !selection.all && found.len() == wanted.len() {
                break;
            }
        }
        if let Some(tracker) = tracker.as_mut() {
            let until = deadline.min(Instant::now() + WATCH);
            redrive::watch(client, &mut scan, tracker, until, |tracker, message| outcome.returned(tracker, &message))
                .await?;
        }
        Ok::<_, AdminError>(())
    }
    .await;
    release(&mut scan).await;
    result.map_err(unavailable)?;
    let not_found: Vec<&str> = wanted.iter().filter(|id| !found.contains(**id)).copied().collect();
    // Every selected message found is complete whatever the walk would have said next.
    let complete = !deadline_reached && (scan.complete() || (!selection.all && not_found.is_empty()));
    let visible_left = if complete { None } else { scan.stopped_early() };
    tracing::info!(
        queue = %queue.name,
        ?action,
        done = outcome.done,
        failed = outcome.failed.len(),
        refused = outcome.refused.len(),
        rejected_again = outcome.rejected_again.len(),
        complete,
        deadline_reached,
        "console DLQ action"
    );
    Ok(json!({
        "done": outcome.done,
        "failed": outcome.failed,
        "notFound": not_found,
        "refused": outcome.refused,
        "rejectedAgain": outcome.rejected_again,
        "leftForNextRun": outcome.left_for_next_run,
        "destination": (action == Action::Redrive).then_some(&queue.url),
        "deadlineReached": deadline_reached,
        "complete": complete,
        "visibleLeft": visible_left,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// A DLQ whose first receive returns `batch` and every later one nothing, while SQS counts `counted` visible
    /// messages: messages it will never hand out (a lagging count, a held FIFO group).
    struct Stuck {
        batch: Mutex<Vec<DlqMessage>>,
        counted: u64,
    }

    impl DlqReader for Stuck {
        async fn receive(&self) -> Result<Vec<DlqMessage>, AdminError> {
            Ok(std::mem::take(&mut *self.batch.lock().unwrap_or_else(std::sync::PoisonError::into_inner)))
        }

        async fn visible(&self) -> Result<u64, AdminError> {
            Ok(self.counted)
        }

        async fn change_visibility(&self, _: &[(String, String)], _: Duration) -> Vec<String> {
            Vec::new()
        }
    }

    fn stuck(ids: &[&str], counted: u64) -> Scan<Stuck> {
        let batch = ids
            .iter()
            .map(|id| DlqMessage {
                message_id: (*id).to_owned(),
                receipt_handle: format!("{id}#1"),
                body: "{}".into(),
                sent_at_ms: None,
                receive_count: 1,
                attributes: BTreeMap::new(),
                system: BTreeMap::new(),
            })
            .collect();
        holding(batch, counted)
    }

    fn holding(batch: Vec<DlqMessage>, counted: u64) -> Scan<Stuck> {
        Scan::over(Stuck { batch: Mutex::new(batch), counted }).with_patience(PATIENCE)
    }

    /// A client that is never called (a call would fail: nothing listens on its endpoint's port).
    fn unused_client() -> aws_sdk_sqs::Client {
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:1")
            .build();
        aws_sdk_sqs::Client::from_conf(config)
    }

    fn with_source(id: &str, source_queue: &str, sent_at_ms: u64) -> DlqMessage {
        use pedidos_admin::message::{AttributeData, AttributeValue};
        let value = AttributeValue { data_type: "String".into(), data: AttributeData::Text(source_queue.into()) };
        DlqMessage {
            message_id: id.into(),
            receipt_handle: format!("{id}#1"),
            body: "{}".into(),
            sent_at_ms: Some(sent_at_ms),
            receive_count: 1,
            attributes: BTreeMap::from([("sourceQueue".to_owned(), value)]),
            system: BTreeMap::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_redrive_refuses_a_forged_source_queue_and_leaves_newer_messages() {
        let forged = with_source("forged", "http://127.0.0.1:1/000000000000/elsewhere", 1);
        // Entered the DLQ after the run started: the next run's, whatever it says.
        let newer = with_source("newer", &queue().url, now_ms() + 60_000);
        let all = Selection { message_ids: Vec::new(), all: true };
        let answer = acting(&unused_client(), holding(vec![forged, newer], 0), &queue(), &all, Action::Redrive, far())
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(answer["done"], json!(0), "{answer}");
        assert_eq!(answer["failed"], json!([]), "nothing was even tried; {answer}");
        assert_eq!(
            answer["refused"],
            json!([{"messageId": "forged", "sourceQueue": "http://127.0.0.1:1/000000000000/elsewhere",
                    "destination": queue().url}])
        );
        assert_eq!((&answer["leftForNextRun"], &answer["rejectedAgain"]), (&json!(1), &json!([])), "{answer}");
        assert_eq!(answer["destination"], json!(queue().url));
    }

    #[tokio::test(start_paused = true)]
    async fn an_action_answers_by_its_deadline() {
        let all = Selection { message_ids: Vec::new(), all: true };
        // SQS counts messages no receive returns: without a deadline the walk would try for its whole patience.
        let deadline = Instant::now() + Duration::from_secs(3);
        let started = Instant::now();
        let answer =
            acting(&unused_client(), stuck(&[], 5).with_deadline(deadline), &queue(), &all, Action::Redrive, deadline)
                .await
                .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(started.elapsed() < PATIENCE, "{:?}", started.elapsed());
        assert_eq!((&answer["complete"], &answer["visibleLeft"]), (&json!(false), &json!(5)), "{answer}");
    }

    /// A deadline the test never reaches.
    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    fn queue() -> QueueRef {
        QueueRef {
            role: "process",
            name: "q".into(),
            url: "http://127.0.0.1:1/000000000000/q".into(),
            dlq_name: Some("q-dlq".into()),
            dlq_url: Some("http://127.0.0.1:1/000000000000/q-dlq".into()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_list_says_whether_it_is_the_whole_dlq() {
        let answer = listing(stuck(&["a"], 0), &queue()).await.unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(answer["messages"].as_array().map(Vec::len), Some(1));
        assert_eq!((&answer["complete"], &answer["visibleLeft"]), (&json!(true), &Value::Null), "{answer}");

        let answer = listing(stuck(&["a"], 2), &queue()).await.unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(answer["messages"].as_array().map(Vec::len), Some(1));
        assert_eq!((&answer["complete"], &answer["visibleLeft"]), (&json!(false), &json!(2)), "{answer}");
        assert_eq!(answer["truncated"], json!(false));
    }

    #[tokio::test(start_paused = true)]
    async fn an_action_that_stopped_early_says_so() {
        // Never sends: nothing is ever received, so no copy or delete is attempted.
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .build();
        let client = aws_sdk_sqs::Client::from_conf(config);
        let all = Selection { message_ids: Vec::new(), all: true };
        let answer = acting(&client, stuck(&[], 3), &queue(), &all, Action::Redrive, far())
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(answer["done"], json!(0));
        assert_eq!((&answer["complete"], &answer["visibleLeft"]), (&json!(false), &json!(3)), "{answer}");

        let some = Selection { message_ids: vec!["x".into()], all: false };
        let answer = acting(&client, stuck(&[], 3), &queue(), &some, Action::Delete, far())
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(answer["notFound"], json!(["x"]));
        assert_eq!((&answer["complete"], &answer["visibleLeft"]), (&json!(false), &json!(3)), "{answer}");

        // Not found in a DLQ walked to its end: complete, the id is simply not there.
        let answer = acting(&client, stuck(&[], 0), &queue(), &some, Action::Delete, far())
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((&answer["complete"], &answer["notFound"]), (&json!(true), &json!(["x"])), "{answer}");
    }
}

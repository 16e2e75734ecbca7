//! What the console shows, sampled once for every viewer: queue depths, throughput, the latest orders.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::{json, Value};
use store::OrderReads;
use tokio::sync::{broadcast, OnceCell};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// How often the console samples.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples kept: the rolling charts' 15 minutes.
pub const HISTORY: usize = 15 * 60 / 5;
/// Latest orders shown.
const LATEST: u32 = 15;

/// Orders this process accepted (202) since it started: the console's "accepted per second".
static ACCEPTED: AtomicU64 = AtomicU64::new(0);

/// Counts an accepted order for the console.
pub fn record_accepted() {
    ACCEPTED.fetch_add(1, Ordering::Relaxed);
}

/// One queue the topic delivers to, with its DLQ.
#[derive(Debug, Clone)]
pub struct QueueRef {
    /// `process` or `logistics`.
    pub role: &'static str,
    pub name: String,
    pub url: String,
    pub dlq_name: Option<String>,
    pub dlq_url: Option<String>,
}

/// Shared by the console's routes; samples in one background task.
pub struct Console {
    sqs: aws_sdk_sqs::Client,
    sns: aws_sdk_sns::Client,
    topic: String,
    orders: Arc<dyn OrderReads>,
    queues: OnceCell<Vec<QueueRef>>,
    history: Mutex<VecDeque<Arc<str>>>,
    updates: broadcast::Sender<Arc<str>>,
    sampling: AtomicBool,
    shutdown: CancellationToken,
    /// Listing a DLQ hides its messages for a moment: a redrive or delete running at the same time would miss them.
    /// One DLQ operation at a time per API process (every viewer's panel lists again when a depth changes).
    dlq_lock: tokio::sync::Mutex<()>,
    /// `TRACE_URL_TEMPLATE`, set once at start-up when configured.
    trace_url: std::sync::OnceLock<super::order_view::TraceUrl>,
}

#[derive(Default)]
struct Previous {
    at: Option<Instant>,
    accepted: u64,
    applied: BTreeMap<String, u64>,
}

impl Console {
    pub fn new(
        sqs: aws_sdk_sqs::Client,
        sns: aws_sdk_sns::Client,
        topic: String,
        orders: Arc<dyn OrderReads>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            sqs,
            sns,
            topic,
            orders,
            queues: OnceCell::new(),
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
            updates: broadcast::channel(16).0,
            sampling: AtomicBool::new(false),
            shutdown,
            dlq_lock: tokio::sync::Mutex::new(()),
            trace_url: std::sync::OnceLock::new(),
        })
    }

    /// Links trace ids in the order view to `url` (`TRACE_URL_TEMPLATE`); the first call wins.
    pub fn link_traces(&self, url: super::order_view::TraceUrl) {
        let _ = self.trace_url.set(url);
    }

    pub fn trace_url(&self) -> Option<&super::order_view::TraceUrl> {
        self.trace_url.get()
    }

    /// The order store the console reads.
    pub fn orders(&self) -> &dyn OrderReads {
        self.orders.as_ref()
    }

    pub fn sqs(&self) -> &aws_sdk_sqs::Client {
        &self.sqs
    }

    /// Held for the length of one DLQ listing or action.
    pub async fn dlq_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.dlq_lock.lock().await
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.updates.subscribe()
    }

    /// `{"samples": [...]}`: what the charts show on arrival.
    pub fn history_json(&self) -> String {
        let history = self.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        format!("{{\"samples\":[{}]}}", history.iter().map(AsRef::as_ref).collect::<Vec<&str>>().join(","))
    }

    /// Starts the sampling task on first use (the first console visit): an API whose console is never opened makes
    /// no extra calls.
    pub fn ensure_sampling(self: &Arc<Self>) {
        if self.sampling.swap(true, Ordering::SeqCst) {
            return;
        }
        let console = Arc::clone(self);
        tokio::spawn(async move {
            let mut previous = Previous::default();
            let mut ticks = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = console.shutdown.cancelled() => return,
                }
                let sample: Arc<str> = console.sample(&mut previous).await.to_string().into();
                {
                    let mut history = console.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if history.len() == HISTORY {
                        history.pop_front();
                    }
                    history.push_back(Arc::clone(&sample));
                }
                // No viewer: nothing to send to, the history keeps it.
                let _ = console.updates.send(sample);
            }
        });
    }

    /// The queue of `role`, discovered from the topic's subscriptions.
    ///
    /// # Errors
    /// 404 for a role the topic does not deliver to; 503 when SNS or SQS cannot be asked.
    pub async fn queue(&self, role: &str) -> Result<QueueRef, ApiError> {
        self.queues()
            .await?
            .iter()
            .find(|q| q.role == role)
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("no queue for role {role:?}")))
    }

    async fn queues(&self) -> Result<&[QueueRef], ApiError> {
        self.queues.get_or_try_init(|| self.discover()).await.map(Vec::as_slice)
    }

    /// The topic's SQS subscriptions and each queue's DLQ (from its redrive policy). Works with any account id.
    async fn discover(&self) -> Result<Vec<QueueRef>, ApiError> {
        let unavailable = |e: String| ApiError::Unavailable(format!("console discovery: {e}"));
        let topic_arn = platform::topology::resolve_topic_arn(&self.sns, &self.topic)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let mut queues = Vec::new();
        let mut pages = self.sns.list_subscriptions_by_topic().topic_arn(&topic_arn).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                unavailable(aws_failure(&e, "sns", "list_subscriptions_by_topic", &format!("topic {topic_arn}")))
            })?;
            for sub in page.subscriptions.unwrap_or_default() {
                if sub.protocol.as_deref() != Some("sqs") {
                    continue;
                }
                let Some((account, name)) = sub.endpoint.as_deref().and_then(arn_account_and_name) else { continue };
                // Only the pipeline's queues: the API's role may not even read another subscriber's queue.
                let Some(role) = platform::topology::queue_role(&name) else { continue };
                let url = self.queue_url(&name, &account).await.map_err(unavailable)?;
                let (dlq_name, dlq_url) = match self.dlq_of(&url).await.map_err(unavailable)? {
                    Some((account, name)) => {
                        let dlq_url = self.queue_url(&name, &account).await.map_err(unavailable)?;
                        (Some(name), Some(dlq_url))
                    }
                    None => (None, None),
                };
                queues.push(QueueRef { role, name, url, dlq_name, dlq_url });
            }
        }
        queues.sort_by_key(|q| q.role != "process");
        Ok(queues)
    }

    async fn queue_url(&self, name: &str, account: &str) -> Result<String, String> {
        self.sqs
            .get_queue_url()
            .queue_name(name)
            .queue_owner_aws_account_id(account)
            .send()
            .await
            .map_err(|e| aws_failure(&e, "sqs", "get_queue_url", &format!("queue {name}")))?
            .queue_url
            .ok_or_else(|| format!("no URL for queue {name}"))
    }

    async fn dlq_of(&self, url: &str) -> Result<Option<(String, String)>, String> {
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(|e| aws_failure(&e, "sqs", "get_queue_attributes", &format!("queue {url}")))?
            .attributes
            .unwrap_or_default();
        let target = attributes
            .get(&QueueAttributeName::RedrivePolicy)
            .and_then(|policy| serde_json::from_str::<Value>(policy).ok())
            .and_then(|policy| policy.get("deadLetterTargetArn")?.as_str().map(str::to_owned));
        Ok(target.as_deref().and_then(arn_account_and_name))
    }

    async fn depth(&self, url: &str) -> Value {
        let result = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await;
        match result {
            Ok(output) => {
                let attributes = output.attributes.unwrap_or_default();
                let count =
                    |name: QueueAttributeName| attributes.get(&name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                json!({
                    "visible": count(QueueAttributeName::ApproximateNumberOfMessages),
                    "inFlight": count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
                    "delayed": count(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
                })
            }
            Err(error) => {
                let error = aws_failure(&error, "sqs", "get_queue_attributes", &format!("queue {url}"));
                tracing::warn!(%error, url, "console: queue depth unavailable");
                json!({"error": "unavailable"})
            }
        }
    }

    async fn sample(&self, previous: &mut Previous) -> Value {
        let now = Instant::now();
        let elapsed = previous.at.map(|at| now.duration_since(at).as_secs_f64()).filter(|s| *s > 0.0);
        let rate = |now: u64, before: u64| elapsed.map(|s| (now.saturating_sub(before)) as f64 / s);

        let accepted = ACCEPTED.load(Ordering::Relaxed);
        let accepted_rate = rate(accepted, previous.accepted);
        previous.accepted = accepted;

        let stats = match self.orders.role_stats(&["process", "logistics"]).await {
            Ok(stats) => stats,
            Err(error) => {
                tracing::warn!(%error, "console: role stats unavailable");
                BTreeMap::new()
            }
        };
        let mut applied_rates = serde_json::Map::new();
        for (role, role_stats) in &stats {
            let processed = role_stats.outcomes.get("processed").copied().unwrap_or(0);
            // A role seen for the first time after the first sample had nothing applied before it.
            let before = previous.applied.insert(role.clone(), processed).or(previous.at.map(|_| 0));
            applied_rates.insert(role.clone(), json!(before.and_then(|before| rate(processed, before))));
        }

        let mut queues = Vec::new();
        match self.queues().await {
            Ok(refs) => {
                for queue in refs {
                    let mut entry = self.depth(&queue.url).await;
                    entry["role"] = json!(queue.role);
                    entry["name"] = json!(queue.name);
                    entry["oldestAgeSeconds"] = json!(stats.get(queue.role).map(|s| s.oldest_age_seconds));
                    if let (Some(dlq_url), Some(dlq_name)) = (&queue.dlq_url, &queue.dlq_name) {
                        // Queue attributes only: receiving a DLQ message, even with visibility 0, adds to its
                        // receive count, and SQS has no age attribute. Ages are shown when an operator lists the DLQ.
                        let mut dlq = self.depth(dlq_url).await;
                        dlq["name"] = json!(dlq_name);
                        entry["dlq"] = dlq;
                    }
                    queues.push(entry);
                }
            }
            Err(error) => tracing::warn!(%error, "console: queues unavailable"),
        }

        let latest = match self.orders.recent(LATEST).await {
            Ok(orders) => json!(orders
                .iter()
                .map(|view| {
                    let o = &view.order;
                    json!({
                        "pedidoId": o.pedido_id,
                        "version": o.version,
                        "estado": o.estado,
                        "clienteId": o.cliente_id,
                        "total": o.total.to_string(),
                        "actualizadoEn": o.actualizado_en.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                        "envio": view.envio.as_ref().map(|e| json!({"trackingCode": e.tracking_code, "estado": e.estado})),
                    })
                })
                .collect::<Vec<_>>()),
            Err(error) => {
                tracing::warn!(%error, "console: latest orders unavailable");
                Value::Null
            }
        };
        previous.at = Some(now);
        json!({
            "t": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "queues": queues,
            "rates": {"accepted": accepted_rate, "applied": applied_rates},
            "totals": {
                "accepted": accepted,
                "applied": stats.iter().map(|(role, s)| (role.clone(), json!(s.outcomes))).collect::<serde_json::Map<_, _>>(),
            },
            "latest": latest,
        })
    }
}

/// The text of a failed console call of `service` on `resource`; a denial is logged as the error it is (only a
/// policy change heals it).
fn aws_failure<E>(error: &SdkError<E, HttpResponse>, service: &str, operation: &str, resource: &str) -> String
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    let action = platform::aws::iam_action(service, operation);
    match platform::aws::AccessDenied::from_sdk(error, &action, resource) {
        Some(denied) => {
            tracing::error!(error = %denied, "console: denied; the API role's policy lacks this action");
            denied.to_string()
        }
        None => aws_sdk_sqs::error::DisplayErrorContext(error).to_string(),
    }
}

/// `arn:aws:sqs:REGION:ACCOUNT:NAME` to `(ACCOUNT, NAME)`.
fn arn_account_and_name(arn: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = arn.split(':').collect();
    match parts.as_slice() {
        [_, _, _, _, account, name] => Some(((*account).to_owned(), (*name).to_owned())),
        _ => None,
    }
}

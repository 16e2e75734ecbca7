//! The topology, defined once: an SNS topic fanning out to two SQS queues, each with a DLQ, and the DynamoDB tables.
//!
//! Used by `pedidos-api topology` (local run, docker-compose) and by the end-to-end tests. The CloudFormation template
//! `deploy/cloudformation/messaging.yaml` declares the same settings for AWS; keep the two in step.

use std::collections::HashMap;

use aws_sdk_sns::Client as SnsClient;
use aws_sdk_sqs::types::QueueAttributeName;
use aws_sdk_sqs::Client as SqsClient;

pub const TOPIC_NAME: &str = "ecomexpress-sns-orders-events";
pub const PROCESS_QUEUE_NAME: &str = "ecomexpress-sqs-orders-process";
pub const LOGISTICS_QUEUE_NAME: &str = "ecomexpress-sqs-logistics";
pub const DLQ_SUFFIX: &str = "-dlq";

/// The seed's queue settings (seed 000, CLI/Terraform section).
pub const VISIBILITY_TIMEOUT_SECONDS: u32 = 30;
pub const RETENTION_SECONDS: u32 = 4 * 24 * 3600;
pub const DLQ_RETENTION_SECONDS: u32 = 14 * 24 * 3600;
pub const RECEIVE_WAIT_SECONDS: u32 = 20;
pub const MAX_RECEIVE_COUNT: u32 = 5;

/// Resource names; tests add a suffix so each test gets its own topology on a shared emulator.
#[derive(Debug, Clone)]
pub struct Names {
    pub topic: String,
    pub queues: Vec<String>,
    pub orders_table: String,
    pub idempotency_table: String,
}

impl Default for Names {
    fn default() -> Self {
        Self::with_suffix("")
    }
}

impl Names {
    pub fn with_suffix(suffix: &str) -> Self {
        Self {
            topic: format!("{TOPIC_NAME}{suffix}"),
            queues: vec![format!("{PROCESS_QUEUE_NAME}{suffix}"), format!("{LOGISTICS_QUEUE_NAME}{suffix}")],
            orders_table: format!("{}{suffix}", store::schema::DEFAULT_ORDERS_TABLE),
            idempotency_table: format!("{}{suffix}", store::schema::DEFAULT_IDEMPOTENCY_TABLE),
        }
    }
}

/// One queue with its DLQ.
#[derive(Debug, Clone)]
pub struct QueueInfo {
    pub name: String,
    pub url: String,
    pub arn: String,
    pub dlq_url: String,
    pub dlq_arn: String,
    pub subscription_arn: String,
}

/// What [`ensure`] created or found.
#[derive(Debug, Clone)]
pub struct Topology {
    pub topic_arn: String,
    pub queues: Vec<QueueInfo>,
    pub orders_table: String,
    pub idempotency_table: String,
}

/// A failed AWS call while creating the topology, naming the step.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {message}")]
pub struct TopologyError {
    pub step: String,
    pub message: String,
}

fn fail<E: std::error::Error>(step: impl Into<String>) -> impl FnOnce(E) -> TopologyError {
    let step = step.into();
    move |e| TopologyError { step, message: aws_sdk_sqs::error::DisplayErrorContext(e).to_string() }
}

/// Creates whatever is missing and (re)applies the settings. Safe to run any number of times.
///
/// # Errors
/// The first AWS call that failed.
pub async fn ensure(
    sns: &SnsClient,
    sqs: &SqsClient,
    dynamodb: &aws_sdk_dynamodb::Client,
    names: &Names,
) -> Result<Topology, TopologyError> {
    store::schema::ensure_tables(dynamodb, &names.orders_table, &names.idempotency_table)
        .await
        .map_err(|e| TopologyError { step: format!("create table {}", e.table), message: e.message })?;
    let topic_arn = sns
        .create_topic()
        .name(&names.topic)
        .send()
        .await
        .map_err(fail(format!("create topic {}", names.topic)))?
        .topic_arn
        .unwrap_or_default();
    let existing = subscriptions(sns, &topic_arn).await?;
    let mut queues = Vec::new();
    for name in &names.queues {
        let dlq_name = format!("{name}{DLQ_SUFFIX}");
        let (dlq_url, dlq_arn) = create_queue(
            sqs,
            &dlq_name,
            HashMap::from([(QueueAttributeName::MessageRetentionPeriod, DLQ_RETENTION_SECONDS.to_string())]),
        )
        .await?;
        let redrive =
            serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVE_COUNT}).to_string();
        let (url, arn) = create_queue(
            sqs,
            name,
            HashMap::from([
                (QueueAttributeName::VisibilityTimeout, VISIBILITY_TIMEOUT_SECONDS.to_string()),
                (QueueAttributeName::MessageRetentionPeriod, RETENTION_SECONDS.to_string()),
                (QueueAttributeName::ReceiveMessageWaitTimeSeconds, RECEIVE_WAIT_SECONDS.to_string()),
                (QueueAttributeName::RedrivePolicy, redrive),
                (QueueAttributeName::Policy, allow_topic_policy(&sibling_arn(&dlq_arn, name), &topic_arn)),
            ]),
        )
        .await?;
        let filter = filter_policy(name);
        let subscription_arn = match existing.get(&arn) {
            Some(sub) => {
                // Converge an older subscription on the current filter.
                sns.set_subscription_attributes()
                    .subscription_arn(sub)
                    .attribute_name("FilterPolicy")
                    .attribute_value(&filter)
                    .send()
                    .await
                    .map_err(fail(format!("set the filter policy of {name}")))?;
                sub.clone()
            }
            None => sns
                .subscribe()
                .topic_arn(&topic_arn)
                .protocol("sqs")
                .endpoint(&arn)
                .attributes("FilterPolicy", &filter)
                .return_subscription_arn(true)
                .send()
                .await
                .map_err(fail(format!("subscribe {name}")))?
                .subscription_arn
                .unwrap_or_default(),
        };
        queues.push(QueueInfo { name: name.clone(), url, arn, dlq_url, dlq_arn, subscription_arn });
    }
    Ok(Topology {
        topic_arn,
        queues,
        orders_table: names.orders_table.clone(),
        idempotency_table: names.idempotency_table.clone(),
    })
}

/// Is this the logistics queue? The one naming rule, shared with the worker's role inference.
pub fn is_logistics_queue(name_or_url: &str) -> bool {
    name_or_url.to_ascii_lowercase().contains("logistic")
}

/// The role whose queue this is (`process` or `logistics`), or `None` for any other queue: another team's
/// subscription to the topic is not a pipeline queue.
pub fn queue_role(name_or_url: &str) -> Option<&'static str> {
    if is_logistics_queue(name_or_url) {
        Some("logistics")
    } else if name_or_url.to_ascii_lowercase().contains("process") {
        Some("process")
    } else {
        None
    }
}

/// Event types each queue receives: logistics acts on new orders only. An event type unknown to the contract then
/// never reaches a worker that would have to guess; one that still arrives (no filter) is dead-lettered.
pub fn filter_policy(queue: &str) -> String {
    let types: &[&str] =
        if is_logistics_queue(queue) { &["PedidoCreado"] } else { &["PedidoCreado", "PedidoActualizado"] };
    serde_json::json!({ "eventType": types }).to_string()
}

/// Queue ARN -> subscription ARN for the topic's existing SQS subscriptions.
async fn subscriptions(sns: &SnsClient, topic_arn: &str) -> Result<HashMap<String, String>, TopologyError> {
    let mut found = HashMap::new();
    let mut pages = sns.list_subscriptions_by_topic().topic_arn(topic_arn).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(fail("list subscriptions"))?;
        for sub in page.subscriptions.unwrap_or_default() {
            if sub.protocol.as_deref() == Some("sqs") {
                found.insert(sub.endpoint.unwrap_or_default(), sub.subscription_arn.unwrap_or_default());
            }
        }
    }
    Ok(found)
}

/// Creates (or finds) the queue, then applies `attributes` so a re-run converges on the current settings.
async fn create_queue(
    sqs: &SqsClient,
    name: &str,
    attributes: HashMap<QueueAttributeName, String>,
) -> Result<(String, String), TopologyError> {
    let url = sqs
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .map_err(fail(format!("create queue {name}")))?
        .queue_url
        .unwrap_or_default();
    sqs.set_queue_attributes()
        .queue_url(&url)
        .set_attributes(Some(attributes))
        .send()
        .await
        .map_err(fail(format!("set attributes of {name}")))?;
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(fail(format!("read ARN of {name}")))?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .unwrap_or_default();
    Ok((url, arn))
}

/// The queue's ARN before it exists: its DLQ's ARN with the name swapped (same account and region).
fn sibling_arn(dlq_arn: &str, name: &str) -> String {
    match dlq_arn.rsplit_once(':') {
        Some((prefix, _)) => format!("{prefix}:{name}"),
        None => name.to_owned(),
    }
}

/// Lets only the topic send to the queue (real AWS enforces it; emulators ignore it).
fn allow_topic_policy(queue_arn: &str, topic_arn: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "AllowOrdersTopic",
            "Effect": "Allow",
            "Principal": {"Service": "sns.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}}
        }]
    })
    .to_string()
}

/// An ARN stays an ARN; a bare name is looked up among the account's topics (compose files can then say the name
/// without knowing the emulator's account id).
///
/// # Errors
/// When the lookup fails or no topic has that name.
pub async fn resolve_topic_arn(sns: &SnsClient, name_or_arn: &str) -> Result<String, TopologyError> {
    if name_or_arn.starts_with("arn:") {
        return Ok(name_or_arn.to_owned());
    }
    let mut pages = sns.list_topics().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(fail("list topics"))?;
        for topic in page.topics.unwrap_or_default() {
            if let Some(arn) = topic.topic_arn {
                if arn.rsplit(':').next() == Some(name_or_arn) {
                    return Ok(arn);
                }
            }
        }
    }
    Err(TopologyError { step: format!("resolve topic {name_or_arn}"), message: "no topic with that name".into() })
}

/// A URL stays a URL; a bare name is resolved with `GetQueueUrl`.
///
/// # Errors
/// When the queue does not exist or the call fails.
pub async fn resolve_queue_url(sqs: &SqsClient, name_or_url: &str) -> Result<String, TopologyError> {
    if name_or_url.starts_with("http://") || name_or_url.starts_with("https://") {
        return Ok(name_or_url.to_owned());
    }
    sqs.get_queue_url()
        .queue_name(name_or_url)
        .send()
        .await
        .map_err(fail(format!("resolve queue {name_or_url}")))
        .map(|out| out.queue_url.unwrap_or_default())
}

impl Topology {
    /// `KEY=value` lines for shells and env files.
    pub fn env_lines(&self) -> String {
        let mut out = format!(
            "SNS_TOPIC_ARN={}\nORDERS_TABLE={}\nIDEMPOTENCY_TABLE={}\n",
            self.topic_arn, self.orders_table, self.idempotency_table
        );
        for q in &self.queues {
            let key = if is_logistics_queue(&q.name) { "LOGISTICS" } else { "PROCESS" };
            out.push_str(&format!("{key}_QUEUE_URL={}\n{key}_DLQ_URL={}\n", q.url, q.dlq_url));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pipeline_queues_have_a_role() {
        assert_eq!(queue_role("ecomexpress-sqs-orders-process"), Some("process"));
        assert_eq!(queue_role("https://sqs.eu-west-1.amazonaws.com/1/prod-sqs-logistics"), Some("logistics"));
        assert_eq!(queue_role("ecomexpress-sqs-orders-process-e2e-1a2b"), Some("process"));
        assert_eq!(queue_role("analytics-orders-tap"), None, "another team's subscription is not a pipeline queue");
    }
}

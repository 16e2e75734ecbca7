//! The port to the message bus: a trait so router tests run with a fake, and SNS behind it in production.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use aws_sdk_sns::config::http::HttpResponse;
use aws_sdk_sns::error::{DisplayErrorContext, SdkError};
use aws_sdk_sns::types::MessageAttributeValue;
use aws_sdk_sns::Client;
use domain::{EventType, OrderEvent};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why the bus could not do something.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Worth retrying later: unreachable, throttled, timed out, 5xx.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The bus refused the request itself (bad ARN, invalid attribute).
    #[error("bus rejected the request: {0}")]
    Rejected(String),
    /// AWS refused the API's role this call: an operator must fix the policy.
    #[error("{0}")]
    Denied(store::AccessDenied),
}

/// An email subscription's state, as the seed reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionStatus {
    Confirmado,
    Pendiente,
}

/// What the API needs from the bus.
pub trait EventBus: Send + Sync + 'static {
    /// Publishes the event and returns the bus's message id only once the bus has accepted it.
    fn publish<'a>(&'a self, event: &'a OrderEvent, request_id: &'a str) -> BoxFuture<'a, Result<String, BusError>>;
    /// Cheap call proving the topic exists and answers (readiness).
    fn check(&self) -> BoxFuture<'_, Result<(), BusError>>;
    /// The status of an email subscription, if any.
    fn email_status<'a>(&'a self, email: &'a str) -> BoxFuture<'a, Result<Option<SubscriptionStatus>, BusError>>;
    /// Starts an email subscription (the recipient must confirm it). With `event_types`, the subscription receives
    /// only those events (an SNS filter policy on the `eventType` message attribute); without, every event.
    fn subscribe_email<'a>(
        &'a self,
        email: &'a str,
        event_types: Option<&'a [EventType]>,
    ) -> BoxFuture<'a, Result<(), BusError>>;
}

/// [`EventBus`] on an SNS topic.
pub struct SnsBus {
    client: Client,
    /// As configured: an ARN, or a bare name resolved on first use.
    topic: String,
    /// Resolved lazily so the API starts (and stays live) while SNS is unreachable.
    topic_arn: tokio::sync::OnceCell<String>,
}

impl SnsBus {
    pub fn new(client: Client, topic: String) -> Self {
        Self { client, topic, topic_arn: tokio::sync::OnceCell::new() }
    }

    async fn topic_arn(&self) -> Result<&str, BusError> {
        self.topic_arn
            .get_or_try_init(|| async {
                // One budget for the whole lookup, every `ListTopics` page included: each page has its own SDK
                // budget, and an account with many topics would otherwise hold a request past its deadline.
                let lookup = platform::topology::resolve_topic_arn(&self.client, &self.topic);
                match tokio::time::timeout(RESOLVE_BUDGET, lookup).await {
                    Ok(resolved) => resolved.map_err(|e| BusError::Unavailable(e.to_string())),
                    Err(_) => Err(BusError::Unavailable(format!(
                        "resolving topic {} took longer than {RESOLVE_BUDGET:?}",
                        self.topic
                    ))),
                }
            })
            .await
            .map(String::as_str)
    }

    /// One publish, inside its producer `span` (none with traces off).
    async fn publish_in(&self, event: &OrderEvent, request_id: &str, span: tracing::Span) -> Result<String, BusError> {
        let topic_arn = self.topic_arn().await?;
        let body = event.to_json().map_err(|e| BusError::Rejected(e.to_string()))?;
        let mut request = self
            .client
            .publish()
            .topic_arn(topic_arn)
            .subject(event.event_type.subject())
            .message(body)
            // Attributes let subscribers filter (SNS filter policies) and correlate logs across services.
            .message_attributes("eventType", string_attribute(event.event_type.as_str())?)
            .message_attributes(
                "version",
                MessageAttributeValue::builder()
                    .data_type("Number")
                    .string_value(event.version.to_string())
                    .build()
                    .map_err(|e| BusError::Rejected(e.to_string()))?,
            )
            .message_attributes("pedidoId", string_attribute(&event.order.pedido_id.to_string())?)
            .message_attributes("requestId", string_attribute(request_id)?);
        // The trace goes on in the workers: W3C `traceparent`/`tracestate` (X-Ray's header with that propagator),
        // within SQS's ten attributes together with the four above.
        for (name, value) in trace_attributes(platform::otel::inject(&span), 4) {
            request = request.message_attributes(name, string_attribute(&value)?);
        }
        // FIFO topics need a group (per order, so versions stay ordered) and a dedup id.
        if topic_arn.ends_with(".fifo") {
            request = request
                .message_group_id(event.order.pedido_id.to_string())
                .message_deduplication_id(event.dedup_key().to_string());
        }
        let output = request.send().await.map_err(classify("publish", topic_arn))?;
        let message_id =
            output.message_id.ok_or_else(|| BusError::Unavailable("SNS answered without a MessageId".into()))?;
        span.record("messaging.message.id", message_id.as_str());
        Ok(message_id)
    }

    /// Resolves a bare topic name now (an ARN needs nothing), so the first order does not pay for the lookup. A
    /// failure is only logged: the next publish tries again, within its own budget.
    pub async fn warm_up(&self) {
        if let Err(e) = self.topic_arn().await {
            tracing::warn!(topic = %self.topic, error = %e, "topic not resolved at start-up; retrying on first use");
        }
    }
}

/// The most resolving a bare topic name may take. With the SDK's 6 s publish budget it stays within an order
/// write's 9 s (`routes::orders::WRITE_BUDGET`).
pub const RESOLVE_BUDGET: Duration = Duration::from_secs(3);

/// Modeled SNS errors that are the service's trouble, not the request's.
trait Transient {
    fn is_transient(&self) -> bool;
}

macro_rules! transient {
    ($($error:ty $(, $extra:ident)?);*) => {$(
        impl Transient for $error {
            fn is_transient(&self) -> bool {
                self.is_internal_error_exception() $(|| self.$extra())?
            }
        }
    )*};
}

transient!(
    aws_sdk_sns::operation::publish::PublishError, is_kms_throttling_exception;
    aws_sdk_sns::operation::get_topic_attributes::GetTopicAttributesError;
    aws_sdk_sns::operation::list_subscriptions_by_topic::ListSubscriptionsByTopicError;
    aws_sdk_sns::operation::subscribe::SubscribeError
);

/// Throttling answers SNS does not model per operation, matched by exact error code.
const THROTTLING_CODES: [&str; 5] =
    ["Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled", "TooManyRequestsException"];

/// Maps a failed SNS `operation` on `topic` to [`BusError`].
fn classify<E>(operation: &'static str, topic: &str) -> impl FnOnce(SdkError<E, HttpResponse>) -> BusError
where
    E: std::error::Error + Transient + aws_sdk_sns::error::ProvideErrorMetadata + Send + Sync + 'static,
{
    let topic = topic.to_owned();
    move |err| {
        let action = platform::aws::iam_action("sns", operation);
        match platform::aws::AccessDenied::from_sdk(&err, &action, &format!("topic {topic}")) {
            Some(denied) => BusError::Denied(denied),
            None => classify_failure(err),
        }
    }
}

fn classify_failure<E>(err: SdkError<E, HttpResponse>) -> BusError
where
    E: std::error::Error + Transient + aws_sdk_sns::error::ProvideErrorMetadata + Send + Sync + 'static,
{
    let retryable = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(service) => {
            let status = service.raw().status();
            service.err().is_transient()
                || status.is_server_error()
                || status.as_u16() == 429
                || service.err().code().is_none_or(|code| THROTTLING_CODES.contains(&code))
        }
        _ => false,
    };
    let text = DisplayErrorContext(err).to_string();
    if retryable {
        BusError::Unavailable(text)
    } else {
        BusError::Rejected(text)
    }
}

fn string_attribute(value: &str) -> Result<MessageAttributeValue, BusError> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|e| BusError::Rejected(e.to_string()))
}

/// SQS's limit on message attributes: what SNS passes on with raw message delivery (and a DLQ copy keeps) must fit.
pub const MAX_ATTRIBUTES: usize = 10;

/// The trace context as message attributes (`traceparent`, `tracestate`, ... as the propagators write them), after
/// the `existing` ones and within [`MAX_ATTRIBUTES`]; empty values are left out (SNS refuses them).
pub fn trace_attributes(fields: Vec<(String, String)>, existing: usize) -> Vec<(String, String)> {
    fields.into_iter().filter(|(_, value)| !value.is_empty()).take(MAX_ATTRIBUTES.saturating_sub(existing)).collect()
}

/// The producer span of a publish, for the trace only: the workers' spans are its children.
fn publish_span(topic: &str) -> tracing::Span {
    if !platform::otel::enabled() {
        return tracing::Span::none();
    }
    let name = topic.rsplit(':').next().unwrap_or(topic);
    tracing::info_span!(
        target: platform::otel::TRACE_ONLY,
        "publish",
        otel.name = %format_args!("{name} publish"),
        otel.kind = "producer",
        messaging.system = "aws_sns",
        messaging.operation.type = "send",
        messaging.destination.name = %name,
        messaging.message.id = tracing::field::Empty,
    )
}

impl EventBus for SnsBus {
    fn publish<'a>(&'a self, event: &'a OrderEvent, request_id: &'a str) -> BoxFuture<'a, Result<String, BusError>> {
        let span = publish_span(&self.topic);
        Box::pin(tracing::Instrument::instrument(self.publish_in(event, request_id, span.clone()), span))
    }

    fn check(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            let topic_arn = self.topic_arn().await?;
            self.client
                .get_topic_attributes()
                .topic_arn(topic_arn)
                .send()
                .await
                .map_err(classify("get_topic_attributes", topic_arn))?;
            Ok(())
        })
    }

    fn email_status<'a>(&'a self, email: &'a str) -> BoxFuture<'a, Result<Option<SubscriptionStatus>, BusError>> {
        Box::pin(async move {
            let topic_arn = self.topic_arn().await?;
            let mut pages = self.client.list_subscriptions_by_topic().topic_arn(topic_arn).into_paginator().send();
            while let Some(page) = pages.next().await {
                for sub in
                    page.map_err(classify("list_subscriptions_by_topic", topic_arn))?.subscriptions.unwrap_or_default()
                {
                    let same = sub.protocol.as_deref() == Some("email")
                        && sub.endpoint.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(email));
                    if same {
                        let pending = sub.subscription_arn.as_deref().is_none_or(|arn| !arn.starts_with("arn:"));
                        return Ok(Some(if pending {
                            SubscriptionStatus::Pendiente
                        } else {
                            SubscriptionStatus::Confirmado
                        }));
                    }
                }
            }
            Ok(None)
        })
    }

    fn subscribe_email<'a>(
        &'a self,
        email: &'a str,
        event_types: Option<&'a [EventType]>,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let topic_arn = self.topic_arn().await?;
            let mut request = self.client.subscribe().topic_arn(topic_arn).protocol("email").endpoint(email);
            if let Some(types) = event_types {
                request = request.attributes("FilterPolicy", filter_policy(types));
            }
            request.send().await.map_err(classify("subscribe", topic_arn))?;
            Ok(())
        })
    }
}

/// The SNS filter policy that lets through only `types` (matched on the `eventType` attribute every publish sets).
pub fn filter_policy(types: &[EventType]) -> String {
    let names: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
    serde_json::json!({ "eventType": names }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sns::config::timeout::TimeoutConfig;
    use aws_sdk_sns::config::{BehaviorVersion, Credentials, Region};

    /// An SNS endpoint that accepts connections and never answers: every `ListTopics` page would wait out its own
    /// SDK budget (3 attempts x 2 s), but resolving a bare name gives up after [`RESOLVE_BUDGET`] in all.
    #[tokio::test(start_paused = true)]
    async fn resolving_a_bare_topic_name_has_one_budget() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = silent.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"));
        let config = aws_sdk_sns::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .endpoint_url(format!("http://{addr}"))
            .timeout_config(TimeoutConfig::builder().operation_attempt_timeout(Duration::from_secs(2)).build())
            .build();
        let bus = SnsBus::new(Client::from_conf(config), "pedidos".into());
        let event = OrderEvent::created(
            domain::OrderState {
                pedido_id: uuid::Uuid::new_v4(),
                cliente_id: uuid::Uuid::new_v4(),
                fecha: chrono::Utc::now().fixed_offset(),
                total: rust_decimal::Decimal::ONE,
                items: None,
            },
            chrono::Utc::now(),
        );
        let started = tokio::time::Instant::now();
        let result = bus.publish(&event, "req").await;
        let waited = started.elapsed();
        assert!(matches!(&result, Err(BusError::Unavailable(e)) if e.contains("took longer than")), "{result:?}");
        assert!(waited >= RESOLVE_BUDGET && waited < RESOLVE_BUDGET + Duration::from_secs(1), "{waited:?}");
        drop(silent);
    }

    #[test]
    fn filter_policy_names_the_event_types() {
        assert_eq!(filter_policy(&[EventType::PedidoCreado]), r#"{"eventType":["PedidoCreado"]}"#);
        assert_eq!(
            filter_policy(&[EventType::PedidoCreado, EventType::PedidoActualizado]),
            r#"{"eventType":["PedidoCreado","PedidoActualizado"]}"#
        );
    }
}

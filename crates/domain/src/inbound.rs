//! Decoding what arrives on an SQS queue subscribed to the topic.
//!
//! Three shapes are accepted, detected from the body itself:
//! 1. an SNS `Notification` envelope whose `Message` holds the event (the default subscription);
//! 2. the bare event (raw message delivery);
//! 3. the seed's legacy payload, PascalCase `{"PedidoId","ClienteId","Fecha","Total"}` without type or version,
//!    read as `PedidoCreado` version 1 so new workers can drain queues the old API filled.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::event::{EventType, OrderEvent, OrderState};
use crate::validation::FieldErrors;

/// Where the event came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Wrapped in an SNS notification.
    SnsEnvelope { message_id: String, topic_arn: String, timestamp: Option<DateTime<Utc>> },
    /// Raw message delivery (or sent straight to the queue).
    Raw,
}

/// What the message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// An order event this contract knows, already validated.
    Order(OrderEvent),
    /// A well-formed event of a type this contract version does not know (a newer producer); consumers skip it.
    Other { event_type: String },
}

/// A decoded queue message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub payload: Payload,
    pub source: Source,
    /// `true` when the payload was the seed's legacy PascalCase shape.
    pub legacy: bool,
    /// SNS message attributes from the envelope (`Name -> Value`); empty for raw delivery, where they arrive as
    /// SQS message attributes instead.
    pub attributes: BTreeMap<String, String>,
}

/// Why a message cannot be used. Every variant is permanent: retrying the same bytes cannot succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("body is JSON but not an object")]
    NotAnObject,
    #[error("SNS envelope of type {0:?} is not a Notification")]
    NotANotification(String),
    #[error("SNS envelope has no string Message")]
    EnvelopeWithoutMessage,
    #[error("JSON object is not an order event (no `type`, and not the legacy PedidoId/ClienteId/Fecha/Total shape)")]
    NotAnEvent,
    #[error("event does not match the contract: {0}")]
    Malformed(String),
    #[error("event breaks the rules: {0}")]
    Invalid(FieldErrors),
}

impl DecodeError {
    /// A short stable reason code for metrics labels and DLQ attributes.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotJson(_) => "not_json",
            Self::NotAnObject => "not_an_object",
            Self::NotANotification(_) => "not_a_notification",
            Self::EnvelopeWithoutMessage => "envelope_without_message",
            Self::NotAnEvent => "not_an_event",
            Self::Malformed(_) => "malformed_event",
            Self::Invalid(_) => "invalid_event",
        }
    }
}

/// Decodes one SQS message body.
///
/// # Errors
/// [`DecodeError`] says why the body is unusable; it never panics, whatever the input.
pub fn decode(body: &str) -> Result<Inbound, DecodeError> {
    if let Some(inbound) = decode_notification(body) {
        return Ok(inbound);
    }
    decode_any(body)
}

/// The SNS envelope as the workers receive it from every subscription, read in one typed pass: strings borrowed from
/// the body where they have no escapes, unknown members skipped without being built.
#[derive(Deserialize)]
struct Notification<'a> {
    #[serde(rename = "Type", borrow)]
    kind: Cow<'a, str>,
    #[serde(rename = "TopicArn", borrow)]
    topic_arn: Cow<'a, str>,
    #[serde(rename = "MessageId", borrow, default)]
    message_id: Option<Cow<'a, str>>,
    #[serde(rename = "Message", borrow)]
    message: Cow<'a, str>,
    #[serde(rename = "Timestamp", borrow, default)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(rename = "MessageAttributes", default)]
    attributes: Option<Map<String, Value>>,
}

/// The common case only: a well-formed `Notification` carrying a valid order event, decoded without building the
/// envelope and the event as JSON trees first (that was most of the worker's own CPU per message). `None` for anything
/// else (another shape, a duplicate member, a legacy or unknown event, an invalid one), which [`decode_any`] then
/// decodes or rejects exactly as before: whenever this returns a value, it is the one [`decode_any`] returns.
fn decode_notification(body: &str) -> Option<Inbound> {
    let envelope: Notification<'_> = serde_json::from_str(body).ok()?;
    if envelope.kind != "Notification" {
        return None;
    }
    let event: OrderEvent = serde_json::from_str(&envelope.message).ok()?;
    event.validate().ok()?;
    let timestamp =
        envelope.timestamp.and_then(|t| DateTime::parse_from_rfc3339(&t).ok()).map(|t| t.with_timezone(&Utc));
    let attributes = match envelope.attributes {
        Some(attributes) => string_values(&attributes),
        None => BTreeMap::new(),
    };
    Some(Inbound {
        payload: Payload::Order(event),
        source: Source::SnsEnvelope {
            message_id: envelope.message_id.map(Cow::into_owned).unwrap_or_default(),
            topic_arn: envelope.topic_arn.into_owned(),
            timestamp,
        },
        legacy: false,
        attributes,
    })
}

/// The string `MessageAttributes` of an SNS envelope, read without decoding the event (the trace context a message
/// carries is needed before its handling starts); empty for anything else.
pub fn envelope_attributes_only(body: &str) -> BTreeMap<String, String> {
    #[derive(Deserialize)]
    struct AttributesOnly {
        #[serde(rename = "MessageAttributes", default)]
        attributes: Option<Map<String, Value>>,
    }
    match serde_json::from_str::<AttributesOnly>(body) {
        Ok(AttributesOnly { attributes: Some(attributes) }) => string_values(&attributes),
        _ => BTreeMap::new(),
    }
}

/// Every accepted shape, through JSON trees.
fn decode_any(body: &str) -> Result<Inbound, DecodeError> {
    let Value::Object(outer) = parse(body)? else { return Err(DecodeError::NotAnObject) };
    if is_envelope(&outer) {
        let kind = outer.get("Type").and_then(Value::as_str).unwrap_or_default();
        if kind != "Notification" {
            return Err(DecodeError::NotANotification(kind.chars().take(64).collect()));
        }
        let message = outer.get("Message").and_then(Value::as_str).ok_or(DecodeError::EnvelopeWithoutMessage)?;
        let text = |k: &str| outer.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let timestamp = outer
            .get("Timestamp")
            .and_then(Value::as_str)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        let source = Source::SnsEnvelope { message_id: text("MessageId"), topic_arn: text("TopicArn"), timestamp };
        let Value::Object(inner) = parse(message)? else { return Err(DecodeError::NotAnObject) };
        let (payload, legacy) = decode_event(inner, timestamp)?;
        Ok(Inbound { payload, source, legacy, attributes: envelope_attributes(&outer) })
    } else {
        let (payload, legacy) = decode_event(outer, None)?;
        Ok(Inbound { payload, source: Source::Raw, legacy, attributes: BTreeMap::new() })
    }
}

fn parse(text: &str) -> Result<Value, DecodeError> {
    serde_json::from_str(text).map_err(|e| DecodeError::NotJson(e.to_string()))
}

/// SNS envelopes always carry `Type`, `MessageId` and `TopicArn`; events never do.
fn is_envelope(object: &Map<String, Value>) -> bool {
    object.contains_key("Type") && object.contains_key("TopicArn")
}

fn envelope_attributes(envelope: &Map<String, Value>) -> BTreeMap<String, String> {
    let Some(Value::Object(attributes)) = envelope.get("MessageAttributes") else { return BTreeMap::new() };
    string_values(attributes)
}

/// `Name -> Value` of the attributes whose `Value` is a string.
fn string_values(attributes: &Map<String, Value>) -> BTreeMap<String, String> {
    attributes.iter().filter_map(|(name, attr)| Some((name.clone(), attr.get("Value")?.as_str()?.to_owned()))).collect()
}

fn decode_event(
    object: Map<String, Value>,
    envelope_time: Option<DateTime<Utc>>,
) -> Result<(Payload, bool), DecodeError> {
    let (event, legacy) = match object.get("type") {
        Some(Value::String(kind)) if kind != "PedidoCreado" && kind != "PedidoActualizado" => {
            return Ok((Payload::Other { event_type: kind.chars().take(64).collect() }, false));
        }
        Some(_) => (from_object::<OrderEvent>(object)?, false),
        None if object.contains_key("PedidoId") => {
            let legacy: LegacyOrder = from_object(object)?;
            (legacy.into_event(envelope_time), true)
        }
        None => return Err(DecodeError::NotAnEvent),
    };
    event.validate().map_err(DecodeError::Invalid)?;
    Ok((Payload::Order(event), legacy))
}

fn from_object<T: for<'de> Deserialize<'de>>(object: Map<String, Value>) -> Result<T, DecodeError> {
    serde_json::from_value(Value::Object(object)).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// The seed API's payload (System.Text.Json defaults: PascalCase).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LegacyOrder {
    pedido_id: Uuid,
    cliente_id: Uuid,
    fecha: DateTime<FixedOffset>,
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    total: Decimal,
}

impl LegacyOrder {
    fn into_event(self, envelope_time: Option<DateTime<Utc>>) -> OrderEvent {
        let occurred_at = envelope_time.unwrap_or_else(|| self.fecha.with_timezone(&Utc));
        let order = OrderState {
            pedido_id: self.pedido_id,
            cliente_id: self.cliente_id,
            fecha: self.fecha,
            total: self.total,
            items: None,
        };
        OrderEvent { event_type: EventType::PedidoCreado, version: 1, occurred_at, order, client: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(message: &str, extra: &str) -> String {
        format!(
            r#"{{"Type":"Notification","MessageId":"m-1","TopicArn":"arn:aws:sns:us-east-1:1:t","Subject":"Nuevo Pedido",
               "Message":{},"Timestamp":"2026-11-21T10:00:00.000Z","SignatureVersion":"1","Signature":"x"{extra},
               "MessageAttributes":{{"eventType":{{"Type":"String","Value":"PedidoCreado"}},"n":{{"Type":"Number","Value":1}}}}}}"#,
            serde_json::Value::from(message)
        )
    }

    const EVENT: &str = r#"{"type":"PedidoCreado","version":1,"occurredAt":"2026-11-21T10:00:00Z","pedidoId":"0f973a64-ce5b-4c6d-a65e-19195cb8c229","clienteId":"bf28a89b-9ab1-4e4e-ab00-9954deefe790","fecha":"2026-11-21T10:00:00-03:00","total":59.98}"#;

    /// The typed pass and the tree pass agree wherever the typed one answers, and it answers for the usual message.
    #[test]
    fn the_typed_pass_agrees_with_the_tree_pass() {
        let bodies = [
            envelope(EVENT, ""),
            envelope(&EVENT.replace("59.98", "\"59.98\""), ""),
            envelope(&EVENT.replace("\"version\":1", "\"version\":1,\"version\":2"), ""),
            envelope(&EVENT.replace("PedidoCreado", "PedidoCancelado"), ""),
            envelope(
                r#"{"PedidoId":"0f973a64-ce5b-4c6d-a65e-19195cb8c229","ClienteId":"bf28a89b-9ab1-4e4e-ab00-9954deefe790","Fecha":"2026-11-21T10:00:00-03:00","Total":5}"#,
                "",
            ),
            envelope(EVENT, r#","Type":"Notification""#),
            envelope(&EVENT.replace("\"total\":59.98", "\"total\":-1"), ""),
            envelope("not json", ""),
            envelope(EVENT, "").replace(r#""Timestamp":"2026-11-21T10:00:00.000Z""#, r#""Timestamp":null"#),
            envelope(EVENT, "").replace(r#""MessageId":"m-1""#, r#""MessageId":7"#),
            envelope(EVENT, "").replace("Notification", "SubscriptionConfirmation"),
            EVENT.to_owned(),
        ];
        let mut typed = 0;
        for body in &bodies {
            if let Some(fast) = decode_notification(body) {
                typed += 1;
                assert_eq!(Ok(fast), decode_any(body), "{body}");
            }
            assert_eq!(decode(body), decode_any(body), "{body}");
        }
        assert!(typed >= 2, "the usual envelope takes the typed pass");
        assert_eq!(envelope_attributes_only(&bodies[0]), decode(&bodies[0]).map(|i| i.attributes).unwrap_or_default());
        assert!(envelope_attributes_only(EVENT).is_empty() && envelope_attributes_only("not json").is_empty());
        let Ok(inbound) = decode(&bodies[0]) else { panic!("the usual envelope decodes") };
        assert_eq!(inbound.attributes.get("eventType").map(String::as_str), Some("PedidoCreado"));
        assert!(!inbound.attributes.contains_key("n"), "non-string attribute values are skipped, as before");
    }
}

//! Decoding what arrives on an SQS queue subscribed to the topic.
//!
//! Three shapes are accepted, detected from the body itself:
//! 1. an SNS `Notification` envelope whose `Message` holds the event (the default subscription);
//! 2. the bare event (raw message delivery);
//! 3. the seed's legacy payload, PascalCase `{"PedidoId","ClienteId","Fecha","Total"}` without type or version,
//!    read as `PedidoCreado` version 1 so new workers can drain queues the old API filled.

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
        OrderEvent { event_type: EventType::PedidoCreado, version: 1, occurred_at, order }
    }
}

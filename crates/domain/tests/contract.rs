//! The wire contract: exact money, JSON Schema conformance, backward compatibility, envelopes.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use domain::{decode, DecodeError, EventType, Item, OrderEvent, OrderState, Payload, Source, MAX_VERSION};
use rust_decimal::Decimal;
use serde_json::Value;
use uuid::Uuid;

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap_or_else(|e| panic!("bad test decimal {s}: {e}"))
}

fn sample_order() -> OrderState {
    OrderState {
        pedido_id: Uuid::from_u128(0x1111_1111_1111_4111_8111_1111_1111_1111),
        cliente_id: Uuid::from_u128(0x2222_2222_2222_4222_8222_2222_2222_2222),
        fecha: DateTime::parse_from_rfc3339("2026-11-21T10:30:00-03:00").unwrap_or_else(|e| panic!("{e}")),
        total: dec("0.10") + dec("0.20"),
        items: Some(vec![Item { producto_id: "SKU-1".into(), cantidad: 3, precio_unitario: dec("0.10") }]),
    }
}

fn occurred() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 21, 13, 30, 0).single().unwrap_or_else(|| panic!("valid date"))
}

fn schema(name: &str) -> jsonschema::Validator {
    let path = format!("{}/../../docs/schemas/{name}.schema.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    jsonschema::validator_for(&value).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Money is emitted with exactly its digits: 0.10 + 0.20 is 0.30, never 0.30000000000000004.
#[test]
fn money_is_byte_exact() {
    let json = OrderEvent::created(sample_order(), occurred()).to_json().unwrap_or_default();
    assert_eq!(
        json,
        r#"{"type":"PedidoCreado","version":1,"occurredAt":"2026-11-21T13:30:00Z","pedidoId":"11111111-1111-4111-8111-111111111111","clienteId":"22222222-2222-4222-8222-222222222222","fecha":"2026-11-21T10:30:00-03:00","total":0.30,"items":[{"productoId":"SKU-1","cantidad":3,"precioUnitario":0.10}]}"#
    );
}

/// Large amounts with cents keep every digit through a decode/encode cycle (no f64 on the way).
#[test]
fn money_round_trips_without_floats() {
    let body = r#"{"type":"PedidoCreado","version":1,"occurredAt":"2026-11-21T13:30:00Z","pedidoId":"11111111-1111-4111-8111-111111111111","clienteId":"22222222-2222-4222-8222-222222222222","fecha":"2026-11-21T10:30:00Z","total":999999999.99}"#;
    let Ok(inbound) = decode(body) else { panic!("should decode") };
    let Payload::Order(event) = inbound.payload else { panic!("should be an order") };
    assert_eq!(event.order.total.to_string(), "999999999.99");
    assert!(event.to_json().unwrap_or_default().contains(r#""total":999999999.99"#));
}

#[test]
fn serialised_events_validate_against_their_schemas() {
    let created = OrderEvent::created(sample_order(), occurred());
    let updated = OrderEvent::updated(OrderState { items: None, ..sample_order() }, 3, occurred());
    for (event, name) in [(created, "pedido-creado"), (updated, "pedido-actualizado")] {
        let value: Value = serde_json::from_str(&event.to_json().unwrap_or_default()).unwrap_or_default();
        let validator = schema(name);
        let errors: Vec<String> = validator.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{name}: {errors:?}");
    }
}

#[test]
fn schemas_reject_what_the_contract_rejects() {
    let created = schema("pedido-creado");
    let mut value: Value =
        serde_json::from_str(&OrderEvent::created(sample_order(), occurred()).to_json().unwrap_or_default())
            .unwrap_or_default();
    assert!(created.is_valid(&value));
    value["version"] = Value::from(2);
    assert!(!created.is_valid(&value), "PedidoCreado must be version 1");
    value["version"] = Value::from(1);
    value["total"] = Value::from(-1);
    assert!(!created.is_valid(&value), "negative totals");
    let updated = schema("pedido-actualizado");
    let mut value: Value = serde_json::from_str(
        &OrderEvent::updated(sample_order(), MAX_VERSION, occurred()).to_json().unwrap_or_default(),
    )
    .unwrap_or_default();
    assert!(updated.is_valid(&value), "MAX_VERSION itself is valid");
    value["version"] = Value::from(MAX_VERSION + 1);
    assert!(!updated.is_valid(&value), "versions above MAX_VERSION");
}

/// Versions are bounded: an event above [`MAX_VERSION`] is invalid (the workers dead-letter it), at it is fine.
#[test]
fn versions_above_the_bound_are_invalid() {
    assert!(OrderEvent::updated(sample_order(), MAX_VERSION, occurred()).validate().is_ok());
    let errors = OrderEvent::updated(sample_order(), MAX_VERSION + 1, occurred()).validate().err();
    let messages = errors.as_ref().and_then(|e| e.get("version")).unwrap_or_default();
    assert_eq!(messages, [format!("must be at most {MAX_VERSION}")]);
}

/// Payloads the seed's .NET API published still decode, as PedidoCreado version 1.
#[test]
fn legacy_seed_payload_decodes_as_created_v1() {
    let legacy = r#"{"PedidoId":"11111111-1111-4111-8111-111111111111","ClienteId":"22222222-2222-4222-8222-222222222222","Fecha":"2024-05-01T10:00:00.1234567+00:00","Total":59.98}"#;
    let envelope = serde_json::json!({
        "Type": "Notification", "MessageId": "m-1", "TopicArn": "arn:aws:sns:us-east-1:000000000000:t",
        "Subject": "Nuevo Pedido", "Message": legacy, "Timestamp": "2024-05-01T10:00:01.000Z",
    })
    .to_string();
    for body in [legacy.to_owned(), envelope] {
        let inbound = decode(&body).unwrap_or_else(|e| panic!("{e}"));
        assert!(inbound.legacy);
        let Payload::Order(event) = inbound.payload else { panic!("order") };
        assert_eq!(event.event_type, EventType::PedidoCreado);
        assert_eq!(event.version, 1);
        assert_eq!(event.order.total, dec("59.98"));
        assert_eq!(event.dedup_key().to_string(), "11111111-1111-4111-8111-111111111111#1");
    }
}

#[test]
fn envelope_and_raw_are_detected() {
    let event = OrderEvent::updated(sample_order(), 2, occurred());
    let raw = event.to_json().unwrap_or_default();
    let envelope = serde_json::json!({
        "Type": "Notification", "MessageId": "abc", "TopicArn": "arn:aws:sns:us-east-1:123456789012:t",
        "Message": raw, "Timestamp": "2026-11-21T13:30:01.5Z",
        "MessageAttributes": {"eventType": {"Type": "String", "Value": "PedidoActualizado"}},
    })
    .to_string();
    let from_raw = decode(&raw).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(from_raw.source, Source::Raw);
    assert_eq!(from_raw.payload, Payload::Order(event.clone()));
    let from_envelope = decode(&envelope).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(from_envelope.source, Source::SnsEnvelope { ref message_id, .. } if message_id == "abc"));
    assert_eq!(from_envelope.attributes.get("eventType").map(String::as_str), Some("PedidoActualizado"));
    assert_eq!(from_envelope.payload, Payload::Order(event));
}

#[test]
fn unknown_fields_and_unknown_types_are_tolerated() {
    let mut value: Value =
        serde_json::from_str(&OrderEvent::created(sample_order(), occurred()).to_json().unwrap_or_default())
            .unwrap_or_default();
    value["addedInV2"] = Value::from("x");
    assert!(matches!(decode(&value.to_string()).map(|i| i.payload), Ok(Payload::Order(_))));
    let other = decode(r#"{"type":"PedidoCancelado","pedidoId":"x"}"#).map(|i| i.payload);
    assert_eq!(other, Ok(Payload::Other { event_type: "PedidoCancelado".into() }));
}

#[test]
fn poison_is_classified() {
    let cases: [(&str, &str); 7] = [
        ("not json", "not_json"),
        ("[1,2]", "not_an_object"),
        (r#"{"hello":"world"}"#, "not_an_event"),
        (r#"{"Type":"SubscriptionConfirmation","TopicArn":"a","MessageId":"b"}"#, "not_a_notification"),
        (r#"{"Type":"Notification","TopicArn":"a","MessageId":"b"}"#, "envelope_without_message"),
        (r#"{"type":"PedidoCreado","version":1}"#, "malformed_event"),
        (
            r#"{"type":"PedidoCreado","version":1,"occurredAt":"2026-11-21T13:30:00Z","pedidoId":"11111111-1111-4111-8111-111111111111","clienteId":"22222222-2222-4222-8222-222222222222","fecha":"2026-11-21T10:30:00Z","total":-5}"#,
            "invalid_event",
        ),
    ];
    for (body, code) in cases {
        let err = decode(body).err().unwrap_or(DecodeError::NotAnObject);
        assert_eq!(err.code(), code, "{body}: {err}");
    }
}

//! Property tests: encode/decode round trips and total robustness of the decoder.

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use domain::{decode, Item, OrderEvent, OrderState, Payload};
use proptest::prelude::*;
use rust_decimal::Decimal;
use uuid::Uuid;

fn cents() -> impl Strategy<Value = Decimal> {
    (1i64..=99_999_999_999).prop_map(|c| Decimal::new(c, 2))
}

fn instant() -> impl Strategy<Value = DateTime<FixedOffset>> {
    (0i64..4_000_000_000, -12i32..=14).prop_filter_map("valid offset", |(secs, hours)| {
        let offset = FixedOffset::east_opt(hours * 3600)?;
        offset.timestamp_opt(secs, 0).single()
    })
}

fn order_event() -> impl Strategy<Value = OrderEvent> {
    let items = proptest::option::of(proptest::collection::vec(
        ("[A-Z0-9-]{1,20}", 1u32..1000, 0i64..1_000_000).prop_map(|(id, cantidad, price)| Item {
            producto_id: id,
            cantidad,
            precio_unitario: Decimal::new(price, 2),
        }),
        1..5,
    ));
    (any::<u128>(), any::<u128>(), instant(), cents(), items, 1u64..1000, 0i64..4_000_000_000).prop_map(
        |(p, c, fecha, total, items, version, occurred)| {
            // Keep the sum rule true so every generated event is valid.
            let total = match &items {
                Some(lines) => {
                    lines.iter().map(|i| i.precio_unitario * Decimal::from(i.cantidad)).sum::<Decimal>()
                        + Decimal::new(1, 2)
                }
                None => total,
            };
            let mut items = items;
            if let Some(lines) = items.as_mut() {
                lines.push(Item { producto_id: "ROUNDING".into(), cantidad: 1, precio_unitario: Decimal::new(1, 2) });
            }
            let order = OrderState {
                pedido_id: Uuid::from_u128(p | 1),
                cliente_id: Uuid::from_u128(c | 1),
                fecha,
                total,
                items,
            };
            let at = Utc.timestamp_opt(occurred, 0).single().unwrap_or_default();
            if version == 1 {
                OrderEvent::created(order, at)
            } else {
                OrderEvent::updated(order, version, at)
            }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512), ..ProptestConfig::default() })]

    /// Whatever valid event is encoded, decoding gives it back unchanged, raw or inside an SNS envelope.
    #[test]
    fn encode_decode_round_trip(event in order_event()) {
        let json = event.to_json().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let raw = decode(&json).map_err(|e| TestCaseError::fail(format!("{e}: {json}")))?;
        prop_assert_eq!(&raw.payload, &Payload::Order(event.clone()));
        let envelope = serde_json::json!({"Type":"Notification","MessageId":"m","TopicArn":"arn:t","Message":json}).to_string();
        let wrapped = decode(&envelope).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(wrapped.payload, Payload::Order(event));
    }

    /// Arbitrary bytes never panic the decoder.
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&String::from_utf8_lossy(&bytes));
    }

    /// Arbitrary JSON-ish text (braces, quotes, field names of the contract) never panics either.
    #[test]
    fn decoding_json_like_text_never_panics(text in r#"[{}\[\]":,0-9a-zA-Z.eE+-]{0,200}"#) {
        let _ = decode(&text);
        let _ = decode(&format!(r#"{{"Type":"Notification","TopicArn":"t","MessageId":"m","Message":{}}}"#, serde_json::Value::from(text)));
    }
}

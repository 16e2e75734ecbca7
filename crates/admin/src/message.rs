//! A DLQ message as the commands see it, and everything about it that needs no AWS call: filters, ages, previews,
//! pretty bodies, JSON output, and the attributes a redrive drops.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use serde_json::{json, Value};

/// The attributes the worker adds when it dead-letters a message. A redrive drops them so that a new rejection is
/// recorded cleanly (and so the copy stays within SQS's 10 attributes when it is dead-lettered again).
pub const WORKER_ATTRIBUTES: [&str; 4] = ["rejectReason", "rejectDetail", "sourceQueue", "originalMessageId"];

/// A message attribute's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeData {
    Text(String),
    Binary(Vec<u8>),
}

/// A message attribute: its SQS data type (`String`, `Number`, `Binary`, or a custom `String.x`) and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeValue {
    pub data_type: String,
    pub data: AttributeData,
}

/// A received DLQ message, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlqMessage {
    pub message_id: String,
    /// Valid until the scan's visibility timeout lapses or the message is received again.
    pub receipt_handle: String,
    pub body: String,
    /// `SentTimestamp`: when the message entered the DLQ (the worker's copy) or its source queue (redrive policy).
    pub sent_at_ms: Option<u64>,
    /// `ApproximateReceiveCount`, this tool's own receives included.
    pub receive_count: u32,
    pub attributes: BTreeMap<String, AttributeValue>,
    /// Every system attribute SQS returned, by name (for `show`).
    pub system: BTreeMap<String, String>,
}

impl DlqMessage {
    pub fn from_sdk(message: Message) -> Self {
        let system: BTreeMap<String, String> = message
            .attributes
            .unwrap_or_default()
            .into_iter()
            .map(|(name, value)| (name.as_str().to_owned(), value))
            .collect();
        let number = |name: MessageSystemAttributeName| system.get(name.as_str()).and_then(|v| v.parse().ok());
        let attributes = message
            .message_attributes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(name, value)| {
                let data = match (value.string_value, value.binary_value) {
                    (Some(text), _) => AttributeData::Text(text),
                    (None, Some(blob)) => AttributeData::Binary(blob.into_inner()),
                    // List values are reserved by SQS and never sent by this system.
                    (None, None) => return None,
                };
                Some((name, AttributeValue { data_type: value.data_type, data }))
            })
            .collect();
        Self {
            message_id: message.message_id.unwrap_or_default(),
            receipt_handle: message.receipt_handle.unwrap_or_default(),
            body: message.body.unwrap_or_default(),
            sent_at_ms: number(MessageSystemAttributeName::SentTimestamp),
            receive_count: number(MessageSystemAttributeName::ApproximateReceiveCount)
                .and_then(|n: u64| u32::try_from(n).ok())
                .unwrap_or(1),
            attributes,
            system,
        }
    }

    /// A text attribute's value.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        match &self.attributes.get(name)?.data {
            AttributeData::Text(text) => Some(text),
            AttributeData::Binary(_) => None,
        }
    }

    /// `rejectReason`, absent for messages the redrive policy moved (the worker never saw them as poison).
    pub fn reason(&self) -> Option<&str> {
        self.attribute("rejectReason")
    }

    /// The order this message is about, when its body (or the event inside its SNS envelope) is a JSON object with a
    /// `pedidoId` (or the seed's `PedidoId`) string: poison that breaks the contract often still names its order.
    pub fn pedido_id(&self) -> Option<String> {
        let body: serde_json::Value = serde_json::from_str(&self.body).ok()?;
        let event = match body.get("Message").and_then(serde_json::Value::as_str) {
            Some(inner) => serde_json::from_str(inner).ok()?,
            None => body,
        };
        let id = event.get("pedidoId").or_else(|| event.get("PedidoId"))?.as_str()?;
        // Only what looks like an id goes on: the value is attacker-controlled text.
        (id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')).then(|| id.to_owned())
    }

    /// How long ago the message was sent to the queue it is in; `None` without a `SentTimestamp`.
    pub fn age(&self, now_ms: u64) -> Option<Duration> {
        self.sent_at_ms.map(|sent| Duration::from_millis(now_ms.saturating_sub(sent)))
    }

    pub fn system_attribute(&self, name: MessageSystemAttributeName) -> Option<&str> {
        self.system.get(name.as_str()).map(String::as_str)
    }

    /// The attributes a redriven copy carries: the original ones, without [`WORKER_ATTRIBUTES`].
    pub fn forwarded_attributes(&self) -> BTreeMap<String, AttributeValue> {
        self.attributes
            .iter()
            .filter(|(name, _)| !WORKER_ATTRIBUTES.contains(&name.as_str()))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    }

    /// `originalMessageId`: the id the message had in its source queue when the worker dead-lettered it (the
    /// redrive policy's moves have none).
    pub fn original_id(&self) -> Option<&str> {
        self.attribute("originalMessageId")
    }

    /// What stays the same when this message goes round (redriven, rejected, dead-lettered again under a new DLQ
    /// message id): its `originalMessageId` when it has one, else a digest of its body.
    pub fn identity(&self) -> String {
        match self.original_id() {
            Some(id) => format!("id:{id}"),
            None => format!("body:{}", body_digest(&self.body)),
        }
    }

    /// One `list` line: id, reason, age, receive count and a one-line body preview.
    pub fn line(&self, now_ms: u64) -> String {
        format!(
            "{} reason={} age={} receives={} body={}",
            escape(&self.message_id),
            escape(self.reason().unwrap_or("-")),
            self.age(now_ms).map_or_else(|| "?".to_owned(), format_age),
            self.receive_count,
            preview(&self.body, PREVIEW_CHARS),
        )
    }

    /// The message as one JSON object (`list --json`, `show --json`).
    pub fn to_json(&self, now_ms: u64) -> Value {
        let attributes: serde_json::Map<String, Value> = self
            .attributes
            .iter()
            .map(|(name, value)| {
                let entry = match &value.data {
                    AttributeData::Text(text) => json!({"type": value.data_type, "value": text}),
                    AttributeData::Binary(bytes) => {
                        json!({"type": value.data_type, "base64": aws_smithy_types::base64::encode(bytes)})
                    }
                };
                (name.clone(), entry)
            })
            .collect();
        json!({
            "messageId": self.message_id,
            "rejectReason": self.reason(),
            "rejectDetail": self.attribute("rejectDetail"),
            "sourceQueue": self.attribute("sourceQueue"),
            "originalMessageId": self.attribute("originalMessageId"),
            "sentAt": self.sent_at_ms.and_then(rfc3339),
            "ageSeconds": self.age(now_ms).map(|age| age.as_secs()),
            "receiveCount": self.receive_count,
            "body": self.body,
            "attributes": attributes,
            "systemAttributes": self.system,
        })
    }
}

/// SHA-256 of a body, in hex.
pub fn body_digest(body: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(body.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Which messages a command acts on; empty selects every message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Exact `rejectReason` values (any of them); `-` stands for "no rejectReason".
    pub reasons: Vec<String>,
    /// Only messages at least this old.
    pub older_than: Option<Duration>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.reasons.is_empty() && self.older_than.is_none()
    }

    pub fn matches(&self, message: &DlqMessage, now_ms: u64) -> bool {
        let reason_ok = self.reasons.is_empty()
            || self.reasons.iter().any(|wanted| wanted.as_str() == message.reason().unwrap_or("-"));
        // A message without a timestamp is not known to be old enough: never selected by age.
        let age_ok = self.older_than.is_none_or(|min| message.age(now_ms).is_some_and(|age| age >= min));
        reason_ok && age_ok
    }
}

/// Parses `90s`, `10m`, `2h`, `1d`, `1w`, and sums like `1h30m`.
///
/// # Errors
/// A message for the command line: a number without a unit, an unknown unit, or an overflow.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("expected a duration such as 10m, 2h or 1d".into());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(format!("unknown unit {c:?} in {text:?}: use s, m, h, d or w")),
        };
        if digits.is_empty() {
            return Err(format!("{text:?}: a unit needs a number before it"));
        }
        let n: u64 = digits.parse().map_err(|_| format!("{text:?} is too large"))?;
        total =
            n.checked_mul(unit).and_then(|s| total.checked_add(s)).ok_or_else(|| format!("{text:?} is too large"))?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!("{text:?}: add a unit (s, m, h, d or w), e.g. {digits}m"));
    }
    Ok(Duration::from_secs(total))
}

/// `42s`, `5m`, `2h13m`, `3d4h`: the two largest units.
pub fn format_age(age: Duration) -> String {
    let s = age.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// Characters of body preview per `list` line.
pub const PREVIEW_CHARS: usize = 80;

/// The body in one line of at most `max` characters. For an SNS notification the inner `Message` is shown: every
/// envelope starts with the same `{"Type":"Notification",...` and would hide what differs.
pub fn preview(body: &str, max: usize) -> String {
    let inner = serde_json::from_str::<Value>(body).ok().and_then(|value| {
        let object = value.as_object()?;
        if object.get("Type")?.as_str()? != "Notification" {
            return None;
        }
        Some(object.get("Message")?.as_str()?.to_owned())
    });
    let text = inner.as_deref().unwrap_or(body);
    let mut out = String::new();
    for (count, c) in text.chars().enumerate() {
        if count == max {
            out.push('…');
            break;
        }
        out.push_str(&escape_char(c));
    }
    out
}

/// The text with every character that could drive or reorder the operator's terminal escaped (see
/// [`is_hostile`]), newlines and tabs included: a body cannot forge a line of output.
pub fn escape(text: &str) -> String {
    text.chars().map(escape_char).collect()
}

/// C0 and C1 controls (ESC and the 8-bit CSI included) and DEL, and the bidirectional formatting characters that make a
/// terminal show text in another order than it was written (embeddings, overrides, isolates, marks).
pub fn is_hostile(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

fn escape_char(c: char) -> String {
    match c {
        '\n' => "\\n".into(),
        '\t' => "\\t".into(),
        '\r' => "\\r".into(),
        c if is_hostile(c) => c.escape_unicode().to_string(),
        c => c.to_string(),
    }
}

/// `value` as JSON in which every [`is_hostile`] character is a `\uXXXX` escape. serde_json escapes only C0 controls;
/// a C1 control or a bidi override inside a string would reach the terminal raw.
pub fn inert_json(value: &Value, pretty: bool) -> String {
    let text = if pretty { serde_json::to_string_pretty(value) } else { serde_json::to_string(value) };
    // Serialising a `Value` cannot fail (its map keys are strings); an empty object would hide nothing.
    let text = text.unwrap_or_else(|_| "{}".to_owned());
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        // serde_json already escapes C0 inside strings, and the pretty writer's own newlines are C0: only DEL and
        // above are left. Outside strings JSON has only ASCII punctuation and whitespace, so these are inside a
        // string, where `\uXXXX` means the same character (all of them are in the Basic Multilingual Plane).
        if is_hostile(c) && u32::from(c) >= 0x7f {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// The body for `show`: pretty-printed when it is JSON, with an SNS envelope's `Message` parsed as JSON too; every
/// hostile character escaped either way.
pub fn pretty_body(body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(mut value) => {
            if let Some(message) = value.get_mut("Message") {
                if let Some(inner) = message.as_str().and_then(|text| serde_json::from_str::<Value>(text).ok()) {
                    *message = inner;
                }
            }
            inert_json(&value, true)
        }
        Err(_) => escape(body),
    }
}

/// `SentTimestamp` milliseconds as RFC 3339.
pub fn rfc3339(ms: u64) -> Option<String> {
    let ms = i64::try_from(ms).ok()?;
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(reason: Option<&str>, sent_at_ms: Option<u64>) -> DlqMessage {
        let mut attributes = BTreeMap::from([(
            "eventType".to_owned(),
            AttributeValue { data_type: "String".into(), data: AttributeData::Text("PedidoCreado".into()) },
        )]);
        for name in WORKER_ATTRIBUTES {
            attributes.insert(
                name.to_owned(),
                AttributeValue { data_type: "String".into(), data: AttributeData::Text(format!("{name}-value")) },
            );
        }
        match reason {
            Some(reason) => {
                attributes.insert(
                    "rejectReason".into(),
                    AttributeValue { data_type: "String".into(), data: AttributeData::Text(reason.into()) },
                );
            }
            None => {
                attributes.remove("rejectReason");
            }
        }
        DlqMessage {
            message_id: "m-1".into(),
            receipt_handle: "h".into(),
            body: "{}".into(),
            sent_at_ms,
            receive_count: 2,
            attributes,
            system: BTreeMap::new(),
        }
    }

    #[test]
    fn the_order_is_read_from_the_body_or_its_envelope_and_only_when_it_looks_like_an_id() {
        let with = |body: &str| DlqMessage { body: body.to_owned(), ..message(None, None) }.pedido_id();
        let id = "6f1c2a9e-4b7d-4c1e-9a3f-2d5e8b7c6a10";
        assert_eq!(with(&format!(r#"{{"pedidoId":"{id}","total":-1}}"#)).as_deref(), Some(id));
        assert_eq!(with(&format!(r#"{{"PedidoId":"{id}"}}"#)).as_deref(), Some(id));
        let inner = serde_json::json!({"pedidoId": id}).to_string();
        let envelope = serde_json::json!({"Type": "Notification", "Message": inner}).to_string();
        assert_eq!(with(&envelope).as_deref(), Some(id));
        for body in ["not json", "{}", r#"{"pedidoId":7}"#, r#"{"pedidoId":"<img src=x onerror=alert(1)>"}"#] {
            assert_eq!(with(body), None, "{body}");
        }
    }

    #[test]
    fn durations_take_units_and_sums() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "10", "m", "5y", "1.5h", "-1h", "99999999999999999999s", "999999999999999w"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn ages_show_the_two_largest_units() {
        assert_eq!(format_age(Duration::from_secs(42)), "42s");
        assert_eq!(format_age(Duration::from_secs(300)), "5m");
        assert_eq!(format_age(Duration::from_secs(2 * 3600 + 13 * 60 + 5)), "2h13m");
        assert_eq!(format_age(Duration::from_secs(3 * 86_400 + 4 * 3600)), "3d4h");
    }

    #[test]
    fn filters_match_exact_reasons_and_minimum_ages() {
        let now = 10_000_000;
        let old_poison = message(Some("not_json"), Some(now - 3_600_000));
        let new_poison = message(Some("not_json"), Some(now - 1000));
        let redriven_by_policy = message(None, Some(now - 3_600_000));
        let by_reason = Filter { reasons: vec!["not_json".into()], older_than: None };
        assert!(by_reason.matches(&old_poison, now) && by_reason.matches(&new_poison, now));
        assert!(!by_reason.matches(&redriven_by_policy, now));
        assert!(!Filter { reasons: vec!["not_jso".into()], older_than: None }.matches(&old_poison, now));
        assert!(Filter { reasons: vec!["-".into()], older_than: None }.matches(&redriven_by_policy, now));
        let by_age = Filter { reasons: vec![], older_than: Some(Duration::from_secs(600)) };
        assert!(by_age.matches(&old_poison, now) && !by_age.matches(&new_poison, now));
        assert!(!by_age.matches(&message(Some("x"), None), now));
        assert!(Filter::default().is_empty() && Filter::default().matches(&new_poison, now));
    }

    #[test]
    fn a_redrive_forwards_the_original_attributes_only() {
        let forwarded = message(Some("not_json"), None).forwarded_attributes();
        assert_eq!(forwarded.keys().collect::<Vec<_>>(), ["eventType"]);
    }

    #[test]
    fn previews_are_one_escaped_line_and_show_the_sns_message() {
        assert_eq!(preview("a\nb\tc\u{1b}[31m\r", 80), "a\\nb\\tc\\u{1b}[31m\\r");
        assert_eq!(preview("abcdef", 3), "abc…");
        assert_eq!(preview("évident\u{202E}", 80), "évident\\u{202e}");
        let envelope = json!({"Type": "Notification", "MessageId": "x", "Message": "{\"type\":\"PedidoCreado\"}"});
        assert_eq!(preview(&envelope.to_string(), 80), "{\"type\":\"PedidoCreado\"}");
        assert_eq!(preview("{\"Type\":\"Other\"}", 80), "{\"Type\":\"Other\"}");
    }

    #[test]
    fn pretty_bodies_parse_the_inner_sns_message_and_keep_money_exact() {
        let envelope = json!({"Type": "Notification", "Message": "{\"total\":0.30}"}).to_string();
        let pretty = pretty_body(&envelope);
        assert!(pretty.contains("\"total\": 0.30"), "{pretty}");
        // A body that is not JSON cannot forge lines of output either.
        assert_eq!(pretty_body("not json\n\u{7}"), "not json\\n\\u{7}");
        assert_eq!(pretty_body("{\"Message\":\"plain\"}"), "{\n  \"Message\": \"plain\"\n}");
    }

    /// Every character that can drive or reorder a terminal: C0 (ESC, BEL, backspace, newline), DEL, C1 (the 8-bit
    /// CSI and OSC), and the bidi embeddings, overrides, isolates and marks.
    const HOSTILE: [char; 19] = [
        '\u{1b}', '\u{7}', '\u{8}', '\n', '\r', '\u{7f}', '\u{80}', '\u{9b}', '\u{9d}', '\u{9f}', '\u{202a}',
        '\u{202e}', '\u{2066}', '\u{2067}', '\u{2069}', '\u{200e}', '\u{200f}', '\u{61c}', '\u{85}',
    ];

    fn hostile_text() -> String {
        format!("a{}z", HOSTILE.iter().collect::<String>())
    }

    fn hostile_message() -> DlqMessage {
        let text = hostile_text();
        let mut m = message(Some(&text), Some(1));
        m.message_id = format!("id{text}");
        m.body = format!("{{\"Type\":\"Notification\",\"Message\":{}}}", json!(format!("{{\"k\":\"{text}\"}}")));
        m.attributes.insert(
            format!("name{text}"),
            AttributeValue { data_type: "String".into(), data: AttributeData::Text(text.clone()) },
        );
        m.system.insert("SenderId".into(), text);
        m
    }

    fn assert_inert(output: &str) {
        let raw: Vec<char> = output.chars().filter(|c| HOSTILE.contains(c)).collect();
        assert!(raw.is_empty(), "raw {raw:?} in {output:?}");
    }

    /// Pretty JSON: its own newlines are layout (a newline inside a JSON string is always written `\n`).
    fn assert_inert_pretty(output: &str) {
        assert_inert(&output.replace('\n', ""));
    }

    #[test]
    fn hostile_characters_are_escaped_in_every_text_output() {
        let text = hostile_text();
        for c in HOSTILE {
            assert!(is_hostile(c), "{c:?}");
        }
        assert!(!is_hostile('é') && !is_hostile(' ') && !is_hostile('€'));
        assert_inert(&escape(&text));
        assert_eq!(escape("\u{9b}31m\u{202e}x"), "\\u{9b}31m\\u{202e}x");
        assert_inert(&preview(&text, 80));
        assert_inert(&pretty_body(&text));
        let m = hostile_message();
        assert_inert(&m.line(10));
        assert_inert_pretty(&pretty_body(&m.body));
        // Not JSON, and JSON whose strings carry them: both inert.
        assert_inert_pretty(&pretty_body(&format!("{{\"k\":{}}}", json!(text))));
    }

    #[test]
    fn json_output_uses_u_escapes_for_hostile_characters_and_keeps_the_value() {
        let m = hostile_message();
        for pretty in [false, true] {
            let out = inert_json(&m.to_json(10), pretty);
            if pretty {
                assert_inert_pretty(&out);
            } else {
                assert_inert(&out);
            }
            assert!(out.contains("\\u009b") && out.contains("\\u202e") && out.contains("\\u061c"), "{out}");
            // The same value once parsed: escaping changed the bytes, not the data.
            let back: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
            assert_eq!(back, m.to_json(10));
        }
    }

    #[test]
    fn identity_is_the_original_id_else_the_body() {
        let mut m = message(None, None);
        m.attributes.insert(
            "originalMessageId".into(),
            AttributeValue { data_type: "String".into(), data: AttributeData::Text("src-1".into()) },
        );
        assert_eq!(m.identity(), "id:src-1");
        m.attributes.remove("originalMessageId");
        assert_eq!(m.identity(), format!("body:{}", body_digest("{}")));
        assert_eq!(body_digest("{}").len(), 64);
        assert_ne!(body_digest("a"), body_digest("b"));
    }

    #[test]
    fn lines_and_json_carry_the_reason_age_and_count() {
        let now = 10_000_000;
        let line = message(Some("bad\nreason"), Some(now - 120_000)).line(now);
        assert_eq!(line, "m-1 reason=bad\\nreason age=2m receives=2 body={}");
        assert!(message(None, None).line(now).contains("reason=- age=?"));
        let value = message(Some("not_json"), Some(now - 5000)).to_json(now);
        assert_eq!(value["rejectReason"], "not_json");
        assert_eq!(value["ageSeconds"], 5);
        assert_eq!(value["attributes"]["eventType"]["value"], "PedidoCreado");
    }
}

//! The console's order view: one order's path through the pipeline, from what the workers recorded.
//!
//! Each applied version carries its origin (when the API accepted it, the SNS message id it was published as, the
//! trace id it travelled in; `store::Origin`), and the shipment carries the order's. From those the view lists, in
//! time order: each version accepted and published, each version applied by the process role (with its delay after
//! acceptance), and the shipment created by logistics (with its delay). Nothing here calls SQS: the DLQ messages of an
//! order are looked up only when the operator asks (the page says that it adds a receive).

use chrono::{DateTime, Utc};
use platform::config::ConfigError;
use serde::Serialize;
use store::{OrderRecord, OrderView};
use uuid::Uuid;

/// `TRACE_URL_TEMPLATE`: where a trace id links to, e.g. `http://localhost:16686/trace/{traceId}` (Jaeger) or the
/// X-Ray console's trace URL. `{traceId}` is replaced with the 32-hex-digit W3C trace id, `{xrayTraceId}` with the
/// same id in X-Ray's form (`1-<first 8 hex>-<other 24 hex>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceUrl(String);

/// The placeholders a [`TraceUrl`] holds (at least one).
pub const TRACE_ID_PLACEHOLDER: &str = "{traceId}";
pub const XRAY_TRACE_ID_PLACEHOLDER: &str = "{xrayTraceId}";

impl TraceUrl {
    /// # Errors
    /// [`ConfigError::Invalid`] naming `var` unless `text` is an `http(s)://` URL holding `{traceId}`.
    pub fn parse(var: &'static str, text: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: &str| ConfigError::Invalid { var, value: text.to_owned(), reason: reason.to_owned() };
        if !(text.starts_with("https://") || text.starts_with("http://")) {
            return Err(invalid("must be an http:// or https:// URL"));
        }
        if !text.contains(TRACE_ID_PLACEHOLDER) && !text.contains(XRAY_TRACE_ID_PLACEHOLDER) {
            return Err(invalid("must contain {traceId} (or {xrayTraceId}), where the trace id goes"));
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '<' || c == '>') {
            return Err(invalid("must not contain spaces, quotes, angle brackets or control characters"));
        }
        Ok(Self(text.to_owned()))
    }

    /// The link for `trace_id`, or `None` when it is not a W3C trace id (32 lowercase hex digits, not all zero):
    /// only such ids ever reach the URL.
    pub fn link(&self, trace_id: &str) -> Option<String> {
        let valid = trace_id.len() == 32
            && trace_id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && trace_id.bytes().any(|b| b != b'0');
        valid.then(|| {
            let xray = format!("1-{}-{}", &trace_id[..8], &trace_id[8..]);
            self.0.replace(TRACE_ID_PLACEHOLDER, trace_id).replace(XRAY_TRACE_ID_PLACEHOLDER, &xray)
        })
    }
}

/// One step of an order's path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub at: DateTime<Utc>,
    /// `accepted` (the API answered 202 and SNS took it), `applied` (process role) or `shipment` (logistics role).
    pub kind: &'static str,
    pub version: Option<u64>,
    /// Milliseconds from the API's acceptance of this change to this step; `None` for the acceptance itself or when
    /// the acceptance time is unknown (changes recorded before origins were).
    pub delay_ms: Option<i64>,
    pub request_id: Option<String>,
    /// The API client that sent it (accepted steps).
    pub client: Option<String>,
    /// The SNS message id it was published as.
    pub message_id: Option<String>,
    pub trace_id: Option<String>,
    /// The trace's link, with `TRACE_URL_TEMPLATE` set.
    pub trace_url: Option<String>,
}

/// An order and its path, as the console's order view shows them.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeline {
    pub pedido_id: Uuid,
    pub cliente_id: Uuid,
    pub cliente_api: Option<String>,
    pub estado: String,
    pub version: u64,
    /// Exact decimal as text.
    pub total: String,
    pub fecha: String,
    pub tracking_code: Option<String>,
    /// Versions applied in all; more than the steps show once the history was compacted.
    pub versiones_aplicadas: u64,
    /// Versions no longer in the stored history (their steps cannot be shown).
    pub versions_not_listed: u64,
    pub steps: Vec<Step>,
}

/// The path of `view`, steps in time order (acceptance before application at equal times).
pub fn timeline(view: &OrderView, trace_url: Option<&TraceUrl>) -> Timeline {
    let order = &view.order;
    let link = |trace_id: &Option<String>| trace_id.as_deref().zip(trace_url).and_then(|(id, url)| url.link(id));
    let delay = |from: Option<DateTime<Utc>>, to: DateTime<Utc>| from.map(|from| (to - from).num_milliseconds());
    let mut steps = Vec::new();
    for applied in &order.versiones {
        let origin = &applied.origin;
        if let Some(accepted) = origin.accepted_at {
            steps.push(Step {
                at: accepted,
                kind: "accepted",
                version: Some(applied.version),
                delay_ms: None,
                request_id: applied.request_id.clone(),
                client: order.client.clone(),
                message_id: origin.message_id.clone(),
                trace_id: origin.trace_id.clone(),
                trace_url: link(&origin.trace_id),
            });
        }
        steps.push(Step {
            at: applied.aplicada_en,
            kind: "applied",
            version: Some(applied.version),
            delay_ms: delay(origin.accepted_at, applied.aplicada_en),
            request_id: applied.request_id.clone(),
            client: None,
            message_id: origin.message_id.clone(),
            trace_id: origin.trace_id.clone(),
            trace_url: link(&origin.trace_id),
        });
    }
    if let Some(shipment) = &view.envio {
        let accepted = shipment.origin.accepted_at.or_else(|| first_accepted(order));
        steps.push(Step {
            at: shipment.creado_en,
            kind: "shipment",
            version: Some(1),
            delay_ms: delay(accepted, shipment.creado_en),
            request_id: shipment.request_id.clone(),
            client: None,
            message_id: shipment.origin.message_id.clone(),
            trace_id: shipment.origin.trace_id.clone(),
            trace_url: link(&shipment.origin.trace_id),
        });
    }
    // Stable: at equal times, the order pushed above (accepted, applied, shipment) stays.
    steps.sort_by_key(|step| step.at);
    Timeline {
        pedido_id: order.pedido_id,
        cliente_id: order.cliente_id,
        cliente_api: order.client.clone(),
        estado: order.estado.clone(),
        version: order.version,
        total: order.total.to_string(),
        fecha: order.fecha.to_rfc3339(),
        tracking_code: view.envio.as_ref().map(|envio| envio.tracking_code.clone()),
        versiones_aplicadas: order.versiones_aplicadas,
        versions_not_listed: order.versiones_aplicadas.saturating_sub(order.versiones.len() as u64),
        steps,
    }
}

/// When version 1 was accepted, if the history still holds it.
fn first_accepted(order: &OrderRecord) -> Option<DateTime<Utc>> {
    order.versiones.iter().find(|v| v.version == 1).and_then(|v| v.origin.accepted_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use domain::{OrderEvent, OrderState};
    use rust_decimal::Decimal;
    use store::{ChangeMeta, Origin, Shipment};

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    fn at(seconds: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 5, 10, 0, seconds).single().unwrap_or_default()
    }

    fn event(version: u64, accepted: DateTime<Utc>) -> OrderEvent {
        let order = OrderState {
            pedido_id: Uuid::from_u128(1),
            cliente_id: Uuid::from_u128(2),
            fecha: at(0).fixed_offset(),
            total: Decimal::new(1250, 2),
            items: None,
        };
        let event = if version == 1 {
            OrderEvent::created(order, accepted)
        } else {
            OrderEvent::updated(order, version, accepted)
        };
        event.by_client(Some("shop-a".into()))
    }

    fn meta(event: &OrderEvent, applied: DateTime<Utc>, message: &str) -> ChangeMeta {
        ChangeMeta {
            request_id: Some(format!("req-{}", event.version)),
            at: applied,
            origin: Origin::of(event, Some(message), Some(TRACE)),
        }
    }

    fn view() -> OrderView {
        let v1 = event(1, at(1));
        let v2 = event(2, at(5));
        let order = OrderRecord::first(&v1, &meta(&v1, at(2), "sns-1")).then(&v2, &meta(&v2, at(7), "sns-2"));
        let shipment = Shipment {
            pedido_id: Uuid::from_u128(1),
            tracking_code: "ECX-TEST".into(),
            estado: "PREPARANDO".into(),
            creado_en: at(3),
            request_id: Some("req-1".into()),
            origin: Origin::of(&v1, Some("sns-1"), Some(TRACE)),
        };
        OrderView { order, envio: Some(shipment) }
    }

    #[test]
    fn steps_follow_the_order_in_time_with_delays_after_acceptance() {
        let url = TraceUrl::parse("TRACE_URL_TEMPLATE", "http://localhost:16686/trace/{traceId}")
            .unwrap_or_else(|e| panic!("{e}"));
        let timeline = timeline(&view(), Some(&url));
        let steps: Vec<(&str, Option<u64>, Option<i64>)> =
            timeline.steps.iter().map(|s| (s.kind, s.version, s.delay_ms)).collect();
        assert_eq!(
            steps,
            [
                ("accepted", Some(1), None),
                ("applied", Some(1), Some(1000)),
                ("shipment", Some(1), Some(2000)),
                ("accepted", Some(2), None),
                ("applied", Some(2), Some(2000)),
            ]
        );
        assert_eq!(timeline.steps[0].client.as_deref(), Some("shop-a"));
        assert_eq!(timeline.steps[3].message_id.as_deref(), Some("sns-2"));
        assert_eq!(timeline.steps[0].trace_url.as_deref(), Some(&*format!("http://localhost:16686/trace/{TRACE}")));
        assert_eq!((timeline.total.as_str(), timeline.tracking_code.as_deref()), ("12.50", Some("ECX-TEST")));
        assert_eq!(timeline.versions_not_listed, 0);
    }

    #[test]
    fn changes_recorded_before_origins_show_without_delays_or_links() {
        let mut view = view();
        for applied in &mut view.order.versiones {
            applied.origin = Origin::default();
        }
        view.envio = None;
        let timeline = timeline(&view, None);
        assert!(timeline.steps.iter().all(|s| s.kind == "applied" && s.delay_ms.is_none() && s.trace_url.is_none()));
    }

    #[test]
    fn the_trace_url_template_is_checked_and_only_trace_ids_reach_it() {
        for (text, expected) in [
            ("localhost:16686/trace/{traceId}", "http:// or https://"),
            ("http://jaeger/trace/", "must contain {traceId}"),
            ("http://jaeger/trace/{traceId}\"onclick", "must not contain"),
        ] {
            let error = TraceUrl::parse("TRACE_URL_TEMPLATE", text).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(error.starts_with("TRACE_URL_TEMPLATE=") && error.contains(expected), "{text}: {error}");
        }
        let url = TraceUrl::parse("TRACE_URL_TEMPLATE", "https://x/{traceId}").unwrap_or_else(|e| panic!("{e}"));
        for hostile in
            ["javascript:alert(1)", "4BF92F3577B34DA6A3CE929D0E0E4736", "00000000000000000000000000000000", ""]
        {
            assert_eq!(url.link(hostile), None, "{hostile}");
        }
        assert_eq!(url.link(TRACE), Some(format!("https://x/{TRACE}")));
        let xray =
            TraceUrl::parse("TRACE_URL_TEMPLATE", "https://console.aws.amazon.com/xray/home#/traces/{xrayTraceId}")
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            xray.link(TRACE).as_deref(),
            Some("https://console.aws.amazon.com/xray/home#/traces/1-4bf92f35-77b34da6a3ce929d0e0e4736")
        );
    }
}

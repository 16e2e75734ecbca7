//! Turning a request body into a validated order, reporting every problem per field.
//!
//! Field names match case-insensitively, so the seed's PascalCase (`PedidoId`, `ClienteId`, `Fecha`, `Total`) works as
//! ASP.NET's binder did. Unknown fields are rejected by name. Money is parsed from the JSON text, never via f64.

use std::collections::HashSet;
use std::str::FromStr;

use chrono::{DateTime, FixedOffset, Utc};
use domain::validation::{check_amount, check_order, FieldErrors};
use domain::{Item, OrderState, MAX_VERSION};
use rust_decimal::Decimal;
use serde_json::{Map, Value};
use uuid::Uuid;

/// What the route allows in the body.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// `POST /api/pedidos`: `pedidoId` optional, no `version`.
    Create,
    /// `PUT /api/pedidos/{pedidoId}`: `version` (>= 2) required; a body `pedidoId` must match the path.
    Update { pedido_id: Uuid },
}

/// A valid order and, for updates, its version.
#[derive(Debug)]
pub struct OrderInput {
    pub order: OrderState,
    pub version: Option<u64>,
    /// The client chose the `pedidoId` (on POST): only then can the order collide with one already stored.
    pub pedido_id_given: bool,
    /// The client gave `fecha`; otherwise it is the time of the request, which differs on every retry.
    pub fecha_given: bool,
}

const FIELDS: [&str; 6] = ["pedidoId", "clienteId", "fecha", "total", "items", "version"];
const ITEM_FIELDS: [&str; 3] = ["productoId", "cantidad", "precioUnitario"];

/// Parses and validates `body`.
///
/// # Errors
/// Every problem, keyed by the canonical (camelCase) field name.
pub fn parse(body: Map<String, Value>, mode: Mode, now: DateTime<Utc>) -> Result<OrderInput, FieldErrors> {
    let mut errors = FieldErrors::default();
    let fields = canonical_fields(body, &FIELDS, "", &mut errors);
    let get = |name: &str| fields.iter().find(|(k, _)| *k == name).map(|(_, v)| v);

    let pedido_id = match (mode, get("pedidoId")) {
        (Mode::Create, None) => Some(Uuid::new_v4()),
        (Mode::Create, Some(v)) => uuid(v, "pedidoId", &mut errors),
        (Mode::Update { pedido_id }, None) => Some(pedido_id),
        (Mode::Update { pedido_id }, Some(v)) => {
            let body_id = uuid(v, "pedidoId", &mut errors);
            if body_id.is_some_and(|id| id != pedido_id) {
                errors.add("pedidoId", "must match the pedidoId in the path");
            }
            Some(pedido_id)
        }
    };
    let cliente_id = match get("clienteId") {
        Some(v) => uuid(v, "clienteId", &mut errors),
        None => missing("clienteId", &mut errors),
    };
    let fecha = match get("fecha") {
        Some(v) => timestamp(v, "fecha", &mut errors),
        None => Some(now.fixed_offset()),
    };
    let total = match get("total") {
        Some(v) => decimal(v, "total", &mut errors),
        None => missing("total", &mut errors),
    };
    let items = get("items").and_then(|v| items(v, &mut errors));
    let version = match (mode, get("version")) {
        (Mode::Create, Some(_)) => {
            errors.add("version", "is set by the server on creation (always 1); use PUT to publish a new version");
            None
        }
        (Mode::Create, None) => None,
        (Mode::Update { .. }, None) => missing("version", &mut errors),
        (Mode::Update { .. }, Some(v)) => match whole_number(v) {
            Some(n) if (2..=MAX_VERSION).contains(&n) => Some(n),
            _ => {
                errors
                    .add("version", format!("must be an integer from 2 to {MAX_VERSION} (version 1 is the creation)"));
                None
            }
        },
    };

    let parsed = Parsed { pedido_id, cliente_id, total, items };
    check_parsed(&parsed, now, &mut errors);
    // `None` when a line did not parse (already reported); `Some(None)` when the order has no items.
    let items = match parsed.items {
        None => Some(None),
        Some(lines) => lines.into_iter().map(Line::complete).collect::<Option<Vec<Item>>>().map(Some),
    };
    match (parsed.pedido_id, parsed.cliente_id, fecha, parsed.total, items) {
        (Some(pedido_id), Some(cliente_id), Some(fecha), Some(total), Some(items)) if errors.is_empty() => {
            Ok(OrderInput {
                order: OrderState { pedido_id, cliente_id, fecha, total, items },
                version,
                pedido_id_given: get("pedidoId").is_some(),
                fecha_given: get("fecha").is_some(),
            })
        }
        _ => Err(errors),
    }
}

/// The fields the business rules look at, each `None` when it did not parse.
struct Parsed {
    pedido_id: Option<Uuid>,
    cliente_id: Option<Uuid>,
    total: Option<Decimal>,
    /// `None` when absent (or not an array, already reported).
    items: Option<Vec<Line>>,
}

/// One order line, each part `None` when it did not parse.
#[derive(Default)]
struct Line {
    producto_id: Option<String>,
    cantidad: Option<u32>,
    precio_unitario: Option<Decimal>,
}

impl Line {
    fn complete(self) -> Option<Item> {
        Some(Item { producto_id: self.producto_id?, cantidad: self.cantidad?, precio_unitario: self.precio_unitario? })
    }
}

/// Runs the business rules on every field that parsed, so one answer lists every problem: a bad `clienteId` must not
/// hide an out-of-range `total`, nor a bad `cantidad` its line's `productoId`.
///
/// `check_order` judges a whole order, so each field that did not parse is stood in by a value that passes every rule
/// (a line part adding nothing to the sum), and the problems reported on stand-ins are dropped. The sum rule needs
/// `total` and every line part; without them `total` still gets its own rules.
fn check_parsed(parsed: &Parsed, now: DateTime<Utc>, errors: &mut FieldErrors) {
    let mut stand_ins: HashSet<String> = HashSet::new();
    let mut stand_in = |field: String| stand_ins.insert(field);
    if parsed.pedido_id.is_none() {
        stand_in("pedidoId".into());
    }
    if parsed.cliente_id.is_none() {
        stand_in("clienteId".into());
    }
    let lines = parsed.items.as_deref().unwrap_or_default();
    let mut sum_is_real = parsed.total.is_some();
    let probe_lines: Vec<Item> = lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            for (name, missing) in [
                ("productoId", line.producto_id.is_none()),
                ("cantidad", line.cantidad.is_none()),
                ("precioUnitario", line.precio_unitario.is_none()),
            ] {
                if missing {
                    stand_in(format!("items[{i}].{name}"));
                    sum_is_real = false;
                }
            }
            Item {
                producto_id: line.producto_id.clone().unwrap_or_else(|| "-".into()),
                cantidad: line.cantidad.unwrap_or(1),
                precio_unitario: line.precio_unitario.unwrap_or(Decimal::ZERO),
            }
        })
        .collect();
    if !sum_is_real {
        stand_in("total".into());
    }
    let probe = OrderState {
        pedido_id: parsed.pedido_id.unwrap_or(STAND_IN_ID),
        cliente_id: parsed.cliente_id.unwrap_or(STAND_IN_ID),
        fecha: now.fixed_offset(),
        total: parsed.total.unwrap_or(Decimal::ONE),
        items: parsed.items.as_ref().map(|_| probe_lines),
    };
    let mut found = FieldErrors::default();
    check_order(&probe, &mut found);
    for field in found.fields().filter(|field| !stand_ins.contains(*field)) {
        for message in found.get(field).unwrap_or_default() {
            errors.add(field, message.clone());
        }
    }
    if let (Some(total), false) = (parsed.total, sum_is_real) {
        check_amount("total", total, false, errors);
    }
}

/// Stands in for an id that did not parse: not nil, so it passes every rule.
const STAND_IN_ID: Uuid = Uuid::from_u128(1);

/// Maps keys case-insensitively onto `known`, reporting unknown and repeated ones.
fn canonical_fields(
    body: Map<String, Value>,
    known: &[&'static str],
    prefix: &str,
    errors: &mut FieldErrors,
) -> Vec<(&'static str, Value)> {
    let mut out: Vec<(&'static str, Value)> = Vec::with_capacity(body.len());
    for (key, value) in body {
        match known.iter().find(|k| k.eq_ignore_ascii_case(&key)) {
            Some(name) if out.iter().any(|(k, _)| k == name) => {
                errors.add(format!("{prefix}{name}"), "given more than once")
            }
            Some(name) => out.push((name, value)),
            None => errors.add(format!("{prefix}{}", truncate(&key)), "unknown field"),
        }
    }
    out
}

fn truncate(key: &str) -> String {
    key.chars().take(64).collect()
}

/// A JSON number that is a whole, non-negative number: `3`, and also `3.0` or `3e0` (JSON Schema counts those as
/// integers too), read from the number's text.
fn whole_number(value: &Value) -> Option<u64> {
    if let Some(n) = value.as_u64() {
        return Some(n);
    }
    let Value::Number(number) = value else {
        return None;
    };
    let text = number.to_string();
    let exact = Decimal::from_str(&text).or_else(|_| Decimal::from_scientific(&text)).ok()?;
    if exact.fract().is_zero() {
        u64::try_from(exact).ok()
    } else {
        None
    }
}

fn missing<T>(field: &str, errors: &mut FieldErrors) -> Option<T> {
    errors.add(field, "is required");
    None
}

fn uuid(value: &Value, field: &str, errors: &mut FieldErrors) -> Option<Uuid> {
    match value.as_str().map(Uuid::from_str) {
        Some(Ok(id)) => Some(id),
        _ => {
            errors.add(field, "must be a UUID string");
            None
        }
    }
}

fn timestamp(value: &Value, field: &str, errors: &mut FieldErrors) -> Option<DateTime<FixedOffset>> {
    match value.as_str().map(DateTime::parse_from_rfc3339) {
        Some(Ok(t)) => Some(t),
        _ => {
            errors.add(field, "must be an RFC 3339 date-time string, e.g. 2026-11-21T10:30:00-03:00");
            None
        }
    }
}

/// A decimal from a JSON number (its exact text, thanks to serde_json's arbitrary_precision) or a string.
fn decimal(value: &Value, field: &str, errors: &mut FieldErrors) -> Option<Decimal> {
    let text = match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        _ => String::new(),
    };
    // Only plain decimal notation: no NaN/Infinity, no exponents, no hex, no thousands separators.
    let plain = !text.is_empty()
        && text.len() <= 40
        && text.trim_start_matches(['-', '+']).chars().all(|c| c.is_ascii_digit() || c == '.')
        && text.chars().filter(|c| *c == '.').count() <= 1;
    match plain.then(|| Decimal::from_str(&text)) {
        Some(Ok(d)) => Some(d),
        _ => {
            errors.add(field, "must be a decimal number (JSON number or string), e.g. 59.98");
            None
        }
    }
}

/// Each line and each of its parts parsed on its own (problems reported), so the rest is still judged.
fn items(value: &Value, errors: &mut FieldErrors) -> Option<Vec<Line>> {
    let Some(array) = value.as_array() else {
        errors.add("items", "must be an array of {productoId, cantidad, precioUnitario}");
        return None;
    };
    let mut out = Vec::with_capacity(array.len());
    for (i, raw) in array.iter().enumerate() {
        let Some(object) = raw.as_object() else {
            errors.add(format!("items[{i}]"), "must be an object");
            out.push(Line::default());
            continue;
        };
        let prefix = format!("items[{i}].");
        let fields = canonical_fields(object.clone(), &ITEM_FIELDS, &prefix, errors);
        let get = |name: &str| fields.iter().find(|(k, _)| *k == name).map(|(_, v)| v);
        let producto_id = match get("productoId") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                errors.add(format!("{prefix}productoId"), "must be a string");
                None
            }
            None => missing(&format!("{prefix}productoId"), errors),
        };
        let cantidad = match get("cantidad").map(|v| whole_number(v).and_then(|n| u32::try_from(n).ok())) {
            Some(Some(n)) => Some(n),
            Some(None) => {
                errors.add(format!("{prefix}cantidad"), "must be a whole number between 1 and 4294967295");
                None
            }
            None => missing(&format!("{prefix}cantidad"), errors),
        };
        let precio = match get("precioUnitario") {
            Some(v) => decimal(v, &format!("{prefix}precioUnitario"), errors),
            None => missing(&format!("{prefix}precioUnitario"), errors),
        };
        out.push(Line { producto_id, cantidad, precio_unitario: precio });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn create(v: Value) -> Result<OrderInput, FieldErrors> {
        parse(object(v), Mode::Create, Utc::now())
    }

    const CLIENTE: &str = "6f1c2a0e-9a51-4c1e-8d0b-0c8f4f1a2b3c";

    #[test]
    fn accepts_camel_and_pascal_case_numbers_and_strings() {
        let a = create(json!({"clienteId": CLIENTE, "total": 59.98})).map(|o| o.order.total.to_string());
        assert_eq!(a.ok().as_deref(), Some("59.98"));
        let b = create(
            json!({"ClienteId": CLIENTE, "Total": "59.98", "PedidoId": CLIENTE, "Fecha": "2026-01-01T00:00:00Z"}),
        );
        assert!(b.is_ok(), "{b:?}");
    }

    /// Whole numbers written as `3.0` or `3e0` are integers to JSON Schema, so they are to the API; `3.5` is not.
    #[test]
    fn whole_numbers_may_have_a_zero_fraction() {
        let parsed = |text: &str| whole_number(&serde_json::from_str::<Value>(text).unwrap_or(Value::Null));
        assert_eq!(parsed("3"), Some(3));
        assert_eq!(parsed("3.0"), Some(3));
        assert_eq!(parsed("3e0"), Some(3));
        assert_eq!(parsed("2E1"), Some(20));
        assert_eq!(parsed("3.5"), None);
        assert_eq!(parsed("-1"), None);
        assert_eq!(parsed("\"3\""), None);
        assert_eq!(parsed("1e30"), None);
        let line = json!([{"productoId": "a", "cantidad": 2.0, "precioUnitario": "1.50"}]);
        let order = create(json!({"clienteId": CLIENTE, "total": "3.00", "items": line}));
        assert!(order.is_ok(), "{order:?}");
    }

    #[test]
    fn reports_every_problem_by_field() {
        let Err(errors) = create(json!({"total": "abc", "extra": 1, "fecha": "yesterday", "pedidoId": 5})) else {
            panic!("must fail")
        };
        let fields: Vec<&str> = errors.fields().collect();
        assert_eq!(fields, ["clienteId", "extra", "fecha", "pedidoId", "total"]);
        assert_eq!(errors.get("extra"), Some(&["unknown field".to_owned()][..]));
    }

    #[test]
    fn rejects_non_plain_numbers() {
        for bad in [
            json!("NaN"),
            json!("Infinity"),
            json!("1e3"),
            json!("0x10"),
            json!("1,000.00"),
            json!(true),
            json!(null),
            json!(""),
        ] {
            let result = create(json!({"clienteId": CLIENTE, "total": bad}));
            assert!(result.as_ref().err().and_then(|e| e.get("total")).is_some(), "{bad}: {result:?}");
        }
    }

    #[test]
    fn items_must_add_up_exactly() {
        let items = json!([{"productoId": "A", "cantidad": 3, "precioUnitario": 0.10}, {"productoId": "B", "cantidad": 1, "precioUnitario": "0.20"}]);
        assert!(create(json!({"clienteId": CLIENTE, "total": 0.50, "items": items})).is_ok());
        let wrong = create(json!({"clienteId": CLIENTE, "total": 0.51, "items": items}));
        assert!(wrong.err().and_then(|e| e.get("total").map(|m| m[0].clone())).unwrap_or_default().contains("0.50"));
    }

    /// Each field's rules run whether or not the others parsed; rules on stand-ins report nothing.
    #[test]
    fn field_checks_run_independently() {
        let messages =
            |errors: &FieldErrors, field: &str| errors.get(field).map(<[String]>::to_vec).unwrap_or_default();
        let Err(errors) = create(json!({"clienteId": "x", "total": "1000000000"})) else { panic!("must fail") };
        assert_eq!(messages(&errors, "clienteId"), ["must be a UUID string"]);
        assert_eq!(messages(&errors, "total"), ["must be at most 999999999.99"]);

        // Missing total: only "is required", no sum rule against a stand-in.
        let items = json!([{"productoId": "A", "cantidad": 1, "precioUnitario": "5"}]);
        let Err(errors) = create(json!({"clienteId": CLIENTE, "items": items})) else { panic!("must fail") };
        assert_eq!(errors.fields().collect::<Vec<_>>(), ["total"]);
        assert_eq!(messages(&errors, "total"), ["is required"]);

        // A bad cantidad does not hide its line's empty productoId, nor total's own rules; the sum is not judged.
        let items = json!([{"productoId": "", "cantidad": "x", "precioUnitario": 1}, {"productoId": "B", "cantidad": 1, "precioUnitario": "2"}]);
        let Err(errors) = create(json!({"clienteId": CLIENTE, "total": "0.001", "items": items})) else {
            panic!("must fail")
        };
        assert_eq!(errors.fields().collect::<Vec<_>>(), ["items[0].cantidad", "items[0].productoId", "total"]);
        assert_eq!(messages(&errors, "total"), ["must have at most 2 decimal places"]);

        // Everything parsed: the sum rule applies as before.
        let items = json!([{"productoId": "A", "cantidad": 2, "precioUnitario": "5"}]);
        let Err(errors) = create(json!({"clienteId": CLIENTE, "total": 9, "items": items})) else {
            panic!("must fail")
        };
        assert!(messages(&errors, "total").iter().any(|m| m.contains("(10)")), "{errors}");
    }

    #[test]
    fn update_rules() {
        let id = Uuid::new_v4();
        let ok = parse(
            object(json!({"clienteId": CLIENTE, "total": 1, "version": 2})),
            Mode::Update { pedido_id: id },
            Utc::now(),
        );
        assert_eq!(ok.map(|o| (o.order.pedido_id, o.version)).ok(), Some((id, Some(2))));
        for bad in [json!({"clienteId": CLIENTE, "total": 1}), json!({"clienteId": CLIENTE, "total": 1, "version": 1})]
        {
            let r = parse(object(bad), Mode::Update { pedido_id: id }, Utc::now());
            assert!(r.err().and_then(|e| e.get("version").map(<[String]>::len)).is_some());
        }
        let other = parse(
            object(json!({"clienteId": CLIENTE, "total": 1, "version": 3, "pedidoId": CLIENTE})),
            Mode::Update { pedido_id: id },
            Utc::now(),
        );
        assert!(other.err().and_then(|e| e.get("pedidoId").map(<[String]>::len)).is_some());
    }
}

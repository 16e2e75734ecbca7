//! Business rules on an order, reported per field so an API client can fix all of them at once.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Serialize;

use crate::event::OrderState;

/// Largest accepted amount: 999 999 999.99.
pub const MAX_AMOUNT: Decimal = Decimal::from_parts(0x4876_E7FF, 0x17, 0, false, 2);
/// Money has at most cents.
pub const MAX_SCALE: u32 = 2;
/// A sane bound on order lines per order.
pub const MAX_ITEMS: usize = 500;

/// Field name (wire spelling, `items[3].cantidad` for nested ones) to the problems found with it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct FieldErrors(BTreeMap<String, Vec<String>>);

impl FieldErrors {
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.entry(field.into()).or_default().push(message.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    pub fn get(&self, field: &str) -> Option<&[String]> {
        self.0.get(field).map(Vec::as_slice)
    }

    /// `Ok(())` when nothing was added.
    ///
    /// # Errors
    /// `self` when any problem was added.
    pub fn into_result(self) -> Result<(), Self> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl std::fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (field, messages) in &self.0 {
            for message in messages {
                if !first {
                    f.write_str("; ")?;
                }
                first = false;
                write!(f, "{field}: {message}")?;
            }
        }
        Ok(())
    }
}

/// Money rules: `> 0` unless `allow_zero`, at most 2 decimals, at most [`MAX_AMOUNT`].
pub fn check_amount(field: &str, amount: Decimal, allow_zero: bool, errors: &mut FieldErrors) {
    if amount.is_sign_negative() && !amount.is_zero() {
        errors.add(field, "must not be negative");
    } else if amount.is_zero() && !allow_zero {
        errors.add(field, "must be greater than 0");
    }
    if amount.normalize().scale() > MAX_SCALE {
        errors.add(field, "must have at most 2 decimal places");
    }
    if amount > MAX_AMOUNT {
        errors.add(field, "must be at most 999999999.99");
    }
}

/// All rules on an order's state.
pub fn check_order(order: &OrderState, errors: &mut FieldErrors) {
    if order.cliente_id.is_nil() {
        errors.add("clienteId", "must not be the nil UUID");
    }
    if order.pedido_id.is_nil() {
        errors.add("pedidoId", "must not be the nil UUID");
    }
    check_amount("total", order.total, false, errors);
    let Some(items) = &order.items else { return };
    if items.is_empty() {
        errors.add("items", "must not be empty when present");
        return;
    }
    if items.len() > MAX_ITEMS {
        errors.add("items", format!("must have at most {MAX_ITEMS} lines"));
        return;
    }
    let mut sum = Some(Decimal::ZERO);
    for (i, item) in items.iter().enumerate() {
        let id = item.producto_id.trim();
        if id.is_empty() || id.len() > 64 {
            errors.add(format!("items[{i}].productoId"), "must be 1 to 64 characters");
        }
        if item.cantidad == 0 {
            errors.add(format!("items[{i}].cantidad"), "must be at least 1");
        }
        check_amount(&format!("items[{i}].precioUnitario"), item.precio_unitario, true, errors);
        sum = sum.and_then(|s| {
            item.precio_unitario.checked_mul(Decimal::from(item.cantidad)).and_then(|line| s.checked_add(line))
        });
    }
    match sum {
        Some(sum) if sum == order.total => {}
        Some(sum) => errors.add("total", format!("must equal the sum of cantidad * precioUnitario over items ({sum})")),
        None => errors.add("items", "line amounts overflow"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap_or_default()
    }

    #[test]
    fn amount_rules() {
        let cases = [
            ("0.01", None),
            ("999999999.99", None),
            ("1.50", None),
            ("1.500", None), // trailing zeros are not extra precision
            ("0", Some("greater than 0")),
            ("-1", Some("negative")),
            ("1.001", Some("2 decimal places")),
            ("1000000000", Some("at most 999999999.99")),
        ];
        for (input, expected) in cases {
            let mut errors = FieldErrors::default();
            check_amount("total", dec(input), false, &mut errors);
            match expected {
                None => assert!(errors.is_empty(), "{input}: {errors}"),
                Some(text) => assert!(errors.to_string().contains(text), "{input}: {errors}"),
            }
        }
    }

    #[test]
    fn max_amount_constant_is_what_it_says() {
        assert_eq!(MAX_AMOUNT.to_string(), "999999999.99");
    }
}

//! The opaque pagination cursor: the hex of the last `fechaOrden` returned.

use crate::StoreError;

pub fn encode(fecha_orden: &str) -> String {
    fecha_orden.bytes().map(|b| format!("{b:02x}")).collect()
}

/// # Errors
/// [`StoreError::BadCursor`] for anything [`encode`] did not produce.
pub fn decode(cursor: &str) -> Result<String, StoreError> {
    if cursor.is_empty() || cursor.len() % 2 != 0 || cursor.len() > 256 {
        return Err(StoreError::BadCursor);
    }
    let bytes = (0..cursor.len())
        .step_by(2)
        .map(|i| cursor.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .ok_or(StoreError::BadCursor)?;
    let text = String::from_utf8(bytes).map_err(|_| StoreError::BadCursor)?;
    // `<RFC 3339>#<uuid>`: anything else was not handed out by this store.
    match text.split_once('#') {
        Some((date, id)) if chrono::DateTime::parse_from_rfc3339(date).is_ok() && uuid::Uuid::parse_str(id).is_ok() => {
            Ok(text)
        }
        _ => Err(StoreError::BadCursor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_foreign_cursors() {
        let key = "2026-11-21T13:30:00.000Z#6f1c2a9e-4b7d-4c1e-9a3f-2d5e8b7c6a10";
        assert_eq!(decode(&encode(key)).ok().as_deref(), Some(key));
        for bad in ["", "abc", "zz", &encode("hello"), &encode("2026-11-21T13:30:00Z#not-a-uuid")] {
            assert!(matches!(decode(bad), Err(StoreError::BadCursor)), "{bad}");
        }
    }
}

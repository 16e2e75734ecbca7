//! Logging set-up, once per process.
//!
//! JSON lines are written by [`JsonLine`] and [`JsonFragment`] below rather than by `tracing-subscriber`'s JSON
//! formatter. The output is the same shape (`timestamp`, `level`, the event's fields flattened with `message` first,
//! `target`, and the current span as `"span":{...fields, "name"}`), but each line is written straight into the output
//! buffer: the stock formatter collects fields through serde maps and, for the span, re-parses the span's JSON text
//! on every event. Both workers log one line per message and the API one per request, so that was a visible share of
//! the CPU per message in the profiles (docs/BENCHMARKS.md).

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{fmt as tfmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter};

use crate::config::LogFormat;

/// Installs the global subscriber, writing to stdout. `RUST_LOG` wins; otherwise `default_filter` (e.g. `info`).
/// Calling it twice is harmless (the second call is ignored), which keeps tests simple.
///
/// `pretty` lines are coloured only when stdout is a terminal and `NO_COLOR` is unset or empty ([`colour`]): `docker
/// compose logs > file`, a log shipper or a pipe get plain text.
pub fn init(format: LogFormat, default_filter: &str) {
    let ansi = colour(std::io::stdout().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
    install(format, default_filter, std::io::stdout, ansi);
}

/// [`init`] writing to stderr, for commands whose stdout is their output (`pedidos-api topology` prints `KEY=value`
/// lines there).
pub fn init_stderr(format: LogFormat, default_filter: &str) {
    let ansi = colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
    install(format, default_filter, std::io::stderr, ansi);
}

/// Whether log lines may carry ANSI colour codes: only on a terminal, and never when `NO_COLOR` is set to anything but
/// the empty string (<https://no-color.org>).
pub fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|value| value.is_empty())
}

fn install<W>(format: LogFormat, default_filter: &str, writer: W, ansi: bool)
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry
            .with(tfmt::layer().fmt_fields(JsonFragment).event_format(JsonLine).with_ansi(false).with_writer(writer))
            .try_init(),
        LogFormat::Pretty => registry.with(tfmt::layer().compact().with_ansi(ansi).with_writer(writer)).try_init(),
    };
}

/// One JSON object per event: `{"timestamp","level",<fields>,"target","span":{<fields>,"name"}}`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let metadata = event.metadata();
        writer.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut writer)?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(metadata.level().as_str())?;
        writer.write_char('"')?;
        let mut fields = FieldWriter { out: &mut writer, first: false, result: Ok(()) };
        event.record(&mut fields);
        fields.result?;
        writer.write_str(",\"target\":")?;
        write_json_str(&mut writer, metadata.target())?;
        if let Some(span) = ctx.lookup_current() {
            writer.write_str(",\"span\":{")?;
            let extensions = span.extensions();
            if let Some(recorded) = extensions.get::<FormattedFields<N>>().filter(|f| !f.fields.is_empty()) {
                writer.write_str(&recorded.fields)?;
                writer.write_char(',')?;
            }
            writer.write_str("\"name\":")?;
            write_json_str(&mut writer, span.name())?;
            writer.write_char('}')?;
        }
        writer.write_str("}\n")
    }
}

/// A span's fields as JSON members without braces (`"a":1,"b":"x"`), kept with the span and spliced into each line.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonFragment;

impl<'writer> FormatFields<'writer> for JsonFragment {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = FieldWriter { out: &mut writer, first: true, result: Ok(()) };
        fields.record(&mut visitor);
        visitor.result
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let first = current.fields.is_empty();
        let mut writer = current.as_writer();
        let mut visitor = FieldWriter { out: &mut writer, first, result: Ok(()) };
        fields.record(&mut visitor);
        visitor.result
    }
}

/// Writes each field as `,"name":value` (no comma before the first when `first`).
struct FieldWriter<'a, W: fmt::Write> {
    out: &'a mut W,
    first: bool,
    result: fmt::Result,
}

impl<W: fmt::Write> FieldWriter<'_, W> {
    fn member(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if self.first {
                self.first = false;
            } else {
                self.out.write_char(',')?;
            }
            write_json_str(self.out, field.name())?;
            self.out.write_char(':')?;
            value(self.out)
        })();
    }
}

impl<W: fmt::Write> Visit for FieldWriter<'_, W> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity: those become null, as serde_json writes them.
        self.member(field, |out| if value.is_finite() { write!(out, "{value}") } else { out.write_str("null") });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.member(field, |out| write!(out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |out| out.write_str(if value { "true" } else { "false" }));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |out| write_json_str(out, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |out| {
            out.write_char('"')?;
            write!(Escaped(out), "{value:?}")?;
            out.write_char('"')
        });
    }
}

/// `text` as a JSON string, quotes included.
fn write_json_str(out: &mut impl fmt::Write, text: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaped(out).write_str(text)?;
    out.write_char('"')
}

/// Escapes what passes through it for a JSON string: quote, backslash and control characters, the way serde_json does.
struct Escaped<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut start = 0;
        for (i, byte) in text.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&text[start..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            start = i + 1;
        }
        self.0.write_str(&text[start..])
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Self;
        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    impl Buffer {
        fn lines(&self) -> Vec<serde_json::Value> {
            let bytes = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            String::from_utf8(bytes)
                .unwrap_or_default()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
                .collect()
        }
    }

    /// Logs the same events through `layer` and returns the lines.
    fn capture(json: impl Fn(Buffer) -> Box<dyn tracing::Subscriber + Send + Sync>) -> Vec<serde_json::Value> {
        let buffer = Buffer::default();
        tracing::subscriber::with_default(json(buffer.clone()), || {
            let error = io::Error::other("disk \"full\"\n\u{1}");
            tracing::info!(
                outcome = "processed",
                version = 3u64,
                legacy = false,
                delta = -2i64,
                ratio = 0.5,
                "applied {}",
                7
            );
            let span = tracing::info_span!("message", message_id = %"m-1", receive_count = 2u32);
            let _entered = span.enter();
            tracing::warn!(%error, kind = ?Some("x"), r#type = "PedidoCreado", "retrying \\ \"now\"");
            let empty = tracing::info_span!("bare");
            let _inner = empty.enter();
            tracing::info!(nan = f64::NAN, "inside");
        });
        buffer.lines()
    }

    #[test]
    fn lines_match_the_stock_json_formatter() {
        let ours = capture(|buffer| {
            Box::new(
                tracing_subscriber::registry()
                    .with(tfmt::layer().fmt_fields(JsonFragment).event_format(JsonLine).with_writer(buffer)),
            )
        });
        let stock = capture(|buffer| {
            Box::new(
                tracing_subscriber::registry().with(
                    tfmt::layer()
                        .json()
                        .flatten_event(true)
                        .with_current_span(true)
                        .with_span_list(false)
                        .with_writer(buffer),
                ),
            )
        });
        assert_eq!(ours.len(), 3);
        let without_time = |lines: Vec<serde_json::Value>| {
            lines
                .into_iter()
                .map(|mut line| {
                    assert!(line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z') && t.len() >= 20), "{line}");
                    line.as_object_mut().map(|o| o.remove("timestamp"));
                    line
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(without_time(ours), without_time(stock));
    }

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        use std::ffi::OsStr;
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))), "an empty NO_COLOR is unset (no-color.org)");
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None), "a pipe, a file or `docker compose logs` get no colour codes");
        assert!(!colour(false, Some(OsStr::new("1"))));
    }

    /// The pretty format as `init` sets it up when the output is not a terminal: plain text, no ESC byte.
    #[test]
    fn pretty_lines_without_a_terminal_have_no_escape_codes() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry()
            .with(tfmt::layer().compact().with_ansi(colour(false, None)).with_writer(buffer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("message", message_id = "m-1");
            let _entered = span.enter();
            tracing::warn!(outcome = "processed", "applied");
            tracing::error!(error = "boom", "failed");
        });
        let bytes = buffer.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("WARN") && text.contains("outcome=\"processed\"") && text.contains("ERROR"), "{text}");
        assert!(!text.contains('\u{1b}'), "escape codes in {text:?}");
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut out = String::new();
        assert!(write_json_str(&mut out, "a\"b\\c\nd\u{1}é").is_ok());
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
        assert_eq!(serde_json::from_str::<String>(&out).ok().as_deref(), Some("a\"b\\c\nd\u{1}é"));
    }
}

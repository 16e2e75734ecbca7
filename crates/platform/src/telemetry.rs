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
    install(format, default_filter, std::io::stdout, colour_on(&std::io::stdout()));
}

/// [`init`] writing to stderr, for commands whose stdout is their output (`pedidos-api topology` prints `KEY=value`
/// lines there).
pub fn init_stderr(format: LogFormat, default_filter: &str) {
    install(format, default_filter, std::io::stderr, colour_on(&std::io::stderr()));
}

/// Whether log lines may carry ANSI colour codes: only on a terminal, and never when `NO_COLOR` is set to anything but
/// the empty string (<https://no-color.org>).
pub fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|value| value.is_empty())
}

/// [`colour`] for `stream` and this process's `NO_COLOR`.
fn colour_on(stream: &impl IsTerminal) -> bool {
    colour(stream.is_terminal(), std::env::var_os("NO_COLOR").as_deref())
}

/// `RUST_LOG`, or `default_filter` without it.
fn log_filter(default_filter: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter))
}

fn install<W>(format: LogFormat, default_filter: &str, writer: W, ansi: bool)
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    let registry = tracing_subscriber::registry().with(log_filter(default_filter));
    let _ = match format {
        LogFormat::Json => registry
            .with(
                tfmt::layer()
                    .fmt_fields(JsonFragment)
                    .event_format(JsonLine::default())
                    .with_ansi(false)
                    .with_writer(writer),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(tfmt::layer().compact().with_ansi(ansi).with_writer(writer)).try_init(),
    };
}

/// [`init`], plus OpenTelemetry traces when `traces` is set (an OTLP endpoint is configured; see [`crate::otel`]).
/// Returns the handle that flushes the traces at shutdown: a no-op one when traces are off, or when the exporter
/// cannot be built (said once at ERROR; the service runs on without traces). Must be called inside the tokio runtime.
///
/// With traces on, each layer has its own filter. Logs keep `RUST_LOG` (and never show the trace-only spans, so a
/// log line's `span` is the one it has without traces); JSON lines inside a span carry `trace_id` and `span_id`.
/// The trace gets every span and event at INFO and above, and the AWS SDK's operation spans (`SQS.ReceiveMessage`,
/// `DynamoDB.UpdateItem`, ..., DEBUG) when they run inside a traced span: background calls (long polls, queue
/// depth, stats) make no traces of their own. With traces off, the subscriber is exactly [`init`]'s.
pub fn init_traced(
    format: LogFormat,
    default_filter: &str,
    traces: Option<&crate::otel::Settings>,
) -> crate::otel::Traces {
    use tracing_subscriber::filter::FilterExt;
    use tracing_subscriber::Layer as _;
    crate::otel::describe_metrics();
    let Some(settings) = traces else {
        init(format, default_filter);
        return crate::otel::Traces::default();
    };
    let started = match crate::otel::start(settings) {
        Ok(started) => started,
        Err(error) => {
            init(format, default_filter);
            tracing::error!(%error, "traces are off: the OTLP exporter could not be built");
            return crate::otel::Traces::default();
        }
    };
    let logs = log_filter(default_filter)
        .and(tracing_subscriber::filter::filter_fn(|meta| meta.target() != crate::otel::TRACE_ONLY));
    let traced = tracing_opentelemetry::layer()
        .with_tracer(started.tracer)
        .with_tracked_inactivity(false)
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        .with_target(false)
        .with_filter(TraceFilter);
    let registry = tracing_subscriber::registry().with(traced);
    let _ = match format {
        LogFormat::Json => registry
            .with(
                tfmt::layer()
                    .fmt_fields(JsonFragment)
                    .event_format(JsonLine::with_trace_ids())
                    .with_ansi(false)
                    .with_filter(logs),
            )
            .try_init(),
        LogFormat::Pretty => {
            registry.with(tfmt::layer().compact().with_ansi(colour_on(&std::io::stdout())).with_filter(logs)).try_init()
        }
    };
    tracing::info!(
        endpoint = %settings.endpoint,
        service = %settings.service_name,
        sampler = ?settings.sampler,
        propagators = ?settings.propagators,
        "traces on: exporting over OTLP/HTTP"
    );
    started.traces
}

/// What reaches the OpenTelemetry layer: everything at INFO and above but the spans targeted at
/// [`crate::otel::UNTRACED`], and the AWS SDK's operation spans (DEBUG, one per API call, target `aws_sdk_<service>`)
/// inside a traced span only. The SDK's finer spans (attempts, serialisation, ...) never do.
struct TraceFilter;

impl TraceFilter {
    fn sdk_operation(meta: &tracing::Metadata<'_>) -> bool {
        meta.is_span() && *meta.level() <= tracing::Level::DEBUG && meta.target().starts_with("aws_sdk_")
    }
}

impl<S> tracing_subscriber::layer::Filter<S> for TraceFilter
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn enabled(&self, meta: &tracing::Metadata<'_>, cx: &tracing_subscriber::layer::Context<'_, S>) -> bool {
        if Self::sdk_operation(meta) {
            return cx.lookup_current().is_some();
        }
        *meta.level() <= tracing::Level::INFO && meta.target() != crate::otel::UNTRACED
    }

    fn callsite_enabled(&self, meta: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        if Self::sdk_operation(meta) {
            tracing::subscriber::Interest::sometimes()
        } else if *meta.level() <= tracing::Level::INFO && meta.target() != crate::otel::UNTRACED {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::DEBUG)
    }
}

/// One JSON object per event: `{"timestamp","level",<fields>,"target","span":{<fields>,"name"}}`; with
/// [`JsonLine::with_trace_ids`], also `"trace_id"` and `"span_id"` (W3C, lowercase hex) when the event happens inside
/// a traced span. Fields named `otel.*` (directions to the tracer, such as `otel.name`) are never written.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLine {
    trace_ids: bool,
}

impl JsonLine {
    /// Lines that carry the ids of the OpenTelemetry span they are logged in (traces on).
    pub fn with_trace_ids() -> Self {
        Self { trace_ids: true }
    }
}

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
        if self.trace_ids {
            crate::otel::write_current_ids(&mut writer)?;
        }
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
        if self.result.is_err() || field.name().starts_with("otel.") {
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
pub(crate) mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// A log writer the test reads back.
    #[derive(Clone, Default)]
    pub(crate) struct Buffer(Arc<Mutex<Vec<u8>>>);

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
        pub(crate) fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
                .unwrap_or_default()
        }

        pub(crate) fn lines(&self) -> Vec<serde_json::Value> {
            self.text()
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
                    .with(tfmt::layer().fmt_fields(JsonFragment).event_format(JsonLine::default()).with_writer(buffer)),
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

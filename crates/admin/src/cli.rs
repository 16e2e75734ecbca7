//! The command line. Parsing errors exit 2 (clap's usage code), before any AWS call.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::message::{parse_duration, Filter};

const EXIT_CODES: &str = "\
Exit codes:
  0  success, including nothing to do
  1  runtime failure: an SQS call failed, a queue or message does not exist, a move task failed
  2  usage or configuration error (bad argument, AWS_REGION or AWS_ENDPOINT_URL invalid, unfiltered purge without --yes)
  3  partial: some messages could not be moved or deleted, a redriven copy was rejected again by the worker, or a
     message was refused (all of them are still in the DLQ), or the run was interrupted
  4  incomplete: the walk over the DLQ stopped while SQS still counted visible messages it had not received
     (stderr says how many); they were left as they are: run the command again

Environment: AWS_REGION (default us-east-1), AWS_ENDPOINT_URL (e.g. http://127.0.0.1:4566 for moto or LocalStack),
credentials from the standard AWS chain.";

const REDRIVE_ABOUT: &str = "\
Move messages back to the queue whose DLQ this is: the --queue given (its redrive policy names the DLQ), or for
--dlq the one queue SQS lists with ListDeadLetterSourceQueues (several: pass --queue). Never to a message's own
sourceQueue attribute: a message whose sourceQueue names another queue is printed as `refused ...` and left in the DLQ.

Without filters or --max, SQS StartMessageMoveTask moves the whole DLQ (--rate is its MaxNumberOfMessagesPerSecond)
and the command follows the task to its end. Where the endpoint has no move-task API (moto), or with filters or
--max, each message is received, copied (same body, same attributes except rejectReason, rejectDetail, sourceQueue
and originalMessageId) and deleted from the DLQ only after SQS returned the copy's MessageId; messages not selected
are made visible again. A message copied twice is harmless: the store drops the repeat.

A run redrives each message at most once. A copy the worker rejects again comes back to the DLQ under a new id: the
run recognises it (its originalMessageId is the copy's MessageId; else its body), prints
`rejected again: <reason> id=... redriven-from=...`, and leaves it in the DLQ. Messages that entered the DLQ after
the run started are left for the next run (three receives in a row bringing only those end the walk). After its
last copy the run watches the DLQ for up to --watch, ending sooner once the destination queue stays empty (the
worker is done with the copies) or nothing consumes it (no worker running). A move task reads no message, so it
reports no rejection: pass a filter (e.g. --reason) for the message-by-message run and its report.

Prints `redriven=N skipped=M failed=K rejected-again=R refused=F` at the end.";

const PURGE_ABOUT: &str = "\
Delete messages from the DLQ. With filters or --max, each selected message is received and deleted, the others are
made visible again. Without them, every message goes (PurgeQueue), which needs --yes, or a `yes` typed on a terminal.

Prints `purged=N skipped=M failed=K` at the end.";

/// Operator tools for the E-ComExpress order pipeline.
#[derive(Debug, Parser)]
#[command(name = "pedidos-admin", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect, redrive or purge a dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// One line per message (id, rejectReason, age, receive count, body preview); leaves every message in the DLQ.
    #[command(after_help = EXIT_CODES)]
    List(ListArgs),
    /// One message in full: body (pretty-printed JSON, the SNS Message inside too) and every attribute.
    #[command(after_help = EXIT_CODES)]
    Show(ShowArgs),
    /// Move messages back to the queue whose DLQ this is (StartMessageMoveTask when possible, else copy then delete).
    #[command(after_help = EXIT_CODES, long_about = REDRIVE_ABOUT)]
    Redrive(RedriveArgs),
    /// Delete messages from the DLQ (all of them needs --yes).
    #[command(after_help = EXIT_CODES, long_about = PURGE_ABOUT)]
    Purge(PurgeArgs),
}

/// Which DLQ: through its source queue, or directly.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct Selection {
    /// Source queue: `process`, `logistics`, or a queue URL or name. Its DLQ is the redrive policy's target.
    #[arg(long, value_name = "QUEUE")]
    pub queue: Option<String>,
    /// The DLQ itself, by URL or name.
    #[arg(long, value_name = "URL")]
    pub dlq: Option<String>,
}

/// Which messages of the DLQ a command acts on.
#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// Only messages whose rejectReason is exactly this (repeatable; `-` selects messages without one, i.e.
    /// dead-lettered by the redrive policy after maxReceiveCount receives).
    #[arg(long, value_name = "REASON")]
    pub reason: Vec<String>,
    /// Only messages sent to the DLQ at least this long ago: `90s`, `10m`, `2h`, `1d`, `1h30m`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub older_than: Option<Duration>,
    /// Act on at most N messages.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max: Option<u64>,
}

/// How long a walk over the DLQ keeps looking for messages SQS counts but receives do not return.
#[derive(Debug, Clone, Args)]
pub struct ScanArgs {
    /// Keep receiving this long while receives bring nothing new but SQS still counts visible messages (its count
    /// may lag a minute; a FIFO DLQ hides the rest of a message group the run holds). Past it, the run stops and
    /// exits 4.
    // `scan::PATIENCE`, written out for `--help`; a test keeps the two equal.
    #[arg(long, value_name = "DURATION", default_value = "75s", value_parser = parse_duration)]
    pub scan_patience: Duration,
}

impl FilterArgs {
    pub fn filter(&self) -> Filter {
        Filter { reasons: self.reason.clone(), older_than: self.older_than }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub selection: Selection,
    #[command(flatten)]
    pub filters: FilterArgs,
    #[command(flatten)]
    pub scan: ScanArgs,
    /// One JSON object per line (full body and attributes) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub selection: Selection,
    #[command(flatten)]
    pub scan: ScanArgs,
    /// The DLQ message's id (as `list` prints it).
    pub message_id: String,
    /// The message as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RedriveArgs {
    #[command(flatten)]
    pub selection: Selection,
    #[command(flatten)]
    pub filters: FilterArgs,
    #[command(flatten)]
    pub scan: ScanArgs,
    /// Print what would move; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// At most this many messages per second (1 to 500; the move task's MaxNumberOfMessagesPerSecond).
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub rate: u32,
    /// After the last copy, watch the DLQ this long for copies the worker rejects again (ends sooner once the
    /// destination queue is empty; 0s: do not watch).
    // `redrive::WATCH`, written out for `--help`; a test keeps the two equal.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub watch: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub selection: Selection,
    #[command(flatten)]
    pub filters: FilterArgs,
    #[command(flatten)]
    pub scan: ScanArgs,
    /// Print what would be deleted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Confirm deleting every message (without filters); asked interactively on a terminal otherwise.
    #[arg(long)]
    pub yes: bool,
    /// At most this many deletions per second (1 to 500).
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
    pub rate: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_queue_or_a_dlq_is_required_but_not_both() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["pedidos-admin", "dlq", "list"], args].concat());
        assert!(parse(&[]).is_err());
        assert!(parse(&["--queue", "process", "--dlq", "http://x/1/q-dlq"]).is_err());
        assert!(parse(&["--queue", "process"]).is_ok());
        assert!(parse(&["--dlq", "http://x/1/q-dlq", "--reason", "not_json", "--older-than", "1h30m"]).is_ok());
        assert!(parse(&["--queue", "process", "--older-than", "10"]).is_err());
        assert!(parse(&["--queue", "process", "--max", "0"]).is_err());
    }

    #[test]
    fn the_scan_patience_defaults_to_the_scans_own() {
        let parse =
            |args: &[&str]| Cli::try_parse_from([&["pedidos-admin", "dlq", "list", "--queue", "p"], args].concat());
        let patience = |args: &[&str]| match parse(args).map(|cli| cli.command) {
            Ok(Command::Dlq(DlqCommand::List(list))) => Some(list.scan.scan_patience),
            _ => None,
        };
        assert_eq!(patience(&[]), Some(crate::scan::PATIENCE));
        assert_eq!(patience(&["--scan-patience", "2s"]), Some(Duration::from_secs(2)));
        assert_eq!(patience(&["--scan-patience", "0s"]), Some(Duration::ZERO));
        assert!(parse(&["--scan-patience", "2"]).is_err());
    }

    #[test]
    fn the_redrive_watch_defaults_to_the_redrives_own() {
        let watch = |args: &[&str]| match Cli::try_parse_from(
            [&["pedidos-admin", "dlq", "redrive", "--queue", "p"], args].concat(),
        ) {
            Ok(Cli { command: Command::Dlq(DlqCommand::Redrive(redrive)) }) => Some(redrive.watch),
            _ => None,
        };
        assert_eq!(watch(&[]), Some(crate::redrive::WATCH));
        assert_eq!(watch(&["--watch", "0s"]), Some(Duration::ZERO));
    }

    #[test]
    fn rates_are_bounded_like_the_move_task_api() {
        let rate =
            |r: &str| Cli::try_parse_from(["pedidos-admin", "dlq", "redrive", "--queue", "process", "--rate", r]);
        assert!(rate("0").is_err());
        assert!(rate("501").is_err());
        assert!(rate("500").is_ok());
    }

    #[test]
    fn usage_errors_exit_2_and_help_exits_0() {
        let code = |args: &[&str]| match Cli::try_parse_from(args) {
            Ok(_) => None,
            Err(e) => Some(e.exit_code()),
        };
        assert_eq!(code(&["pedidos-admin", "dlq", "list", "--queue", "process", "--bogus"]), Some(2));
        assert_eq!(code(&["pedidos-admin", "dlq", "--help"]), Some(0));
    }
}

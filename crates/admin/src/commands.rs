//! `dlq list | show | redrive | purge`.
//!
//! Output: stdout carries results (one line per message, `show`'s message, the summary line of redrive and purge);
//! stderr carries notices, per-message failures and the progress bar.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use aws_sdk_sqs::Client;
use indicatif::ProgressBar;
use tokio_util::sync::CancellationToken;

use crate::cli::{FilterArgs, ListArgs, PurgeArgs, RedriveArgs, ScanArgs, ShowArgs};
use crate::error::{AdminError, Exit};
use crate::message::{escape, format_age, inert_json, now_ms, pretty_body, rfc3339, DlqMessage, Filter};
use crate::progress::{self, note, Pacer};
use crate::redrive::{self, Tracker, Verdict};
use crate::scan::{release_and_report, Scan};
use crate::sqs::{self, MoveTaskStart, Target};

/// How often a running move task is polled.
const MOVE_TASK_POLL: Duration = Duration::from_secs(1);

/// Writes a result line to stdout; `false` when stdout is gone (e.g. piped into `head`), so the caller can stop.
fn out(line: &str) -> bool {
    writeln!(std::io::stdout(), "{line}").is_ok()
}

/// A walk over `target`'s DLQ with the command line's patience.
fn new_scan(client: &Client, target: &Target, args: &ScanArgs) -> Scan {
    Scan::new(client, &target.dlq_url).with_patience(args.scan_patience)
}

/// Says on stderr that the walk stopped while SQS still counted visible messages it had not received; `true` then.
fn report_incomplete(scan: &Scan, target: &Target) -> bool {
    let Some(visible_left) = scan.stopped_early() else {
        return false;
    };
    eprintln!(
        "incomplete: SQS still counts about {visible_left} visible message(s) in {} that this run did not receive \
         (it kept trying for {} s after the last new one); they were left as they are. Run the command again \
         (SQS's count can lag a minute: a longer --scan-patience helps)",
        target.dlq_url,
        scan.patience().as_secs()
    );
    true
}

/// Picks messages by filter and `--max`, counting what it passes over.
struct Selector {
    filter: Filter,
    max: Option<u64>,
    selected: u64,
    skipped: u64,
}

impl Selector {
    fn new(filter: Filter, max: Option<u64>) -> Self {
        Self { filter, max, selected: 0, skipped: 0 }
    }

    fn full(&self) -> bool {
        self.max.is_some_and(|max| self.selected >= max)
    }

    /// Whether to act on `message`; a message not selected is counted as skipped.
    fn select(&mut self, message: &DlqMessage, now: u64) -> bool {
        if self.full() || !self.filter.matches(message, now) {
            self.skipped += 1;
            return false;
        }
        self.selected += 1;
        true
    }
}

// -----------------------------------------------------------------------------------------------------------------
// list

/// Prints the selected messages and leaves every message in the DLQ.
///
/// # Errors
/// Resolving the DLQ or a receive failed.
pub async fn list(client: &Client, args: &ListArgs, interrupt: &CancellationToken) -> Result<Exit, AdminError> {
    let target = sqs::resolve(client, &args.selection).await?;
    let mut scan = new_scan(client, &target, &args.scan);
    let mut selector = Selector::new(args.filters.filter(), args.filters.max);
    let result = list_walk(&mut scan, &mut selector, args.json, interrupt).await;
    release_and_report(&mut scan).await;
    let interrupted = result?;
    eprintln!(
        "listed={} skipped={} in {} (all left in the DLQ{})",
        selector.selected,
        selector.skipped,
        target.dlq_url,
        if interrupted { "; interrupted" } else { "" }
    );
    Ok(Exit::of(interrupted, report_incomplete(&scan, &target)))
}

/// Returns whether the walk was interrupted.
async fn list_walk(
    scan: &mut Scan,
    selector: &mut Selector,
    json: bool,
    interrupt: &CancellationToken,
) -> Result<bool, AdminError> {
    while !selector.full() {
        if interrupt.is_cancelled() {
            return Ok(true);
        }
        let batch = scan.next_batch().await?;
        if batch.is_empty() {
            break;
        }
        let now = now_ms();
        for message in batch {
            if selector.select(&message, now) {
                let line = if json { inert_json(&message.to_json(now), false) } else { message.line(now) };
                if !out(&line) {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

// -----------------------------------------------------------------------------------------------------------------
// show

/// Prints one message in full and leaves it (and every other) in the DLQ.
///
/// # Errors
/// Resolving the DLQ or a receive failed; [`AdminError::State`] when no visible message has that id.
pub async fn show(client: &Client, args: &ShowArgs, interrupt: &CancellationToken) -> Result<Exit, AdminError> {
    let target = sqs::resolve(client, &args.selection).await?;
    let mut scan = new_scan(client, &target, &args.scan);
    let result = find(&mut scan, &args.message_id, interrupt).await;
    release_and_report(&mut scan).await;
    let Some(message) = result? else {
        if interrupt.is_cancelled() {
            return Ok(Exit::Partial);
        }
        if scan.stopped_early().is_some() {
            eprintln!("message {} is not among the messages this run received", escape(&args.message_id));
            report_incomplete(&scan, &target);
            return Ok(Exit::Incomplete);
        }
        return Err(AdminError::State(format!(
            "no visible message {} in {} (another reader may hold it; try again in {} s)",
            escape(&args.message_id),
            target.dlq_url,
            sqs::SCAN_VISIBILITY.as_secs()
        )));
    };
    let now = now_ms();
    let text = if args.json {
        let mut value = message.to_json(now);
        value["bodyPretty"] = serde_json::Value::String(pretty_body(&message.body));
        inert_json(&value, false)
    } else {
        describe(&message, &target, now)
    };
    out(&text);
    Ok(Exit::Success)
}

async fn find(scan: &mut Scan, id: &str, interrupt: &CancellationToken) -> Result<Option<DlqMessage>, AdminError> {
    let mut found = None;
    while found.is_none() && !interrupt.is_cancelled() {
        let batch = scan.next_batch().await?;
        if batch.is_empty() {
            break;
        }
        for message in batch {
            if message.message_id == id {
                found = Some(message);
            }
        }
    }
    Ok(found)
}

fn describe(message: &DlqMessage, target: &Target, now: u64) -> String {
    use crate::message::AttributeData;
    let mut text = format!("message id:    {}\ndlq:           {}\n", escape(&message.message_id), target.dlq_url);
    if let Some(sent) = message.sent_at_ms {
        let age = message.age(now).map(format_age).unwrap_or_default();
        text.push_str(&format!("sent:          {} ({age} ago)\n", rfc3339(sent).unwrap_or_else(|| sent.to_string())));
    }
    text.push_str(&format!("receive count: {} (this tool's receives included)\nattributes:\n", message.receive_count));
    for (name, value) in &message.attributes {
        let shown = match &value.data {
            AttributeData::Text(text) => escape(text),
            AttributeData::Binary(bytes) => {
                format!("<{} bytes, base64 {}>", bytes.len(), aws_smithy_types::base64::encode(bytes))
            }
        };
        text.push_str(&format!("  {} ({}): {shown}\n", escape(name), escape(&value.data_type)));
    }
    text.push_str("system attributes:\n");
    for (name, value) in &message.system {
        text.push_str(&format!("  {}: {}\n", escape(name), escape(value)));
    }
    text.push_str("body:\n");
    text.push_str(&pretty_body(&message.body));
    text
}

// -----------------------------------------------------------------------------------------------------------------
// redrive and purge

/// What a redrive or purge did.
#[derive(Debug, Default)]
struct Counts {
    done: u64,
    skipped: u64,
    failed: u64,
    /// Copies this run sent that the worker dead-lettered again (left in the DLQ, reported).
    rejected_again: u64,
    /// Messages whose `sourceQueue` names another queue than the destination (left in the DLQ, reported).
    refused: u64,
    /// Messages that entered the DLQ after the run started, or second entries of a message already redriven: the
    /// next run's.
    left_for_next_run: u64,
}

/// Moves messages back to the queue whose DLQ this is (never to a message's own `sourceQueue`).
///
/// # Errors
/// Resolving the queues (including a DLQ of no single queue without `--queue`), a receive, or the move task failed.
pub async fn redrive(client: &Client, args: &RedriveArgs, interrupt: &CancellationToken) -> Result<Exit, AdminError> {
    let target = sqs::resolve(client, &args.selection).await?;
    let destination = target.destination()?.to_owned();
    let whole_queue = args.filters.filter().is_empty() && args.filters.max.is_none();
    if whole_queue && !args.dry_run {
        let dlq_arn = sqs::queue_arn(client, &target.dlq_url).await?;
        let destination_arn = sqs::queue_arn(client, &destination).await?;
        // The task moves the messages SQS counted when it started, to the destination given here, then completes:
        // it neither loops on messages rejected again nor reads any message's attributes.
        match sqs::start_move_task(client, &dlq_arn, &destination_arn, args.rate).await {
            Ok(handle) => return follow_move_task(client, &dlq_arn, &handle, interrupt).await,
            Err(MoveTaskStart::Unsupported(how)) => eprintln!(
                "StartMessageMoveTask is not supported by this endpoint ({how}); redriving message by message (copy, \
                 then delete)"
            ),
            Err(MoveTaskStart::Failed(error)) => return Err(error),
        }
    }
    let options =
        Options { filters: &args.filters, scan: &args.scan, dry_run: args.dry_run, rate: args.rate, watch: args.watch };
    one_by_one(client, &target, Mode::Redrive, &options, interrupt).await
}

/// Follows a move task to its end, showing progress; Ctrl-C cancels it.
async fn follow_move_task(
    client: &Client,
    dlq_arn: &str,
    handle: &str,
    interrupt: &CancellationToken,
) -> Result<Exit, AdminError> {
    eprintln!("started move task {handle}");
    let mut bar: Option<ProgressBar> = None;
    let mut cancelled = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(MOVE_TASK_POLL) => {}
            () = interrupt.cancelled(), if !cancelled => {
                cancelled = true;
                eprintln!("interrupted: cancelling the move task (messages already moved stay moved)");
                // It may have ended meanwhile; the next poll says how it ended either way.
                if let Err(error) = sqs::cancel_move_task(client, handle).await {
                    eprintln!("could not cancel the move task: {error}");
                }
            }
        }
        let state = sqs::move_task_state(client, dlq_arn, handle).await?;
        let bar = bar.get_or_insert_with(|| progress::bar(state.to_move.unwrap_or(0), "redriving"));
        if let Some(to_move) = state.to_move {
            bar.set_length(to_move);
        }
        bar.set_position(state.moved);
        let left = state.to_move.map_or(0, |to_move| to_move.saturating_sub(state.moved));
        match state.status.as_str() {
            "RUNNING" | "CANCELLING" => continue,
            "COMPLETED" => {
                bar.finish_and_clear();
                out(&format!("redriven={} skipped=0 failed=0", state.moved));
                return Ok(Exit::Success);
            }
            "CANCELLED" => {
                bar.finish_and_clear();
                out(&format!("redriven={} skipped=0 failed={left} (move task cancelled)", state.moved));
                return Ok(Exit::Partial);
            }
            status => {
                bar.finish_and_clear();
                let reason = state.failure_reason.unwrap_or_default();
                if state.moved == 0 {
                    return Err(AdminError::State(format!("the move task ended {status}: {reason}")));
                }
                eprintln!("the move task ended {status}: {reason}");
                out(&format!("redriven={} skipped=0 failed={left}", state.moved));
                return Ok(Exit::Partial);
            }
        }
    }
}

/// Deletes messages from the DLQ.
///
/// # Errors
/// Resolving the DLQ, a receive or `PurgeQueue` failed; [`AdminError::Usage`] for an unconfirmed purge of everything.
pub async fn purge(client: &Client, args: &PurgeArgs, interrupt: &CancellationToken) -> Result<Exit, AdminError> {
    let target = sqs::resolve(client, &args.selection).await?;
    let whole_queue = args.filters.filter().is_empty() && args.filters.max.is_none();
    if whole_queue && !args.dry_run {
        if !args.yes {
            if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
                return Err(AdminError::Usage(format!(
                    "purging every message of {} needs --yes (or a filter: --reason, --older-than, --max); nothing \
                     was deleted",
                    target.dlq_url
                )));
            }
            let depth = sqs::visible_messages(client, &target.dlq_url).await?;
            if !confirm(&format!("Delete every message of {} (about {depth})? Type yes: ", target.dlq_url)).await {
                eprintln!("not confirmed; nothing was deleted");
                return Ok(Exit::Success);
            }
        }
        let depth = sqs::visible_messages(client, &target.dlq_url).await?;
        sqs::purge_queue(client, &target.dlq_url).await?;
        out(&format!("purged={depth} skipped=0 failed=0 (PurgeQueue; the count is SQS's approximate one)"));
        return Ok(Exit::Success);
    }
    let options = Options {
        filters: &args.filters,
        scan: &args.scan,
        dry_run: args.dry_run,
        rate: args.rate,
        watch: Duration::ZERO,
    };
    one_by_one(client, &target, Mode::Purge, &options, interrupt).await
}

/// Asks on the terminal; anything but `yes` (or a read error) is a no.
async fn confirm(question: &str) -> bool {
    eprint!("{question}");
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await;
    matches!(answer, Ok(Ok(line)) if line.trim().eq_ignore_ascii_case("yes"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Redrive,
    Purge,
}

impl Mode {
    fn verb(self) -> &'static str {
        match self {
            Self::Redrive => "redrive",
            Self::Purge => "purge",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Self::Redrive => "redriven",
            Self::Purge => "purged",
        }
    }
}

/// The options `redrive` and `purge` share on the message-by-message path.
struct Options<'a> {
    filters: &'a FilterArgs,
    scan: &'a ScanArgs,
    dry_run: bool,
    rate: u32,
    /// How long a redrive watches for its copies coming back rejected (zero for a purge).
    watch: Duration,
}

/// Batches in a row holding only messages that entered the DLQ after the run started: the DLQ then holds nothing
/// but the next run's messages (a worker rejecting other traffic keeps adding them), and the walk stops.
const ARRIVALS_ONLY_BATCHES: u32 = 3;

/// Receive, act on each selected message, release the rest: the path for filters, `--max`, `--dry-run`, purges
/// with filters, and endpoints without move tasks.
async fn one_by_one(
    client: &Client,
    target: &Target,
    mode: Mode,
    options: &Options<'_>,
    interrupt: &CancellationToken,
) -> Result<Exit, AdminError> {
    let Options { filters, scan: scan_args, dry_run, rate, watch } = *options;
    let expected = sqs::visible_messages(client, &target.dlq_url).await?;
    let bar = if dry_run { ProgressBar::hidden() } else { progress::bar(expected, mode.verb()) };
    let tracker = match mode {
        Mode::Redrive => Some(Tracker::new(target.destination()?, now_ms())),
        Mode::Purge => None,
    };
    let mut run = Run {
        client,
        target,
        mode,
        dry_run,
        bar: &bar,
        selector: Selector::new(filters.filter(), filters.max),
        pacer: Pacer::new(rate),
        counts: Counts::default(),
        tracker,
        stopped_on_arrivals: false,
    };
    let mut scan = new_scan(client, target, scan_args);
    let mut result = run.walk(&mut scan, interrupt).await;
    if matches!(result, Ok(false)) && !dry_run {
        if let Some(mut tracker) = run.tracker.take() {
            // The copies the worker rejects again come back under new ids: report them, never redrive them.
            let until = tokio::time::Instant::now() + watch;
            let watched = redrive::watch(client, &mut scan, &mut tracker, until, |tracker, message| {
                run.on_returned(tracker, &message);
            })
            .await;
            if let Err(error) = watched {
                result = Err(error);
            }
        }
    }
    release_and_report(&mut scan).await;
    bar.finish_and_clear();
    let mut counts = run.counts;
    counts.skipped = run.selector.skipped;
    let interrupted = match &result {
        Ok(interrupted) => *interrupted,
        Err(_) => false,
    };
    let mut summary = if dry_run {
        format!("would-{}={} skipped={} failed={}", mode.verb(), counts.done, counts.skipped, counts.failed)
    } else {
        format!("{}={} skipped={} failed={}", mode.done(), counts.done, counts.skipped, counts.failed)
    };
    if mode == Mode::Redrive {
        summary.push_str(&format!(" rejected-again={} refused={}", counts.rejected_again, counts.refused));
    }
    if dry_run {
        summary.push_str(" (dry run: nothing was changed)");
    }
    out(&summary);
    if interrupted {
        eprintln!("interrupted; the messages not handled are still in the DLQ");
    }
    if counts.left_for_next_run > 0 {
        eprintln!(
            "{} message(s) entered the DLQ after this run started (or are a second entry of a message it redrove); \
             left for the next run",
            counts.left_for_next_run
        );
    }
    let mut incomplete = report_incomplete(&scan, target);
    if run.stopped_on_arrivals {
        let visible = sqs::visible_messages(client, &target.dlq_url).await.unwrap_or(0);
        if visible > 0 {
            eprintln!(
                "incomplete: the last receives brought only messages newer than this run while SQS still counts \
                 about {visible} visible message(s) in {}; run the command again",
                target.dlq_url
            );
            incomplete = true;
        }
    }
    let partial = counts.failed > 0 || counts.rejected_again > 0 || counts.refused > 0 || interrupted;
    result.map(|interrupted| Exit::of(partial || interrupted, incomplete))
}

/// One redrive or purge in progress.
struct Run<'a> {
    client: &'a Client,
    target: &'a Target,
    mode: Mode,
    dry_run: bool,
    bar: &'a ProgressBar,
    selector: Selector,
    pacer: Pacer,
    counts: Counts,
    /// A redrive's memory of what it sent (`None` for a purge).
    tracker: Option<Tracker>,
    /// The walk stopped because the DLQ kept handing out only messages newer than the run.
    stopped_on_arrivals: bool,
}

impl Run<'_> {
    /// Returns whether the walk was interrupted.
    async fn walk(&mut self, scan: &mut Scan, interrupt: &CancellationToken) -> Result<bool, AdminError> {
        let mut arrivals_only = 0;
        while !self.selector.full() {
            let batch = scan.next_batch().await?;
            if batch.is_empty() {
                break;
            }
            let now = now_ms();
            let mut older = false;
            for message in batch {
                let verdict = self.tracker.as_ref().map(|tracker| tracker.judge(&message));
                older |= !matches!(verdict, Some(Verdict::Arrived | Verdict::RejectedAgain));
                if interrupt.is_cancelled() {
                    self.bar.inc(1);
                    continue;
                }
                match verdict {
                    Some(Verdict::RejectedAgain | Verdict::AlreadyRedriven | Verdict::Arrived) => {
                        if let Some(mut tracker) = self.tracker.take() {
                            self.on_returned(&mut tracker, &message);
                            self.tracker = Some(tracker);
                        }
                    }
                    Some(Verdict::Refused { source_queue }) => {
                        if self.selector.select(&message, now) {
                            self.refuse(&message, &source_queue, now);
                        }
                    }
                    Some(Verdict::Redrive) | None => {
                        if self.selector.select(&message, now) && self.act(&message, now).await {
                            scan.deleted(&message);
                        }
                    }
                }
                // Progress through the DLQ (its depth is the bar's length), with what was done so far.
                self.bar.inc(1);
                self.bar.set_message(format!(
                    "{}: {} {}, {} failed",
                    self.mode.verb(),
                    self.counts.done,
                    self.mode.done(),
                    self.counts.failed
                ));
            }
            if interrupt.is_cancelled() {
                return Ok(true);
            }
            arrivals_only = if older { 0 } else { arrivals_only + 1 };
            if arrivals_only >= ARRIVALS_ONLY_BATCHES {
                self.stopped_on_arrivals = true;
                break;
            }
        }
        Ok(false)
    }

    /// A message that is not this run's to redrive: one of its copies rejected again (reported on stdout), or a
    /// message for the next run (counted). Never copied, never deleted: it stays in the DLQ.
    fn on_returned(&mut self, tracker: &mut Tracker, message: &DlqMessage) {
        match tracker.judge(message) {
            Verdict::RejectedAgain => {
                let from = tracker.came_back(message);
                self.counts.rejected_again += 1;
                let line = format!(
                    "rejected again: {} id={} redriven-from={} detail={}",
                    escape(message.reason().unwrap_or("-")),
                    escape(&message.message_id),
                    escape(from.as_deref().unwrap_or("?")),
                    escape(message.attribute("rejectDetail").unwrap_or("-")),
                );
                self.bar.suspend(|| out(&line));
            }
            _ => self.counts.left_for_next_run += 1,
        }
    }

    /// A message whose `sourceQueue` attribute names another queue: shown, left in the DLQ.
    fn refuse(&mut self, message: &DlqMessage, source_queue: &str, now: u64) {
        self.counts.refused += 1;
        let destination = self.tracker.as_ref().map_or("?", Tracker::destination);
        let line = format!(
            "{} {}: its sourceQueue {} is not {destination}, the queue whose DLQ this is; left in the DLQ",
            if self.dry_run { "would refuse" } else { "refused" },
            message.line(now),
            escape(source_queue),
        );
        self.bar.suspend(|| out(&line));
    }

    /// Acts on one selected message; `false` when it stays in the DLQ.
    async fn act(&mut self, message: &DlqMessage, now: u64) -> bool {
        let destination = self.tracker.as_ref().map(|tracker| tracker.destination().to_owned());
        if self.dry_run {
            self.counts.done += 1;
            let to = destination.map(|url| format!(" to={url}")).unwrap_or_default();
            self.bar.suspend(|| out(&format!("would {} {}{to}", self.mode.verb(), message.line(now))));
            return false;
        }
        self.pacer.wait().await;
        let id = escape(&message.message_id);
        if let Some(url) = &destination {
            match sqs::send_copy(self.client, url, message).await {
                Ok(copy_id) => {
                    if let Some(tracker) = self.tracker.as_mut() {
                        tracker.redriven(message, &copy_id);
                    }
                }
                Err(error) => {
                    self.counts.failed += 1;
                    note(self.bar, &format!("failed {id}: copy to {url} failed, left in the DLQ: {error}"));
                    return false;
                }
            }
        }
        // Only now, with the copy's MessageId in hand, may the original go.
        match sqs::delete(self.client, &self.target.dlq_url, &message.receipt_handle).await {
            Ok(()) => {
                self.counts.done += 1;
                true
            }
            Err(error) => {
                self.counts.failed += 1;
                let copied = destination.map(|url| format!(" (copied to {url}; a second redrive is harmless)"));
                note(
                    self.bar,
                    &format!("failed {id}: not deleted from the DLQ{}: {error}", copied.unwrap_or_default()),
                );
                false
            }
        }
    }
}

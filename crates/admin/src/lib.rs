//! `pedidos-admin`: the operator's command line for the dead-letter queues (`dlq list | show | redrive | purge`).
//!
//! Every command reads a DLQ the same way: receive with a short visibility timeout, decide per message, and make
//! everything it did not delete visible again at the end, so looking never consumes. Moving a message is always
//! copy first, delete second: a message is deleted from the DLQ only after SQS returned a `MessageId` for its copy, so
//! a failure anywhere leaves it where it was (a copy made twice is harmless: the store drops the repeat).
//!
//! # Layout
//! - [`cli`]: the command line (clap), with the exit codes in `--help`.
//! - [`config`]: `AWS_REGION` and `AWS_ENDPOINT_URL`, with errors that name the variable.
//! - [`error`]: [`error::AdminError`] and the exit codes it maps to.
//! - [`message`]: the owned DLQ message, filters, durations, previews and the attributes a redrive drops.
//! - [`sqs`]: the SQS calls: finding the DLQ from a source queue, receive, release, copy, delete, move tasks.
//! - [`scan`]: walking a DLQ without consuming it (dedupe by message id, release at the end), until SQS counts no
//!   visible message left or the patience runs out (then the command exits 4: incomplete).
//! - [`progress`]: the rate limit and the progress bar.
//! - [`redrive`]: what makes a redrive end (each message redriven at most once per run, copies that come back
//!   reported as rejected again) and go only to the queue whose DLQ it is.
//! - [`commands`]: `list`, `show`, `redrive` and `purge`.

pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod message;
pub mod progress;
pub mod redrive;
pub mod scan;
pub mod sqs;

use std::process::ExitCode;

use cli::{Cli, Command, DlqCommand};
use error::AdminError;

/// Runs one parsed command line and turns its outcome into the process exit code, printing any error on stderr.
pub async fn run(cli: Cli, config: config::Config) -> ExitCode {
    let sdk = platform::aws::load(&config.region, sqs::CALL_BUDGET, sqs::RECEIVE_WAIT).await;
    let client = aws_sdk_sqs::Client::new(&sdk);
    // Ctrl-C (or SIGTERM) stops the run between messages; what is held is still made visible again.
    let interrupt = platform::shutdown::on_signal();
    let result = match cli.command {
        Command::Dlq(DlqCommand::List(args)) => commands::list(&client, &args, &interrupt).await,
        Command::Dlq(DlqCommand::Show(args)) => commands::show(&client, &args, &interrupt).await,
        Command::Dlq(DlqCommand::Redrive(args)) => commands::redrive(&client, &args, &interrupt).await,
        Command::Dlq(DlqCommand::Purge(args)) => commands::purge(&client, &args, &interrupt).await,
    };
    let exit = match result {
        Ok(exit) => exit,
        Err(error) => {
            eprintln!("pedidos-admin: {error}");
            error.exit()
        }
    };
    exit.into()
}

/// The exit code of a configuration error found before any command ran.
pub fn config_failed(error: platform::config::ConfigError) -> ExitCode {
    let error = AdminError::from(error);
    eprintln!("pedidos-admin: {error}");
    error.exit().into()
}

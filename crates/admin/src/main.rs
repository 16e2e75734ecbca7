//! `pedidos-admin` entry point: parse the command line and the environment, then run on a one-thread runtime.

use std::process::ExitCode;

use clap::Parser;
use pedidos_admin::{cli::Cli, config::Config};
use platform::config::process_env;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap decides: 0 for --help and --version, 2 for a usage error.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let config = match Config::from_env(&process_env) {
        Ok(config) => config,
        Err(e) => return pedidos_admin::config_failed(e),
    };
    platform::block_on(platform::Runtime::CurrentThread, pedidos_admin::run(cli, config))
}

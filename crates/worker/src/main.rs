//! `pedidos-worker` entry point: `serve` (default) or `healthcheck`.

use std::process::ExitCode;

use pedidos_worker::config::{Config, DEFAULT_PORT};
use platform::config::{process_env, Common};

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => serve(),
        Some("healthcheck") => {
            let port = Common::from_env(&process_env, DEFAULT_PORT).map_or(DEFAULT_PORT, |c| c.port);
            ExitCode::from(u8::try_from(platform::probe::run(port)).unwrap_or(1))
        }
        Some(other) => {
            eprintln!("unknown command {other:?}; usage: pedidos-worker [serve|healthcheck]");
            ExitCode::from(2)
        }
    }
}

fn serve() -> ExitCode {
    let config = match Config::from_env(&process_env) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::FAILURE;
        }
    };
    platform::telemetry::init(config.common.log_format, "info");
    platform::block_on(platform::Runtime::CurrentThread, async {
        let shutdown = platform::shutdown::on_signal();
        match pedidos_worker::start(config, shutdown).await {
            Ok(()) => {
                tracing::info!("pedidos-worker stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "pedidos-worker failed to start");
                eprintln!("pedidos-worker: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

//! `pedidos-worker` entry point: `serve` (default) or `healthcheck`.

use std::process::ExitCode;

use pedidos_worker::config::DEFAULT_PORT;
use platform::config::{process_env, Common};

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => pedidos_worker::serve(),
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

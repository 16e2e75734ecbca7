//! The worker with a no-op handler, for the benchmark's queue-only figure: the same consumer, configuration and SQS
//! path as `pedidos-worker`, without the store write. Not for production (it deletes every message unapplied).

use std::process::ExitCode;
use std::sync::Arc;

use domain::{EventType, OrderEvent};
use pedidos_worker::config::Config;
use pedidos_worker::handler::{BoxFuture, Effect, Handler, HandlerError, MessageContext};
use platform::config::process_env;

struct Noop;

impl Handler for Noop {
    fn handles(&self, _: EventType) -> bool {
        true
    }
    fn handle<'a>(&'a self, _: &'a OrderEvent, _: &'a MessageContext) -> BoxFuture<'a, Result<Effect, HandlerError>> {
        Box::pin(async { Ok(Effect::Applied) })
    }
}

fn main() -> ExitCode {
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
        match pedidos_worker::start_with(config, shutdown, |_, _| Arc::new(Noop) as Arc<dyn Handler>).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("queue_only: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

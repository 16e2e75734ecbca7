//! The worker with a no-op handler, for the benchmark's queue-only figure: the same consumer, configuration and SQS
//! path as `pedidos-worker`, without the store write. Not for production (it deletes every message unapplied).

use std::process::ExitCode;
use std::sync::Arc;

use domain::{EventType, OrderEvent};
use pedidos_worker::handler::{BoxFuture, Effect, Handler, HandlerError, MessageContext};

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
    pedidos_worker::serve_process(|_, _| Arc::new(Noop) as Arc<dyn Handler>)
}

//! Benchmark peer (docs/BENCHMARKS.md): the peers' worker on `ruststream-sqs-sns`, a maintained SQS consumer crate from
//! crates.io, used as its documentation shows. Same work as the peer harness's Node and Python workers: receive from
//! `SQS_QUEUE_URL` (batches of 10, 20 s long polls), unwrap the SNS envelope, deduplicate by `pedidoId#version` in
//! memory, log one line per order, acknowledge (the crate deletes each acknowledged message).
//!
//! Env: `SQS_QUEUE_URL`; the AWS SDK reads `AWS_ENDPOINT_URL`, `AWS_REGION` and the credentials from the environment.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use ruststream_sqs_sns::prelude::*;
use serde::Deserialize;

/// The SNS `Notification` the queue holds (not raw delivery): the event is the JSON text in `Message`.
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(rename = "Message")]
    message: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Pedido {
    pedido_id: String,
    version: u64,
    cliente_id: String,
    total: serde_json::Value,
}

/// In-memory idempotency, as the other peers: `pedidoId#version`.
static SEEN: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

#[subscriber(SqsQueue)]
async fn pedidos(envelopes: &[Envelope]) -> HandlerOutcome {
    for envelope in envelopes {
        let pedido: Pedido = match serde_json::from_str(&envelope.message) {
            Ok(pedido) => pedido,
            Err(e) => {
                tracing::error!(error = %e, "invalid event");
                continue;
            }
        };
        let key = format!("{}#{}", pedido.pedido_id, pedido.version);
        let new = SEEN.lock().map(|mut seen| seen.insert(key.clone())).unwrap_or(true);
        if new {
            tracing::info!(
                pedido_id = %pedido.pedido_id,
                cliente_id = %pedido.cliente_id,
                total = %pedido.total,
                "PedidoCreado"
            );
        } else {
            tracing::info!(%key, "duplicate skipped");
        }
    }
    HandlerOutcome::ack()
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt().with_ansi(false).init();
    let Ok(queue) = std::env::var("SQS_QUEUE_URL") else {
        eprintln!("SQS_QUEUE_URL is required");
        return ExitCode::FAILURE;
    };
    let ten = NonZeroUsize::new(10).unwrap_or(NonZeroUsize::MIN);
    let app = RustStream::new(AppInfo::new("rust-peer", "0.1.0")).with_broker(SqsBroker::new(), |b| {
        b.include(pedidos.name(queue).batch(ten).wait(Duration::from_secs(20)));
    });
    match app.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rust-peer: {e}");
            ExitCode::FAILURE
        }
    }
}

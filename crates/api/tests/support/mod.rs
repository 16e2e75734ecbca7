//! Shared by the router-level tests: a console that never reaches AWS.

use std::sync::Arc;

use pedidos_api::console::Console;
use store::memory::MemoryOrders;
use tokio_util::sync::CancellationToken;

/// A console over `orders` whose SQS and SNS clients point at a closed port: tests reach its routes that read the
/// order store, its static page, or only its refusals.
pub fn offline_console(orders: Arc<MemoryOrders>) -> Arc<Console> {
    use aws_sdk_sns::config::{BehaviorVersion, Region};
    let sqs = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url("http://127.0.0.1:9")
        .build();
    let sns = aws_sdk_sns::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url("http://127.0.0.1:9")
        .build();
    Console::new(
        aws_sdk_sqs::Client::from_conf(sqs),
        aws_sdk_sns::Client::from_conf(sns),
        "orders".to_owned(),
        orders,
        CancellationToken::new(),
    )
}

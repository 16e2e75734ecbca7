//! The seed's .NET worker loop, ported literally for the benchmark's baseline: receive 5, decode, delete one by one.
//! No batching, no concurrency, no dedup. Not for production. Usage: `seed_loop QUEUE_URL EXPECTED_MESSAGES`.
//! Prints `messages=N receive_calls=R delete_calls=D`.

use std::time::Duration;

use platform::aws::{load, CallBudget};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let queue_url = args.next().ok_or("usage: seed_loop QUEUE_URL EXPECTED_MESSAGES")?;
    let expected: usize = args.next().ok_or("usage: seed_loop QUEUE_URL EXPECTED_MESSAGES")?.parse()?;
    let sdk = load("us-east-1", CallBudget::INTERACTIVE, Duration::from_secs(20)).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let (mut messages, mut receives, mut deletes) = (0usize, 0usize, 0usize);
    while messages < expected {
        receives += 1;
        let out = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(5)
            .wait_time_seconds(20)
            .visibility_timeout(30)
            .send()
            .await?;
        for message in out.messages.unwrap_or_default() {
            // The seed deserialised the envelope, then the order; the shared decoder does both.
            let _ = domain::decode(message.body().unwrap_or_default());
            deletes += 1;
            sqs.delete_message()
                .queue_url(&queue_url)
                .receipt_handle(message.receipt_handle().unwrap_or_default())
                .send()
                .await?;
            messages += 1;
        }
    }
    println!("messages={messages} receive_calls={receives} delete_calls={deletes}");
    Ok(())
}

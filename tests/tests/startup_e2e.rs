//! Start-up against an AWS endpoint that is still starting (G37): `pedidos-api topology`, the one-shot everything else
//! in compose waits for, rides out an emulator holding DynamoDB requests, says that it waited, and fails with one line
//! only after its budget. Its log, like every binary's, has no colour codes when it is not a terminal.

use std::time::{Duration, Instant};

use e2e::{dynamodb, unique, Emulator, Endpoints, HoldingProxy, Service};

/// How long the emulator holds DynamoDB requests at first: longer than the old 6 s budget several times over, as long as
/// LocalStack holds one request for a starting service.
const HOLD: Duration = Duration::from_secs(30);

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_waits_for_a_dynamodb_that_holds_requests_at_first() {
    let emulator = Emulator::start().await;
    let real = emulator.endpoints();
    // Built first (a no-op when up to date): the hold starts with the proxy, and must not be spent compiling.
    e2e::binary("pedidos-api");
    let proxy = HoldingProxy::start(&real.dynamodb, HOLD);
    let endpoints = Endpoints { messaging: real.messaging.clone(), dynamodb: proxy.endpoint() };
    let started = Instant::now();
    let completed = Service::builder("pedidos-api")
        .name(unique("topology-held"))
        .endpoints(endpoints)
        .arg("topology")
        .run(Duration::from_secs(150))
        .await;
    let elapsed = started.elapsed();
    assert!(completed.status.is_some_and(|s| s.success()), "topology failed after {elapsed:?}: {completed:?}");
    assert!(elapsed >= HOLD, "topology finished after {elapsed:?}, inside the {HOLD:?} hold: {completed:?}");
    assert!(proxy.held() >= 1, "no DynamoDB request reached the proxy during the hold");
    assert!(completed.stdout.contains("SNS_TOPIC_ARN=") && completed.stdout.contains("PROCESS_QUEUE_URL="));
    assert!(
        completed.stdout.lines().all(|line| line.split_once('=').is_some_and(|(key, _)| !key.contains(' '))),
        "stdout must hold only KEY=value lines (the log goes to stderr):\n{}",
        completed.stdout
    );

    let lines = json_lines(&completed.stderr);
    let about_dynamodb =
        |line: &&serde_json::Value| line["endpoint"].as_str().is_some_and(|e| e.starts_with("DynamoDB at "));
    let warned = lines.iter().filter(about_dynamodb).find(|line| line["level"] == "WARN");
    assert!(
        warned.is_some_and(|line| line["message"].as_str().is_some_and(|m| m.contains("waiting for it"))),
        "no WARN saying it waits for DynamoDB:\n{}",
        completed.stderr
    );
    let answered = lines
        .iter()
        .filter(about_dynamodb)
        .find(|line| line["message"].as_str().is_some_and(|m| m.starts_with("AWS endpoint answered after waiting")));
    let answered = answered.unwrap_or_else(|| panic!("no line saying how long it waited:\n{}", completed.stderr));
    assert_eq!(answered["level"], "INFO");
    let waited = answered["waited_seconds"].as_f64().unwrap_or_default();
    assert!(waited >= HOLD.as_secs_f64() - 1.0, "waited {waited} s: {answered}");
    assert!(answered["attempts"].as_u64().is_some_and(|n| n >= 2), "{answered}");
    // SNS and SQS answered at once: no wait logged for them.
    assert!(lines.iter().all(|line| !line["endpoint"].as_str().is_some_and(|e| e.starts_with("S"))), "{lines:?}");

    // The tables exist on the emulator itself.
    let tables = dynamodb(&real).await.list_tables().send().await.map(|out| out.table_names.unwrap_or_default());
    let tables = tables.unwrap_or_else(|e| panic!("list tables: {}", aws_sdk_dynamodb::error::DisplayErrorContext(e)));
    assert!(tables.iter().any(|t| t == "ecomexpress-orders") && tables.iter().any(|t| t == "ecomexpress-idempotency"));
}

/// An endpoint that never answers: `topology` gives up after `STARTUP_WAIT_SECONDS`, exits 1, prints nothing on
/// stdout, and its failure is one line naming the endpoint, the budget and the last error, in either log format (the
/// pretty one with no colour codes: stderr is a file here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_gives_up_after_its_budget_with_one_line() {
    let nobody = format!("http://127.0.0.1:{}", e2e::free_port());
    for format in ["json", "pretty"] {
        let started = Instant::now();
        let completed = Service::builder("pedidos-api")
            .name(unique(&format!("topology-refused-{format}")))
            .endpoints(nobody.as_str())
            .env("STARTUP_WAIT_SECONDS", "2")
            .env("LOG_FORMAT", format)
            .arg("topology")
            .run(Duration::from_secs(60))
            .await;
        assert_eq!(completed.status.and_then(|s| s.code()), Some(1), "{completed:?}");
        assert!(started.elapsed() < Duration::from_secs(30), "gave up after {:?}", started.elapsed());
        assert_eq!(completed.stdout, "", "nothing on stdout when it fails");
        let errors: Vec<&str> = completed.stderr.lines().filter(|line| line.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "one failure line, not {}:\n{}", errors.len(), completed.stderr);
        let error = errors[0];
        for part in ["topology failed: ", &format!("at {nobody} did not answer within 2 s"), "STARTUP_WAIT_SECONDS"] {
            assert!(error.contains(part), "{part:?} missing from {error}");
        }
        assert!(error.contains("last error: "), "{error}");
    }
}

//! Harness for the end-to-end tests: a real AWS emulator, the real binaries, real HTTP and SQS.
//!
//! # Layout
//! - [`Emulator`]: the AWS endpoints of one test, started fresh for it. DynamoDB is always a [`Moto`] server; SNS and
//!   SQS are the same moto server, or a [`LocalStack`] when the suite runs in the LocalStack lane
//!   (`E2E_EMULATOR=localstack`, see [`Lane`]). [`Emulator::pause`] freezes every process of it (SIGSTOP) to simulate
//!   an unreachable endpoint that keeps its state. Tests see only [`Endpoints`], never which emulator answers.
//! - [`sdk`] and [`topology`]: SDK clients pointed at the endpoints, and the project's topology created on them with a
//!   per-test name suffix, so tests share nothing and run in parallel.
//! - [`Service`] (built with [`ServiceBuilder`]): a workspace binary (`pedidos-api`, `pedidos-worker`,
//!   `pedidos-admin`) started with a hermetic environment, its output in `target/e2e-logs/<name>.log`. The binaries
//!   are built on first use (see [`binary`]).
//! - [`eventually`], [`drain`], [`queue_depth`], [`http`]: polling with a deadline, reading queues, an HTTP client.
//! - [`orders_store`], [`scan_orders`] and [`Snapshot`]: what the workers wrote, read back with the store's own code.
//! - [`worker_builder`], [`api_builder`], [`sns_envelope`]: services wired to a topology (queue, topic, tables), and
//!   the SNS notification a subscription would deliver, for sending copies straight to a queue.
//! - [`fault::FaultProxy`]: a TCP proxy in front of one endpoint that refuses or black-holes connections on demand,
//!   so one process loses one dependency while the emulator keeps serving everyone else.
//! - [`otlp::OtlpReceiver`]: an OTLP/HTTP trace receiver (`POST /v1/traces`, decoded with `opentelemetry-proto`), for
//!   the binaries' traces.
//! - [`holding::HoldingProxy`]: a TCP proxy that holds connections made during its first seconds and answers them
//!   afterwards, like an emulator still starting a service.
//! - [`orchestrator::Orchestrator`]: an ECS stand-in running worker tasks as services: the container health check
//!   (the binary's `healthcheck` command) every interval, replacement after failed checks, rolling deploys.
//!
//! Every process started here is killed when its handle drops, also when a test panics. A [`Service`]'s captured output
//! must hold no ANSI escape code (the binaries colour only a terminal): checked when it drops ([`assert_no_ansi`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName, QueueAttributeName};

pub use platform::topology::{Names, QueueInfo, Topology};

pub mod fault;
pub mod holding;
pub mod orchestrator;
pub mod otlp;

pub use fault::{FaultProxy, Mode, ProxyStats};
pub use holding::HoldingProxy;
pub use orchestrator::{EcsService, Orchestrator, Reason, Timing};

/// Region every test uses.
pub const REGION: &str = "us-east-1";
/// Dummy credentials: the emulators accept anything, and the SDK refuses to sign without some.
pub const ACCESS_KEY: &str = "test";
pub const SECRET_KEY: &str = "test";

// ---------------------------------------------------------------------------------------------------------------
// Paths and small helpers

/// The workspace root (the directory holding `Cargo.lock`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().map_or_else(|| manifest_dir.to_path_buf(), Path::to_path_buf)
}

/// The directory holding the workspace binaries: `PEDIDOS_BIN_DIR` if set, else derived from the test executable
/// (`target/<profile>/deps/<test-exe>` -> `target/<profile>`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PEDIDOS_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("cannot locate the test executable: {e}"));
    let deps = exe.parent().unwrap_or_else(|| panic!("test executable {} has no parent directory", exe.display()));
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().map_or_else(|| deps.to_path_buf(), Path::to_path_buf)
    } else {
        deps.to_path_buf()
    }
}

/// The binaries the end-to-end tests start, each the only binary of the package of the same name.
pub const BINARIES: [&str; 3] = ["pedidos-api", "pedidos-worker", "pedidos-admin"];

/// The path of workspace binary `name` (one of [`BINARIES`]).
///
/// `cargo test` builds the test crates but not the other packages' binaries, so the first call in a test process runs
/// `cargo build --bins` for [`BINARIES`] once (a no-op when they are up to date; `./scripts/test` builds them first),
/// so a test never runs a binary older than the sources. Skipped when `PEDIDOS_BIN_DIR` names prebuilt binaries.
/// Panics with one line saying what to run when the build fails or the binary is still missing.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    if std::env::var_os("PEDIDOS_BIN_DIR").is_none() {
        if let Err(e) = BUILT.get_or_init(build_binaries) {
            panic!("{e}");
        }
    }
    let path = bin_dir().join(name);
    if !path.is_file() {
        panic!(
            "binary {name} not found at {}: build it with `cargo build --workspace --bins` (./scripts/test does)",
            path.display()
        );
    }
    path
}

/// `cargo build --bins -p <each of BINARIES>` into the target directory and profile of this test executable.
fn build_binaries() -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let bin_dir = bin_dir();
    let mut command = Command::new(&cargo);
    command.current_dir(workspace_root()).args(["build", "--bins"]);
    for package in BINARIES {
        command.args(["-p", package]);
    }
    // target/<profile>: the same profile, and the same target directory unless CARGO_TARGET_DIR already says it.
    match bin_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            command.arg("--release");
        }
        Some(profile) => {
            command.args(["--profile", profile]);
        }
    }
    if std::env::var_os("CARGO_TARGET_DIR").is_none() {
        if let Some(target) = bin_dir.parent() {
            command.arg("--target-dir").arg(target);
        }
    }
    let shown = format!("cargo build --bins -p {}", BINARIES.join(" -p "));
    let status = command
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run `{shown}` ({e}): build the binaries with `cargo build --workspace --bins`"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{shown}` failed ({status}; its output is above): fix the build, then run the tests again"))
    }
}

/// `target/e2e-logs/`, created on first use.
pub fn log_dir() -> PathBuf {
    let bin_dir = bin_dir();
    let target = bin_dir.parent().map_or_else(|| bin_dir.clone(), Path::to_path_buf);
    let dir = target.join("e2e-logs");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// A TCP port nobody listens on right now (the kernel picks it; a tiny race remains until the caller binds it).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"));
    listener.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("no local address: {e}"))
}

/// `prefix-xxxxxxxx`: a name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..8])
}

/// Sends `signal` (e.g. `"STOP"`, `"CONT"`, `"TERM"`, `"KILL"`) to `pid` with kill(1).
///
/// # Errors
/// When `kill` could not run or reported failure (e.g. the process is gone).
pub fn send_signal(pid: u32, signal: &str) -> Result<(), String> {
    let output = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run kill: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("kill -{signal} {pid}: {}", String::from_utf8_lossy(&output.stderr).trim()))
    }
}

/// Polls `f` every `interval` until it returns `Some`, panicking when `timeout` passes first.
pub async fn eventually<T, F, Fut>(timeout: Duration, interval: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("eventually: condition not met within {timeout:?}");
        }
        tokio::time::sleep(interval.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// An HTTP client for talking to the services (no proxy, bounded timeouts).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_else(|e| panic!("cannot build the HTTP client: {e}"))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    match File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)) {
        Ok(_) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

fn log_file(name: &str) -> (PathBuf, File) {
    let path = log_dir().join(format!("{name}.log"));
    let file = File::create(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    (path, file)
}

fn clone_file(file: &File, path: &Path) -> File {
    file.try_clone().unwrap_or_else(|e| panic!("cannot duplicate the handle of {}: {e}", path.display()))
}

/// Kills and reaps `child` (ignoring "already exited").
fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------------------------------------------
// Emulators

/// Which emulator serves SNS and SQS in this run, from `E2E_EMULATOR`: `moto` (the default) or `localstack`
/// (`./scripts/test` runs the suite once per lane). DynamoDB is moto in both lanes: LocalStack's DynamoDB downloads
/// DynamoDB Local at first use, so it cannot run offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Moto,
    LocalStack,
}

impl Lane {
    /// The lane `E2E_EMULATOR` selects; panics with one line on an unknown value.
    pub fn current() -> Self {
        match std::env::var("E2E_EMULATOR").ok().as_deref().map(str::trim) {
            None | Some("" | "moto") => Self::Moto,
            Some("localstack") => Self::LocalStack,
            Some(other) => panic!("E2E_EMULATOR={other:?}: expected moto or localstack"),
        }
    }
}

/// Where the SDK sends each service's calls. A test only ever sees these URLs, never which emulator answers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// SNS and SQS.
    pub messaging: String,
    pub dynamodb: String,
}

impl From<&str> for Endpoints {
    /// One endpoint for every service.
    fn from(url: &str) -> Self {
        Self { messaging: url.to_owned(), dynamodb: url.to_owned() }
    }
}

impl From<String> for Endpoints {
    fn from(url: String) -> Self {
        Self::from(url.as_str())
    }
}

impl From<&Endpoints> for Endpoints {
    fn from(endpoints: &Endpoints) -> Self {
        endpoints.clone()
    }
}

/// The emulators of one test, started for it alone (so pausing them affects no other test) and killed on drop: a
/// moto server, plus a LocalStack for SNS and SQS in the LocalStack lane (see [`Lane`]).
pub struct Emulator {
    moto: Moto,
    localstack: Option<LocalStack>,
}

impl Emulator {
    /// Starts the emulators of the current [`Lane`] on free ports of 127.0.0.1 and waits until they answer.
    pub async fn start() -> Self {
        match Lane::current() {
            Lane::Moto => Self { moto: Moto::start().await, localstack: None },
            Lane::LocalStack => {
                let (moto, localstack) = tokio::join!(Moto::start(), LocalStack::start());
                Self { moto, localstack: Some(localstack) }
            }
        }
    }

    /// The URLs to give the SDK (see [`ServiceBuilder::endpoints`] for a binary).
    pub fn endpoints(&self) -> Endpoints {
        let dynamodb = self.moto.endpoint();
        let messaging = self.localstack.as_ref().map_or_else(|| dynamodb.clone(), LocalStack::endpoint);
        Endpoints { messaging, dynamodb }
    }

    /// Freezes every emulator process (SIGSTOP): connections are accepted by the kernel but never answered, like an
    /// unreachable endpoint. State is kept for [`Emulator::resume`].
    pub fn pause(&self) {
        self.moto.server.pause();
        if let Some(localstack) = &self.localstack {
            localstack.server.pause();
        }
    }

    /// Undoes [`Emulator::pause`].
    pub fn resume(&self) {
        self.moto.server.resume();
        if let Some(localstack) = &self.localstack {
            localstack.server.resume();
        }
    }
}

/// An emulator process on `127.0.0.1:<port>`: paused, resumed and killed by pid; killed on drop.
struct Server {
    /// What it is, for messages: `moto`, `LocalStack`.
    what: &'static str,
    child: Mutex<Option<Child>>,
    pid: u32,
    port: u16,
    paused: AtomicBool,
    log: PathBuf,
}

impl Server {
    /// Runs `command` (its output to `target/e2e-logs/<log_name>.log`) as the server on `port`.
    fn spawn(what: &'static str, mut command: Command, port: u16, log_name: &str) -> Result<Self, String> {
        let (log, file) = log_file(log_name);
        let child = command
            .stdin(Stdio::null())
            .stdout(clone_file(&file, &log))
            .stderr(file)
            .spawn()
            .map_err(|e| format!("cannot spawn {what}: {e}"))?;
        Ok(Self { what, pid: child.id(), child: Mutex::new(Some(child)), port, paused: AtomicBool::new(false), log })
    }

    /// Polls `GET <endpoint><path>` until `ready` accepts the answer's status and body, the process exits, or
    /// `timeout` passes.
    async fn wait_ready(&self, path: &str, timeout: Duration, ready: fn(u16, &str) -> bool) -> Result<(), String> {
        let client = http();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Err(format!("exited with {status} before answering; log:\n{}", tail(&self.log_text(), 20)));
            }
            let probe = client.get(format!("{}{path}", self.endpoint())).timeout(Duration::from_secs(1)).send().await;
            if let Ok(response) = probe {
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                if ready(status, &body) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not ready on port {} within {timeout:?}; log:\n{}",
                    self.port,
                    tail(&self.log_text(), 20)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn try_wait(&self) -> Option<ExitStatus> {
        let mut guard = self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn pause(&self) {
        send_signal(self.pid, "STOP").unwrap_or_else(|e| panic!("cannot pause {}: {e}", self.what));
        self.paused.store(true, Ordering::SeqCst);
    }

    fn resume(&self) {
        send_signal(self.pid, "CONT").unwrap_or_else(|e| panic!("cannot resume {}: {e}", self.what));
        self.paused.store(false, Ordering::SeqCst);
    }

    fn stop(&self) {
        if self.paused.swap(false, Ordering::SeqCst) {
            let _ = send_signal(self.pid, "CONT");
        }
        let mut guard = self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(mut child) = guard.take() {
            kill_and_reap(&mut child);
        }
    }

    fn log_text(&self) -> String {
        read_lossy(&self.log)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A moto server on `127.0.0.1:<free port>`, killed on drop. Tests use [`Emulator`], which holds one.
pub struct Moto {
    server: Server,
}

impl Moto {
    /// How long moto may take to answer its first request (Python start-up on a busy 2-core machine).
    pub const START_TIMEOUT: Duration = Duration::from_secs(20);

    /// Starts moto (`scripts/lib/moto_server.py`: moto with DynamoDB's per-item atomicity, run by the Python next to
    /// `MOTO_SERVER_BIN`, else `<workspace>/.venv/bin/python`) and waits until it answers HTTP. Retries on another
    /// port if the chosen one was taken in the meantime.
    pub async fn start() -> Self {
        let moto_bin = std::env::var_os("MOTO_SERVER_BIN")
            .map_or_else(|| workspace_root().join(".venv/bin/moto_server"), PathBuf::from);
        let bin = moto_bin.with_file_name("python");
        if !moto_bin.is_file() || !bin.is_file() {
            panic!(
                "moto is not installed (no {}): run ./scripts/test once, which installs it into .venv (or: python3 -m \
                 venv .venv && .venv/bin/pip install -r requirements-dev.txt)",
                moto_bin.display()
            );
        }
        start_with_retries("moto_server", || Self::try_start(&bin)).await
    }

    async fn try_start(bin: &Path) -> Result<Self, String> {
        let port = free_port();
        let mut command = Command::new(bin);
        command.arg(workspace_root().join("scripts/lib/moto_server.py")).args([
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ]);
        let server = Server::spawn("moto", command, port, &format!("moto-{port}"))?;
        server.wait_ready("/moto-api/", Self::START_TIMEOUT, |_, _| true).await?;
        Ok(Self { server })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    /// What the server printed so far.
    pub fn log_text(&self) -> String {
        self.server.log_text()
    }
}

/// Up to three attempts at starting an emulator: the free port chosen can be taken before the server binds it.
///
/// # Panics
/// When every attempt failed, with the last error.
async fn start_with_retries<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut last_error = String::new();
    for _attempt in 0..3 {
        match attempt().await {
            Ok(started) => return started,
            Err(e) => last_error = e,
        }
    }
    panic!("{what} did not start: {last_error}");
}

/// LocalStack serving SNS and SQS on `127.0.0.1:<free port>` (`scripts/lib/localstack_server.py`), its state in a
/// directory of its own that is removed with it. Killed on drop. Tests use [`Emulator`], which holds one in the
/// LocalStack lane.
pub struct LocalStack {
    server: Server,
    root: PathBuf,
}

impl LocalStack {
    /// How long LocalStack may take until both services report ready (about 3 s on an idle machine).
    pub const START_TIMEOUT: Duration = Duration::from_secs(60);

    /// Starts LocalStack with the Python of its venv (`LOCALSTACK_BIN`, else
    /// `<workspace>/.local/localstack/venv/bin/python`, where `./scripts/test` installs it) and waits until
    /// `/_localstack/health` reports SNS and SQS ready. Retries on another port if the chosen one was taken.
    pub async fn start() -> Self {
        let bin = std::env::var_os("LOCALSTACK_BIN")
            .map_or_else(|| workspace_root().join(".local/localstack/venv/bin/python"), PathBuf::from);
        if !bin.is_file() {
            panic!(
                "LocalStack is not installed (no {}): the LocalStack lane runs from ./scripts/test, which installs it \
                 into .local/localstack when Python 3.12 or 3.13 exists",
                bin.display()
            );
        }
        start_with_retries("LocalStack", || Self::try_start(&bin)).await
    }

    async fn try_start(bin: &Path) -> Result<Self, String> {
        let port = free_port();
        let root = log_dir().with_file_name("e2e-localstack").join(unique(&port.to_string()));
        let mut command = Command::new(bin);
        command
            .arg(workspace_root().join("scripts/lib/localstack_server.py"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string(), "--root"])
            .arg(&root);
        let server = Server::spawn("LocalStack", command, port, &format!("localstack-{port}"))?;
        let localstack = Self { server, root };
        localstack.server.wait_ready("/_localstack/health", Self::START_TIMEOUT, Self::ready).await?;
        Ok(localstack)
    }

    /// `/_localstack/health` answered 200 with both services `running` (or `available`, loaded on first use).
    fn ready(status: u16, body: &str) -> bool {
        let Ok(health) = serde_json::from_str::<serde_json::Value>(body) else { return false };
        let up = |service: &str| matches!(health["services"][service].as_str(), Some("running" | "available"));
        status == 200 && up("sns") && up("sqs")
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    /// What the server printed so far.
    pub fn log_text(&self) -> String {
        self.server.log_text()
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        self.server.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// AWS

/// SNS and SQS clients for `endpoints` with dummy credentials, region `us-east-1` and bounded timeouts, independent of
/// the process environment.
pub async fn sdk(endpoints: &Endpoints) -> (aws_sdk_sns::Client, aws_sdk_sqs::Client) {
    let config = sdk_config().await;
    let sns = aws_sdk_sns::config::Builder::from(&config).endpoint_url(&endpoints.messaging).build();
    let sqs = aws_sdk_sqs::config::Builder::from(&config).endpoint_url(&endpoints.messaging).build();
    (aws_sdk_sns::Client::from_conf(sns), aws_sdk_sqs::Client::from_conf(sqs))
}

async fn sdk_config() -> aws_config::SdkConfig {
    let credentials = aws_sdk_sns::config::Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "e2e");
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(credentials)
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_attempt_timeout(Duration::from_secs(10))
                .operation_timeout(Duration::from_secs(30))
                .build(),
        )
        .load()
        .await
}

/// A DynamoDB client for `endpoints`, configured like [`sdk`].
pub async fn dynamodb(endpoints: &Endpoints) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::config::Builder::from(&sdk_config().await).endpoint_url(&endpoints.dynamodb).build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// The project's topology (tables, topic, two queues with DLQs, subscriptions) on `emulator`, every name ending in
/// `suffix`.
pub async fn topology(emulator: &Emulator, suffix: &str) -> Topology {
    let endpoints = emulator.endpoints();
    let (sns, sqs) = sdk(&endpoints).await;
    let dynamodb = dynamodb(&endpoints).await;
    platform::topology::ensure(&sns, &sqs, &dynamodb, &Names::with_suffix(suffix))
        .await
        .unwrap_or_else(|e| panic!("creating the topology with suffix {suffix:?} failed: {e}"))
}

/// Receives from `queue_url` until `n` messages were seen or `timeout` passed, deleting each one. Requests every
/// system attribute and message attribute. Returns what arrived (possibly fewer than `n`: callers assert).
pub async fn drain(sqs: &aws_sdk_sqs::Client, queue_url: &str, n: usize, timeout: Duration) -> Vec<Message> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while seen.len() < n && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        // Short long-polls so the deadline is honoured to about a second.
        let wait = i32::try_from(left.as_secs().clamp(0, 1)).unwrap_or(1);
        let output = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(wait)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap_or_else(|e| panic!("receive from {queue_url}: {}", aws_sdk_sqs::error::DisplayErrorContext(e)));
        for message in output.messages.unwrap_or_default() {
            if let Some(handle) = message.receipt_handle() {
                sqs.delete_message().queue_url(queue_url).receipt_handle(handle).send().await.unwrap_or_else(|e| {
                    panic!("delete from {queue_url}: {}", aws_sdk_sqs::error::DisplayErrorContext(e))
                });
            }
            seen.push(message);
        }
    }
    seen
}

/// `(visible, in flight)` message counts of a queue (`ApproximateNumberOfMessages[NotVisible]`).
pub async fn queue_depth(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> (u64, u64) {
    let output = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap_or_else(|e| panic!("attributes of {queue_url}: {}", aws_sdk_sqs::error::DisplayErrorContext(e)));
    let attributes = output.attributes.unwrap_or_default();
    let count = |name: &QueueAttributeName| attributes.get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
    (
        count(&QueueAttributeName::ApproximateNumberOfMessages),
        count(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

/// The body of an SQS message delivered by SNS, parsed as the SNS envelope JSON.
pub fn envelope(message: &Message) -> serde_json::Value {
    let body = message.body().unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("SQS body is not JSON ({e}): {body}"))
}

/// Version `version` of order `pedido_id` as the API would publish it: one customer for every version of an order (a
/// version that changes it is refused, `cliente_changed`), 59.98 in total, dated now.
pub fn order_event(pedido_id: uuid::Uuid, version: u64) -> domain::OrderEvent {
    let order = domain::OrderState {
        pedido_id,
        cliente_id: uuid::Uuid::from_u128(pedido_id.as_u128() ^ 1),
        fecha: chrono::Utc::now().fixed_offset(),
        total: rust_decimal::Decimal::new(5998, 2),
        items: None,
    };
    if version == 1 {
        domain::OrderEvent::created(order, chrono::Utc::now())
    } else {
        domain::OrderEvent::updated(order, version, chrono::Utc::now())
    }
}

/// Sends `body` to `queue_url` as it is (a duplicate or hand-made delivery); panics naming the queue if SQS refuses.
pub async fn send(sqs: &aws_sdk_sqs::Client, queue_url: &str, body: &str) {
    sqs.send_message()
        .queue_url(queue_url)
        .message_body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("send to {queue_url}: {}", aws_sdk_sqs::error::DisplayErrorContext(e)));
}

/// The SNS `Notification` a subscription without raw delivery puts on its queue for `event`, with the message
/// attributes the API publishes (`eventType`, `version`, `pedidoId`, and `requestId` when given). Sending it straight
/// to a queue is a duplicate (or a reordered) delivery the worker cannot tell from SNS's own.
pub fn sns_envelope(topic_arn: &str, event: &domain::OrderEvent, request_id: Option<&str>) -> String {
    let message = event.to_json().unwrap_or_else(|e| panic!("serialising an event: {e}"));
    let mut attributes = serde_json::json!({
        "eventType": {"Type": "String", "Value": event.event_type.as_str()},
        "version": {"Type": "Number", "Value": event.version.to_string()},
        "pedidoId": {"Type": "String", "Value": event.order.pedido_id.to_string()},
    });
    if let Some(request_id) = request_id {
        attributes["requestId"] = serde_json::json!({"Type": "String", "Value": request_id});
    }
    serde_json::json!({
        "Type": "Notification",
        "MessageId": uuid::Uuid::new_v4().to_string(),
        "TopicArn": topic_arn,
        "Subject": event.event_type.subject(),
        "Message": message,
        "Timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "SignatureVersion": "1",
        "MessageAttributes": attributes,
    })
    .to_string()
}

// ---------------------------------------------------------------------------------------------------------------
// The order store

/// The orders table `table` at `endpoints`, through the store crate: tests read back what the workers wrote with the
/// same decoding the API uses.
pub async fn orders_store(endpoints: &Endpoints, table: &str) -> store::dynamo::DynamoOrders {
    store::dynamo::DynamoOrders::new(dynamodb(endpoints).await, table)
}

/// A fresh emulator with its own topology (names suffixed with `tag` and a unique id), an SQS client and the orders
/// store on it: what a test of the pipeline's wiring starts from.
pub async fn pipeline(tag: &str) -> (Emulator, Topology, aws_sdk_sqs::Client, store::dynamo::DynamoOrders) {
    let emulator = Emulator::start().await;
    let topo = topology(&emulator, &format!("-{}", unique(tag))).await;
    let (_, sqs) = sdk(&emulator.endpoints()).await;
    let orders = orders_store(&emulator.endpoints(), &topo.orders_table).await;
    (emulator, topo, sqs, orders)
}

/// The versions in an order's history (`versiones`), in the order they were applied.
pub fn history(order: &store::OrderRecord) -> Vec<u64> {
    order.versiones.iter().map(|v| v.version).collect()
}

/// An item's size as DynamoDB counts it against its 400 KB limit: attribute names plus values (strings and binaries
/// by length, numbers by significant digits, lists and maps with their 3-byte overhead and 1 byte per element).
pub fn item_size(item: &std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>) -> usize {
    use aws_sdk_dynamodb::types::AttributeValue;
    fn value(v: &AttributeValue) -> usize {
        match v {
            AttributeValue::S(s) => s.len(),
            AttributeValue::N(n) => n.trim_start_matches(['-', '0']).replace('.', "").len().div_ceil(2) + 1,
            AttributeValue::B(b) => b.as_ref().len(),
            AttributeValue::Ss(ss) => ss.iter().map(String::len).sum(),
            AttributeValue::L(list) => 3 + list.iter().map(|v| value(v) + 1).sum::<usize>(),
            AttributeValue::M(map) => 3 + map.iter().map(|(k, v)| k.len() + value(v) + 1).sum::<usize>(),
            _ => 1,
        }
    }
    item.iter().map(|(name, v)| name.len() + value(v)).sum()
}

/// The size of order `pedido_id`'s item (`PEDIDO#<id>`) in `table`, read consistently (0 when absent).
pub async fn order_item_size(dynamodb: &aws_sdk_dynamodb::Client, table: &str, pedido_id: uuid::Uuid) -> usize {
    let item = dynamodb
        .get_item()
        .table_name(table)
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(store::dynamo::order_key(pedido_id)))
        .consistent_read(true)
        .send()
        .await
        .unwrap_or_else(|e| panic!("reading {pedido_id}: {}", aws_sdk_dynamodb::error::DisplayErrorContext(e)))
        .item
        .unwrap_or_default();
    item_size(&item)
}

/// Everything in an orders table at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub orders: BTreeMap<uuid::Uuid, store::OrderRecord>,
    pub shipments: BTreeMap<uuid::Uuid, store::Shipment>,
    /// Per-role stats items (`STATS#<role>`): their numeric attributes by name.
    pub stats: BTreeMap<String, BTreeMap<String, f64>>,
    /// Items that are none of these (there should be none).
    pub other: usize,
}

impl Snapshot {
    /// The history of order `id`; empty when it is not stored.
    pub fn history(&self, id: uuid::Uuid) -> Vec<u64> {
        self.orders.get(&id).map(history).unwrap_or_default()
    }
}

/// Items per page of [`scan_orders`].
const SCAN_PAGE: i32 = 250;

/// Scans the whole orders table (every page) and decodes each item.
///
/// # Errors
/// The scan failed (e.g. the emulator is paused), or an item does not decode; callers polling during an outage
/// retry.
pub async fn scan_orders(dynamodb: &aws_sdk_dynamodb::Client, table: &str) -> Result<Snapshot, String> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let mut snapshot = Snapshot::default();
    // Small pages: the test emulator serialises DynamoDB requests, and one 1 MB page of a large table held that lock
    // for seconds, long enough for the API's store reads behind it to time out (503) in the long soak.
    let mut pages = dynamodb.scan().table_name(table).consistent_read(true).limit(SCAN_PAGE).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| format!("scan {table}: {}", aws_sdk_dynamodb::error::DisplayErrorContext(e)))?;
        for item in page.items.unwrap_or_default() {
            let text = |name: &str| match item.get(name) {
                Some(AttributeValue::S(value)) => Some(value.clone()),
                _ => None,
            };
            let pk = text("pk").unwrap_or_default();
            if pk.starts_with("PEDIDO#") {
                let order = store::dynamo::decode_order(&item, &pk).map_err(|e| e.to_string())?;
                snapshot.orders.insert(order.pedido_id, order);
            } else if pk.starts_with("ENVIO#") {
                let bad = |what: &str| format!("shipment {pk}: {what}");
                let pedido_id =
                    text("pedidoId").and_then(|id| uuid::Uuid::parse_str(&id).ok()).ok_or_else(|| bad("pedidoId"))?;
                let creado_en = text("creadoEn")
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                    .ok_or_else(|| bad("creadoEn"))?
                    .with_timezone(&chrono::Utc);
                let shipment = store::Shipment {
                    pedido_id,
                    tracking_code: text("trackingCode").ok_or_else(|| bad("trackingCode"))?,
                    estado: text("estado").ok_or_else(|| bad("estado"))?,
                    creado_en,
                    request_id: text("requestId"),
                    origin: store::Origin::default(),
                };
                snapshot.shipments.insert(pedido_id, shipment);
            } else if let Some(role) = pk.strip_prefix("STATS#") {
                let numbers = item.iter().filter_map(|(name, value)| match value {
                    AttributeValue::N(n) => Some((name.clone(), n.parse().ok()?)),
                    _ => None,
                });
                snapshot.stats.insert(role.to_owned(), numbers.collect());
            } else {
                snapshot.other += 1;
            }
        }
    }
    Ok(snapshot)
}

// ---------------------------------------------------------------------------------------------------------------
// Services

/// How to start a workspace binary. Create with [`Service::builder`].
#[derive(Debug, Clone)]
pub struct ServiceBuilder {
    bin: String,
    name: String,
    args: Vec<String>,
    /// `None` removes a default variable.
    env: BTreeMap<String, Option<String>>,
    port: u16,
}

impl ServiceBuilder {
    /// Log file name (`target/e2e-logs/<name>.log`); make it unique per test, e.g. with [`unique`].
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), Some(value.into()));
        self
    }

    /// Removes a variable the builder would set by default (e.g. `PORT`, `AWS_ENDPOINT_URL`).
    pub fn unset(mut self, key: impl Into<String>) -> Self {
        self.env.insert(key.into(), None);
        self
    }

    /// Points the AWS SDK at `endpoints` the standard way: `AWS_ENDPOINT_URL` alone when one endpoint serves every
    /// service; otherwise `AWS_ENDPOINT_URL` for SNS and SQS plus `AWS_ENDPOINT_URL_DYNAMODB`, the service-specific
    /// variable the SDK prefers for DynamoDB.
    pub fn endpoints(self, endpoints: impl Into<Endpoints>) -> Self {
        let endpoints = endpoints.into();
        let builder = self.env("AWS_ENDPOINT_URL", &endpoints.messaging);
        if endpoints.dynamodb == endpoints.messaging {
            builder.unset("AWS_ENDPOINT_URL_DYNAMODB")
        } else {
            builder.env("AWS_ENDPOINT_URL_DYNAMODB", endpoints.dynamodb)
        }
    }

    /// The port the service is told to listen on (a free one by default).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self.env("PORT", port.to_string())
    }

    fn command(&self) -> Command {
        let mut command = Command::new(binary(&self.bin));
        // Hermetic: nothing from the developer's shell (SNS_TOPIC_ARN, AWS_PROFILE, ...) leaks in.
        command.env_clear().args(&self.args).stdin(Stdio::null());
        for (key, value) in &self.env {
            if let Some(value) = value {
                command.env(key, value);
            }
        }
        command
    }

    /// Starts the binary in the background, stdout and stderr to `target/e2e-logs/<name>.log`.
    pub fn spawn(self) -> Service {
        self.try_spawn().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`ServiceBuilder::spawn`], returning an error instead of panicking (for code that runs in background tasks).
    ///
    /// # Errors
    /// The log file cannot be created or the process cannot start.
    pub fn try_spawn(self) -> Result<Service, String> {
        let path = log_dir().join(format!("{}.log", self.name));
        let file = File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let stderr = file.try_clone().map_err(|e| format!("cannot duplicate the handle of {}: {e}", path.display()))?;
        let mut command = self.command();
        command.stdout(file).stderr(stderr);
        let child = command.spawn().map_err(|e| format!("cannot start {}: {e}", self.bin))?;
        Ok(Service { pid: child.id(), child: Some(child), name: self.name, port: self.port, log: path })
    }

    /// The command [`ServiceBuilder::spawn`] would run, with `args` instead of the builder's own: the same binary and
    /// the same environment (`PORT` included), as a container health check runs inside its task.
    pub fn command_with(&self, args: &[&str]) -> Command {
        let builder = Self { args: args.iter().map(|a| (*a).to_owned()).collect(), ..self.clone() };
        builder.command()
    }

    /// Runs the binary to completion (killing it after `timeout`) and captures stdout and stderr separately.
    /// Both are also written to `target/e2e-logs/<name>.log`.
    pub async fn run(self, timeout: Duration) -> Completed {
        let stdout_path = log_dir().join(format!("{}.stdout", self.name));
        let stderr_path = log_dir().join(format!("{}.log", self.name));
        let stdout_file = File::create(&stdout_path).unwrap_or_else(|e| panic!("{}: {e}", stdout_path.display()));
        let stderr_file = File::create(&stderr_path).unwrap_or_else(|e| panic!("{}: {e}", stderr_path.display()));
        let mut command = self.command();
        command.stdout(stdout_file).stderr(stderr_file);
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin));
        let mut service =
            Service { pid: child.id(), child: Some(child), name: self.name, port: self.port, log: stderr_path };
        let status = service.wait_exit(timeout).await;
        let stdout = read_lossy(&stdout_path);
        assert_no_ansi(&format!("{} (stdout)", service.name), &stdout);
        Completed { status, stdout, stderr: service.log_text() }
    }
}

/// `pedidos-worker` for `topo.queues[queue]` (0: process, 1: logistics; the role follows from the queue's name), with
/// both tables of `topo` and 1 s long polls (tests stop quickly), its SDK pointed at `endpoints`.
pub fn worker_builder(endpoints: &Endpoints, topo: &Topology, queue: usize) -> ServiceBuilder {
    Service::builder("pedidos-worker")
        .name(unique(if queue == 0 { "process" } else { "logistics" }))
        .endpoints(endpoints)
        .env("SQS_QUEUE_URL", &topo.queues[queue].url)
        .env("ORDERS_TABLE", &topo.orders_table)
        .env("IDEMPOTENCY_TABLE", &topo.idempotency_table)
        .env("WAIT_TIME_SECONDS", "1")
}

/// `pedidos-api` publishing to `topo`'s topic and reading `topo`'s orders table, its SDK pointed at `endpoints`.
pub fn api_builder(endpoints: &Endpoints, topo: &Topology) -> ServiceBuilder {
    Service::builder("pedidos-api")
        .name(unique("api"))
        .endpoints(endpoints)
        .env("SNS_TOPIC_ARN", &topo.topic_arn)
        .env("ORDERS_TABLE", &topo.orders_table)
}

/// A finished [`ServiceBuilder::run`].
#[derive(Debug)]
pub struct Completed {
    /// `None` when it had to be killed at the timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

/// A running workspace binary, killed on drop.
pub struct Service {
    child: Option<Child>,
    pid: u32,
    name: String,
    port: u16,
    log: PathBuf,
}

impl Service {
    /// A builder for binary `bin` (`pedidos-api`, `pedidos-worker`) with the defaults every test wants:
    /// `LOG_FORMAT=json`, `RUST_LOG=info`, dummy credentials, `AWS_REGION=us-east-1`, `BIND_ADDR=127.0.0.1`, a free
    /// `PORT`. Call [`ServiceBuilder::endpoints`] to point it at the emulator.
    pub fn builder(bin: &str) -> ServiceBuilder {
        let port = free_port();
        let env = [
            ("LOG_FORMAT", "json".to_owned()),
            ("RUST_LOG", "info".to_owned()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
            ("BIND_ADDR", "127.0.0.1".to_owned()),
            ("PORT", port.to_string()),
        ];
        ServiceBuilder {
            bin: bin.to_owned(),
            name: unique(bin),
            args: Vec::new(),
            env: env.into_iter().map(|(k, v)| (k.to_owned(), Some(v))).collect(),
            port,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until `GET /health` answers 200 with `"status": "ok"` (a worker still finding its queue says `starting`),
    /// panicking with the log's tail if the process exits or `timeout` passes.
    pub async fn wait_healthy(&mut self, timeout: Duration) {
        let client = http();
        let url = format!("{}/health", self.base_url());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "{} exited with {status} before becoming healthy; log:\n{}",
                    self.name,
                    tail(&self.log_text(), 30)
                );
            }
            let response = client.get(&url).timeout(Duration::from_secs(1)).send().await;
            if let Ok(response) = response {
                // A worker answers 200 while it is still finding its queue (`"status": "starting"`): not yet.
                let ok = response.status() == reqwest::StatusCode::OK;
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                if ok && body["status"] == "ok" {
                    return;
                }
            }
            if Instant::now() >= deadline {
                panic!("{} not healthy within {timeout:?}; log:\n{}", self.name, tail(&self.log_text(), 30));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One Prometheus sample from `GET /metrics`, e.g. `pedidos_worker_messages_total{outcome="processed"}`; `None`
    /// when the endpoint does not answer or has no such sample.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let response = http().get(format!("{}/metrics", self.base_url())).send().await.ok()?;
        let text = response.text().await.ok()?;
        text.lines().find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Everything the process printed so far (stdout and stderr).
    pub fn log_text(&self) -> String {
        read_lossy(&self.log)
    }

    /// The log's JSON lines (`LOG_FORMAT=json`), skipping anything else.
    pub fn log_json(&self) -> Vec<serde_json::Value> {
        self.log_text().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Asks for a graceful shutdown (SIGTERM).
    pub fn signal_term(&self) {
        send_signal(self.pid, "TERM").unwrap_or_else(|e| panic!("cannot SIGTERM {}: {e}", self.name));
    }

    /// SIGKILL now, and reap.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            kill_and_reap(child);
        }
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
        // Not while unwinding: a second panic would abort the test binary and hide the first one's message.
        if !std::thread::panicking() {
            assert_no_ansi(&self.name, &self.log_text());
        }
    }
}

/// Panics when `text`, the captured output of `what`, holds an ANSI escape code (an ESC byte): the binaries colour
/// their logs only on a terminal (and never with `NO_COLOR`), and a test's output is a file.
pub fn assert_no_ansi(what: &str, text: &str) {
    if let Some(at) = text.find('\u{1b}') {
        let line = text[..at].matches('\n').count() + 1;
        let shown: String = text[at..].lines().next().unwrap_or_default().chars().take(80).collect();
        panic!(
            "{what}: its captured output holds an ANSI escape code (line {line}: {shown:?}); logs must be plain text \
             unless the output is a terminal"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Metrics of code running in the test process itself

/// A Prometheus recorder for one test alone. Installed on the test's thread ([`ThreadMetrics::install`]) under a
/// current-thread runtime, it receives the metrics of everything the test runs, and none of the tests running at the
/// same time on other threads (the process-wide registry counts theirs too).
pub struct ThreadMetrics(metrics_exporter_prometheus::PrometheusRecorder);

impl Default for ThreadMetrics {
    fn default() -> Self {
        Self(metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder())
    }
}

impl ThreadMetrics {
    /// Makes this the calling thread's recorder until the guard drops.
    pub fn install(&self) -> metrics::LocalRecorderGuard<'_> {
        metrics::set_default_local_recorder(&self.0)
    }

    /// The sum of every sample whose line starts with `prefix` (e.g. `pedidos_store_calls_total{operation="apply"`).
    pub fn sum(&self, prefix: &str) -> f64 {
        self.0
            .handle()
            .render()
            .lines()
            .filter(|line| line.starts_with(prefix))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

//! [`Orchestrator`]: a stand-in for ECS running worker tasks as services, so a test can show what an orchestrator does
//! to the workers during dependency outages and deploys.
//!
//! What it does, as ECS does it for the worker task definitions of `deploy/cloudformation/ecs.yaml`:
//! - Each [`EcsService`] keeps `desired` tasks running. A task is a [`Service`] started from the service's
//!   [`ServiceBuilder`] factory, so the test decides the endpoints and the environment.
//! - The container health check: every [`Timing::interval`] the real `healthcheck` command of the task's binary runs
//!   with the task's environment (`PORT` included), as ECS runs the `HealthCheck.Command` inside the container. A
//!   check taking longer than [`Timing::timeout`] is killed and counts as failed. Failures during
//!   [`Timing::start_period`] do not count, unless the task already passed once. After [`Timing::retries`]
//!   consecutive failures the task is replaced ([`Reason::HealthCheckFailed`]): SIGTERM, up to
//!   [`Timing::stop_timeout`] for it to exit, SIGKILL if it is still running, then a new task. A task whose process
//!   exits by itself is replaced too ([`Reason::Exited`]: the essential container exited).
//! - [`Orchestrator::rolling_deploy`]: every task replaced one by one as with `minimumHealthyPercent` 100: the new
//!   task is started, its health check must pass, and only then is the old one stopped (SIGTERM, SIGKILL after the
//!   stop timeout).
//! - Every replacement is recorded with its reason, every stop with its exit status, how long it took and whether it
//!   needed SIGKILL. Stopped tasks are kept, so their logs can still be read ([`Orchestrator::log_json`]); task names
//!   (and so log files, `target/e2e-logs/<name>.log`) start with the orchestrator's run id.
//!
//! Every task still running is killed when the orchestrator drops; [`Orchestrator::shutdown`] stops them gracefully
//! first (and records those stops).

use std::collections::BTreeMap;
use std::io::Read as _;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::{kill_and_reap, send_signal, tail, unique, Service, ServiceBuilder};

/// Health check and stop settings of a task definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Time between two health checks of a task (ECS `HealthCheck.Interval`).
    pub interval: Duration,
    /// A check still running after this long is killed and counts as failed (`HealthCheck.Timeout`).
    pub timeout: Duration,
    /// Consecutive failed checks that make a task unhealthy (`HealthCheck.Retries`).
    pub retries: u32,
    /// Failures in this long after a task starts do not count, until it first passes (`HealthCheck.StartPeriod`).
    pub start_period: Duration,
    /// From SIGTERM to SIGKILL (`StopTimeout`).
    pub stop_timeout: Duration,
    /// What the durations were divided by to get these (1: ECS's own).
    pub scaled_down_by: u32,
}

impl Timing {
    /// The worker task definitions in `deploy/cloudformation/ecs.yaml`: interval 15 s, timeout 5 s, retries 3, start
    /// period 15 s, stop timeout 60 s.
    pub const ECS_WORKER: Self = Self {
        interval: Duration::from_secs(15),
        timeout: Duration::from_secs(5),
        retries: 3,
        start_period: Duration::from_secs(15),
        stop_timeout: Duration::from_secs(60),
        scaled_down_by: 1,
    };

    /// Every duration divided by `divisor` (retries unchanged), so a test runs the same sequence faster.
    pub fn scaled_down(self, divisor: u32) -> Self {
        let divisor = divisor.max(1);
        Self {
            interval: self.interval / divisor,
            timeout: self.timeout / divisor,
            retries: self.retries,
            start_period: self.start_period / divisor,
            stop_timeout: self.stop_timeout / divisor,
            scaled_down_by: self.scaled_down_by * divisor,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({"interval_ms": self.interval.as_millis(), "timeout_ms": self.timeout.as_millis(),
               "retries": self.retries, "start_period_ms": self.start_period.as_millis(),
               "stop_timeout_ms": self.stop_timeout.as_millis(), "scaled_down_by": self.scaled_down_by})
    }
}

/// Why a task was stopped or replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// `retries` consecutive failed health checks.
    HealthCheckFailed,
    /// Its process exited by itself.
    Exited,
    /// A rolling deploy.
    Deploy,
    /// [`Orchestrator::shutdown`] (the service scaled to 0).
    Shutdown,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HealthCheckFailed => "health_check_failed",
            Self::Exited => "exited",
            Self::Deploy => "deploy",
            Self::Shutdown => "shutdown",
        }
    }
}

/// One task stopped.
#[derive(Debug, Clone)]
pub struct Stop {
    pub service: String,
    pub slot: usize,
    pub task: String,
    pub reason: Reason,
    /// When SIGTERM was sent, since the orchestrator started.
    pub at: Duration,
    /// From SIGTERM until the process was gone (SIGKILL included).
    pub took: Duration,
    /// The exit code when the process exited by itself (after SIGTERM, or before it for [`Reason::Exited`]).
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    pub exit_signal: Option<i32>,
    /// It was still running after the stop timeout and got SIGKILL.
    pub sigkilled: bool,
}

impl Stop {
    /// Exited 0 on its own after SIGTERM, within `stop_timeout`.
    pub fn clean(&self, stop_timeout: Duration) -> bool {
        !self.sigkilled && self.exit_code == Some(0) && self.took <= stop_timeout
    }

    pub fn to_json(&self) -> Value {
        json!({"service": self.service, "slot": self.slot, "task": self.task, "reason": self.reason.as_str(),
               "at_s": secs(self.at), "took_ms": self.took.as_millis(), "exit_code": self.exit_code,
               "exit_signal": self.exit_signal, "sigkilled": self.sigkilled})
    }
}

/// One task replaced by another.
#[derive(Debug, Clone)]
pub struct Replacement {
    pub service: String,
    pub slot: usize,
    pub reason: Reason,
    /// When the old task left the service, since the orchestrator started.
    pub at: Duration,
    pub old_task: String,
    pub new_task: String,
}

impl Replacement {
    pub fn to_json(&self) -> Value {
        json!({"service": self.service, "slot": self.slot, "reason": self.reason.as_str(), "at_s": secs(self.at),
               "old": self.old_task, "new": self.new_task})
    }
}

/// What [`Orchestrator::rolling_deploy`] did.
#[derive(Debug, Clone, Default)]
pub struct DeployReport {
    /// Since the orchestrator started.
    pub started_at: Duration,
    pub took: Duration,
    /// Tasks replaced.
    pub replaced: usize,
    /// Steps that failed (the new task never passed its health check, or could not start): the old task was kept.
    pub failures: Vec<String>,
}

impl DeployReport {
    pub fn to_json(&self) -> Value {
        json!({"started_at_s": secs(self.started_at), "took_s": secs(self.took), "replaced": self.replaced,
               "failures": self.failures})
    }
}

/// An ECS service: `desired` tasks, each started from `factory`'s builder (the orchestrator names it).
pub struct EcsService {
    name: String,
    desired: usize,
    factory: Arc<dyn Fn() -> ServiceBuilder + Send + Sync>,
}

impl EcsService {
    pub fn new(
        name: impl Into<String>,
        desired: usize,
        factory: impl Fn() -> ServiceBuilder + Send + Sync + 'static,
    ) -> Self {
        Self { name: name.into(), desired, factory: Arc::new(factory) }
    }
}

/// See the module documentation.
pub struct Orchestrator {
    inner: Arc<Inner>,
    monitors: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    stop: CancellationToken,
}

struct Inner {
    timing: Timing,
    /// Prefix of every task name.
    run: String,
    started: Instant,
    services: Vec<ServiceState>,
    record: Mutex<Record>,
}

struct ServiceState {
    name: String,
    factory: Arc<dyn Fn() -> ServiceBuilder + Send + Sync>,
    slots: Vec<Slot>,
}

struct Slot {
    /// Held by whoever replaces this slot's task (the monitor, a deploy, the shutdown), never by a health check.
    ops: tokio::sync::Mutex<()>,
    /// The running task; only locked briefly, never across an await.
    task: Mutex<Option<Task>>,
}

/// A running task.
struct Task {
    id: u64,
    name: String,
    builder: ServiceBuilder,
    service: Service,
    started: Instant,
    passed: bool,
    failures: u32,
}

#[derive(Default)]
struct Record {
    next_task: u64,
    events: Vec<String>,
    replacements: Vec<Replacement>,
    stops: Vec<Stop>,
    checks: u64,
    failed_checks: u64,
    /// Stopped tasks, by service name, kept for their logs.
    retired: Vec<(String, Service)>,
}

/// A check's result: `Err` holds why it failed (the command's stderr, its status, or the timeout).
type CheckResult = Result<(), String>;

fn secs(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0).round() / 1000.0
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here leaves a half-updated value behind when a holder panics.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Orchestrator {
    /// Starts every service's tasks and waits until each has passed its health check once, then keeps checking them
    /// every `timing.interval`.
    ///
    /// # Panics
    /// When a first task cannot start or never passes its health check (with the end of its log): the set-up is
    /// broken, there is nothing to test.
    pub async fn start(timing: Timing, services: Vec<EcsService>) -> Self {
        let services = services
            .into_iter()
            .map(|s| ServiceState {
                name: s.name,
                factory: s.factory,
                slots: (0..s.desired)
                    .map(|_| Slot { ops: tokio::sync::Mutex::new(()), task: Mutex::new(None) })
                    .collect(),
            })
            .collect();
        let inner =
            Arc::new(Inner { timing, run: unique("ecs"), started: Instant::now(), services, record: Mutex::default() });
        let mut starting = Vec::new();
        for (s, service) in inner.services.iter().enumerate() {
            for slot in 0..service.slots.len() {
                let task = inner.start_task(s, slot).unwrap_or_else(|e| panic!("{e}"));
                starting.push((s, slot, task));
            }
        }
        // Checked together, every interval, until each has passed once.
        while starting.iter().any(|(_, _, task)| !task.passed) {
            tokio::time::sleep(timing.interval).await;
            for (s, slot, task) in starting.iter_mut().filter(|(_, _, task)| !task.passed) {
                let service = &inner.services[*s].name;
                let failed = match task.service.try_wait() {
                    Some(status) => Some(format!("exited with {status}")),
                    None => {
                        let result = inner.health_check(&task.builder).await;
                        inner.note(task, &result, service).then(|| format!("{} failed health checks", timing.retries))
                    }
                };
                if let Some(why) = failed {
                    panic!(
                        "{service} task {} did not become healthy: {why}; log:\n{}",
                        task.name,
                        tail(&task.service.log_text(), 30)
                    );
                }
                if task.passed {
                    inner.event(format!("{service} slot {slot}: {} healthy", task.name));
                }
            }
        }
        for (s, slot, task) in starting {
            *lock(&inner.services[s].slots[slot].task) = Some(task);
        }
        let stop = CancellationToken::new();
        let mut monitors = Vec::new();
        for (s, service) in inner.services.iter().enumerate() {
            for slot in 0..service.slots.len() {
                monitors.push(tokio::spawn(Arc::clone(&inner).monitor(s, slot, stop.clone())));
            }
        }
        Self { inner, monitors: Mutex::new(monitors), stop }
    }

    pub fn timing(&self) -> Timing {
        self.inner.timing
    }

    /// The id every task name of this orchestrator starts with (`ecs-xxxxxxxx`): `target/e2e-logs/<id>-*.log`.
    pub fn run_id(&self) -> &str {
        &self.inner.run
    }

    /// Time since [`Orchestrator::start`].
    pub fn elapsed(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// Replaces every task of every service, one at a time: start the new task, wait until its health check passes,
    /// then stop the old one (SIGTERM; SIGKILL after the stop timeout). A new task that fails its health check
    /// `retries` times after its start period is stopped and the old one kept (reported in
    /// [`DeployReport::failures`]).
    pub async fn rolling_deploy(&self) -> DeployReport {
        let inner = &self.inner;
        let started = Instant::now();
        let mut report = DeployReport { started_at: inner.started.elapsed(), ..DeployReport::default() };
        inner.event("rolling deploy started".into());
        for (s, service) in inner.services.iter().enumerate() {
            for (slot, place) in service.slots.iter().enumerate() {
                let mut new = match inner.start_task(s, slot) {
                    Ok(task) => task,
                    Err(e) => {
                        report.failures.push(e);
                        continue;
                    }
                };
                if let Err(e) = inner.wait_passing(&service.name, &mut new).await {
                    let failure = format!("{} slot {slot}: new task {} never healthy: {e}", service.name, new.name);
                    inner.event(format!("deploy step failed: {failure}"));
                    report.failures.push(failure);
                    inner.stop_task(s, slot, new, Reason::Deploy).await;
                    continue;
                }
                let new_name = new.name.clone();
                let old = {
                    let _op = place.ops.lock().await;
                    lock(&place.task).replace(new)
                };
                let Some(old) = old else { continue };
                inner.replaced(s, slot, Reason::Deploy, &old.name, &new_name);
                inner.stop_task(s, slot, old, Reason::Deploy).await;
                report.replaced += 1;
            }
        }
        report.took = started.elapsed();
        inner.event(format!("rolling deploy done: {} replaced in {:.1}s", report.replaced, report.took.as_secs_f64()));
        report
    }

    /// Stops monitoring and stops every task gracefully, all at once (SIGTERM; SIGKILL after the stop timeout), as
    /// when a service is scaled to 0. The stops are recorded with [`Reason::Shutdown`].
    ///
    /// # Panics
    /// When a monitor task panicked (a harness bug), after every task is stopped.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let monitors = std::mem::take(&mut *lock(&self.monitors));
        let mut monitor_panics = Vec::new();
        for monitor in monitors {
            if let Err(e) = monitor.await {
                monitor_panics.push(e.to_string());
            }
        }
        let mut stopping = tokio::task::JoinSet::new();
        for (s, service) in self.inner.services.iter().enumerate() {
            for (slot, place) in service.slots.iter().enumerate() {
                let task = {
                    let _op = place.ops.lock().await;
                    lock(&place.task).take()
                };
                if let Some(task) = task {
                    let inner = Arc::clone(&self.inner);
                    stopping.spawn(async move { inner.stop_task(s, slot, task, Reason::Shutdown).await });
                }
            }
        }
        while let Some(done) = stopping.join_next().await {
            if let Err(e) = done {
                monitor_panics.push(format!("stopping a task: {e}"));
            }
        }
        assert!(monitor_panics.is_empty(), "orchestrator tasks failed: {monitor_panics:?}");
    }

    /// Every replacement so far, in order.
    pub fn replacements(&self) -> Vec<Replacement> {
        lock(&self.inner.record).replacements.clone()
    }

    /// Replacements so far with `reason`.
    pub fn replaced_for(&self, reason: Reason) -> usize {
        lock(&self.inner.record).replacements.iter().filter(|r| r.reason == reason).count()
    }

    /// Every stop so far, in order.
    pub fn stops(&self) -> Vec<Stop> {
        lock(&self.inner.record).stops.clone()
    }

    /// `(run, failed)` health checks so far.
    pub fn health_checks(&self) -> (u64, u64) {
        let record = lock(&self.inner.record);
        (record.checks, record.failed_checks)
    }

    /// What happened, one line each, with the time since start.
    pub fn events(&self) -> Vec<String> {
        lock(&self.inner.record).events.clone()
    }

    /// Names of the tasks of `service` running now.
    pub fn running(&self, service: &str) -> Vec<String> {
        self.inner
            .services
            .iter()
            .filter(|s| s.name == service)
            .flat_map(|s| &s.slots)
            .filter_map(|slot| lock(&slot.task).as_ref().map(|t| t.name.clone()))
            .collect()
    }

    /// The JSON log lines of every task `service` ever ran, stopped ones included.
    pub fn log_json(&self, service: &str) -> Vec<Value> {
        let mut lines: Vec<Value> = lock(&self.inner.record)
            .retired
            .iter()
            .filter(|(name, _)| name == service)
            .flat_map(|(_, task)| task.log_json())
            .collect();
        for state in self.inner.services.iter().filter(|s| s.name == service) {
            for slot in &state.slots {
                if let Some(task) = lock(&slot.task).as_ref() {
                    lines.extend(task.service.log_json());
                }
            }
        }
        lines
    }

    /// For a scenario's record: the timing, replacements by reason, stops (how many were clean, SIGKILLs, the
    /// slowest), health check counts, and in full only what should not have happened: replacements other than a
    /// deploy's and stops that were not clean. [`Orchestrator::replacements`] and [`Orchestrator::stops`] have all.
    pub fn summary(&self) -> Value {
        let record = lock(&self.inner.record);
        let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
        for replacement in &record.replacements {
            *by_reason.entry(replacement.reason.as_str()).or_insert(0) += 1;
        }
        let stop_timeout = self.inner.timing.stop_timeout;
        let slowest = record.stops.iter().map(|s| s.took).max().unwrap_or_default();
        let unexpected: Vec<Value> =
            record.replacements.iter().filter(|r| r.reason != Reason::Deploy).map(Replacement::to_json).collect();
        let unclean: Vec<Value> = record.stops.iter().filter(|s| !s.clean(stop_timeout)).map(Stop::to_json).collect();
        json!({
            "run": self.inner.run,
            "timing": self.inner.timing.to_json(),
            "replacements_by_reason": by_reason,
            "stops": record.stops.len(),
            "stops_clean": record.stops.len() - unclean.len(),
            "sigkills": record.stops.iter().filter(|s| s.sigkilled).count(),
            "slowest_stop_ms": slowest.as_millis(),
            "health_checks": record.checks,
            "health_checks_failed": record.failed_checks,
            "replacements_not_by_deploy": unexpected,
            "stops_not_clean": unclean,
        })
    }
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        self.stop.cancel();
        for monitor in lock(&self.monitors).iter() {
            monitor.abort();
        }
        // A task being replaced right now is owned by its (aborted) future and is killed when that is dropped.
        for service in &self.inner.services {
            for slot in &service.slots {
                drop(lock(&slot.task).take());
            }
        }
    }
}

impl Inner {
    fn event(&self, what: String) {
        let line = format!("[ecs {:>8.3}s] {what}", self.started.elapsed().as_secs_f64());
        println!("{line}");
        lock(&self.record).events.push(line);
    }

    fn replaced(&self, s: usize, slot: usize, reason: Reason, old: &str, new: &str) {
        let service = &self.services[s].name;
        self.event(format!("{service} slot {slot}: {old} -> {new} ({})", reason.as_str()));
        lock(&self.record).replacements.push(Replacement {
            service: service.clone(),
            slot,
            reason,
            at: self.started.elapsed(),
            old_task: old.to_owned(),
            new_task: new.to_owned(),
        });
    }

    /// A new task for `slot` of service `s`, named `<run>-<service><slot>-t<n>`.
    fn start_task(&self, s: usize, slot: usize) -> Result<Task, String> {
        let service = &self.services[s];
        let id = {
            let mut record = lock(&self.record);
            record.next_task += 1;
            record.next_task
        };
        let name = format!("{}-{}{slot}-t{id}", self.run, service.name);
        let builder = (service.factory)().name(name.clone());
        let process = builder.clone().try_spawn().map_err(|e| format!("{} slot {slot}: {e}", service.name))?;
        self.event(format!("{} slot {slot}: started {name} (pid {})", service.name, process.pid()));
        Ok(Task { id, name, builder, service: process, started: Instant::now(), passed: false, failures: 0 })
    }

    /// Runs the container health check of a task: its binary's `healthcheck` command with its environment, killed
    /// after `timing.timeout`.
    async fn health_check(&self, builder: &ServiceBuilder) -> CheckResult {
        let mut command = builder.command_with(&["healthcheck"]);
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        let result = run_check(command, self.timing.timeout).await;
        let mut record = lock(&self.record);
        record.checks += 1;
        if result.is_err() {
            record.failed_checks += 1;
        }
        result
    }

    /// Notes one check of `task`; `true` when it is now unhealthy (`retries` counted failures).
    fn note(&self, task: &mut Task, result: &CheckResult, service: &str) -> bool {
        match result {
            Ok(()) => {
                task.passed = true;
                task.failures = 0;
                false
            }
            Err(why) => {
                let counts = task.passed || task.started.elapsed() >= self.timing.start_period;
                if counts {
                    task.failures += 1;
                }
                self.event(format!(
                    "{service}: {} health check failed{}: {why}",
                    task.name,
                    if counts {
                        format!(" ({}/{})", task.failures, self.timing.retries)
                    } else {
                        " (start period)".into()
                    }
                ));
                task.failures >= self.timing.retries
            }
        }
    }

    /// Checks `task` every interval until it passes (`Ok`), its process exits, or it is unhealthy (`Err`).
    async fn wait_passing(&self, service: &str, task: &mut Task) -> CheckResult {
        loop {
            tokio::time::sleep(self.timing.interval).await;
            if let Some(status) = task.service.try_wait() {
                return Err(format!("exited with {status}"));
            }
            let result = self.health_check(&task.builder).await;
            if result.is_ok() {
                task.passed = true;
                return Ok(());
            }
            if self.note(task, &result, service) {
                return Err(format!("{} consecutive health checks failed", self.timing.retries));
            }
        }
    }

    /// Keeps `slot` of service `s` healthy until `stop`: the health check every interval, replacement after
    /// `retries` failures or when the process exited.
    async fn monitor(self: Arc<Self>, s: usize, slot: usize, stop: CancellationToken) {
        let service = &self.services[s];
        let place = &service.slots[slot];
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.timing.interval) => {}
                () = stop.cancelled() => return,
            }
            let current = {
                let mut guard = lock(&place.task);
                guard.as_mut().map(|task| (task.id, task.builder.clone(), task.service.try_wait()))
            };
            let Some((id, builder, exited)) = current else {
                // An earlier replacement could not start its task: try again, as ECS would.
                let _op = place.ops.lock().await;
                let mut guard = lock(&place.task);
                if guard.is_none() {
                    match self.start_task(s, slot) {
                        Ok(task) => *guard = Some(task),
                        Err(e) => self.event(format!("cannot start a task: {e}")),
                    }
                }
                continue;
            };
            let unhealthy = match exited {
                Some(status) => {
                    self.event(format!("{} slot {slot}: task exited by itself with {status}", service.name));
                    Some(Reason::Exited)
                }
                None => {
                    let result = self.health_check(&builder).await;
                    let mut guard = lock(&place.task);
                    match guard.as_mut() {
                        // Replaced meanwhile (a deploy): the result is about a task that is gone.
                        Some(task) if task.id == id => {
                            self.note(task, &result, &service.name).then_some(Reason::HealthCheckFailed)
                        }
                        _ => None,
                    }
                }
            };
            if let Some(reason) = unhealthy {
                if stop.is_cancelled() {
                    return;
                }
                self.replace(s, slot, id, reason).await;
            }
        }
    }

    /// ECS's replacement of an unhealthy or exited task: stop it, then start a new one.
    async fn replace(&self, s: usize, slot: usize, id: u64, reason: Reason) {
        let place = &self.services[s].slots[slot];
        let _op = place.ops.lock().await;
        let old = {
            let mut guard = lock(&place.task);
            if guard.as_ref().is_none_or(|task| task.id != id) {
                return;
            }
            guard.take()
        };
        let Some(old) = old else { return };
        let old_name = old.name.clone();
        self.stop_task(s, slot, old, reason).await;
        match self.start_task(s, slot) {
            Ok(new) => {
                self.replaced(s, slot, reason, &old_name, &new.name);
                *lock(&place.task) = Some(new);
            }
            Err(e) => self.event(format!("cannot start the replacement of {old_name}: {e}")),
        }
    }

    /// SIGTERM, up to `stop_timeout` to exit, SIGKILL otherwise; records the stop and keeps the task for its log.
    async fn stop_task(&self, s: usize, slot: usize, mut task: Task, reason: Reason) {
        let service = self.services[s].name.clone();
        let at = self.started.elapsed();
        let signalled = Instant::now();
        let mut sigkilled = false;
        let status = match task.service.try_wait() {
            Some(status) => Some(status),
            None => {
                if let Err(e) = send_signal(task.service.pid(), "TERM") {
                    self.event(format!("{service}: cannot SIGTERM {}: {e}", task.name));
                }
                match task.service.wait_exit(self.timing.stop_timeout).await {
                    Some(status) => Some(status),
                    None => {
                        task.service.kill();
                        sigkilled = true;
                        None
                    }
                }
            }
        };
        let took = signalled.elapsed();
        let stop = Stop {
            service: service.clone(),
            slot,
            task: task.name.clone(),
            reason,
            at,
            took,
            exit_code: status.and_then(|s| s.code()),
            exit_signal: status.and_then(signal_of),
            sigkilled,
        };
        self.event(format!(
            "{service} slot {slot}: stopped {} ({}) in {} ms: {}",
            task.name,
            reason.as_str(),
            took.as_millis(),
            match (sigkilled, status) {
                (true, _) => "SIGKILLed after the stop timeout".to_owned(),
                (false, Some(status)) => status.to_string(),
                (false, None) => "unknown status".to_owned(),
            }
        ));
        let mut record = lock(&self.record);
        record.stops.push(stop);
        record.retired.push((service, task.service));
    }
}

#[cfg(unix)]
fn signal_of(status: ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal()
}

#[cfg(not(unix))]
fn signal_of(_: ExitStatus) -> Option<i32> {
    None
}

/// Runs a health check command, killing it after `timeout`: `Ok` when it exits 0.
async fn run_check(mut command: std::process::Command, timeout: Duration) -> CheckResult {
    let mut child = command.spawn().map_err(|e| format!("cannot run the health check: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                if status.success() {
                    return Ok(());
                }
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                let stderr = stderr.trim();
                return Err(if stderr.is_empty() { status.to_string() } else { format!("{status}: {stderr}") });
            }
            Ok(None) => {}
            Err(e) => {
                kill_and_reap(&mut child);
                return Err(format!("cannot wait for the health check: {e}"));
            }
        }
        if Instant::now() >= deadline {
            kill_and_reap(&mut child);
            return Err(format!("timed out after {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_divides_every_duration_and_keeps_retries() {
        let scaled = Timing::ECS_WORKER.scaled_down(15);
        assert_eq!(
            (scaled.interval, scaled.timeout, scaled.retries, scaled.start_period, scaled.stop_timeout),
            (Duration::from_secs(1), Duration::from_secs(5) / 15, 3, Duration::from_secs(1), Duration::from_secs(4))
        );
        assert_eq!(scaled.scaled_down_by, 15);
        assert_eq!(scaled.scaled_down(2).scaled_down_by, 30);
    }

    #[test]
    fn a_clean_stop_exits_zero_within_the_timeout_without_sigkill() {
        let stop = Stop {
            service: "process".into(),
            slot: 0,
            task: "t".into(),
            reason: Reason::Deploy,
            at: Duration::ZERO,
            took: Duration::from_secs(1),
            exit_code: Some(0),
            exit_signal: None,
            sigkilled: false,
        };
        assert!(stop.clean(Duration::from_secs(4)));
        assert!(!Stop { took: Duration::from_secs(5), ..stop.clone() }.clean(Duration::from_secs(4)));
        assert!(!Stop { exit_code: Some(1), ..stop.clone() }.clean(Duration::from_secs(4)));
        assert!(!Stop { exit_code: None, sigkilled: true, ..stop }.clean(Duration::from_secs(4)));
    }

    #[tokio::test]
    async fn a_check_passes_on_exit_0_and_fails_with_stderr_or_at_the_timeout() {
        let shell = |script: &str| {
            let mut command = std::process::Command::new("sh");
            command.args(["-c", script]).stdout(Stdio::null()).stderr(Stdio::piped());
            command
        };
        assert_eq!(run_check(shell("exit 0"), Duration::from_secs(5)).await, Ok(()));
        let failed = run_check(shell("echo 'unhealthy: 503' >&2; exit 1"), Duration::from_secs(5)).await;
        assert!(failed.as_ref().is_err_and(|e| e.ends_with("unhealthy: 503")), "{failed:?}");
        let started = Instant::now();
        let slow = run_check(shell("sleep 5"), Duration::from_millis(200)).await;
        assert!(slow.as_ref().is_err_and(|e| e.starts_with("timed out")), "{slow:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "killed at the timeout");
    }
}

//! `pedidos-worker` configuration, loaded once at start-up.

use std::str::FromStr;
use std::time::Duration;

use platform::config::{idempotency_table, in_range, orders_table, required, Common, ConfigError, Lookup};
use platform::http::{AllowedHosts, HttpLimits};

use crate::handler::Role;
use crate::health::Limits;

pub const DEFAULT_PORT: u16 = 8081;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: Common,
    /// Queue URL, or a bare queue name resolved with `GetQueueUrl`.
    pub queue: String,
    pub role: Role,
    /// Handler slots: at most this many messages are held at once.
    pub concurrency: usize,
    /// Long-poll wait (0 to 20 s).
    pub wait_time: Duration,
    /// How long in-flight handlers may run after SIGTERM before their messages are released.
    pub shutdown_grace: Duration,
    /// `ORDERS_TABLE`: order state (process role) and shipments (logistics role).
    pub orders_table: String,
    /// `STORE_WRITES=batched`: the writes of messages handled together go out as one `TransactWriteItems`.
    pub batched_writes: bool,
    /// `IDEMPOTENCY_TABLE`: claims of handlers built on [`crate::idempotent::Idempotent`] (effects outside DynamoDB).
    pub idempotency_table: String,
    /// First retry delay of a failed message; doubles per receive.
    pub retry_base: Duration,
    /// Cap on the retry delay (SQS allows up to 12 h).
    pub retry_max: Duration,
    /// `LIVENESS_STALL_SECONDS` (liveness) and `HEALTH_FAILURE_SECONDS` (readiness), see [`crate::health`].
    pub health: Limits,
    /// `HTTP_HEADER_READ_TIMEOUT_SECONDS` (10) and `HTTP_MAX_CONNECTIONS` (1024) of the health port, as the API's.
    pub http_limits: HttpLimits,
    /// `ALLOWED_HOSTS`: names the live page answers to besides loopback.
    pub allowed_hosts: AllowedHosts,
    /// OpenTelemetry traces from the standard `OTEL_*` variables; `None` (off) without an OTLP endpoint. The service
    /// is `pedidos-worker-<role>` unless `OTEL_SERVICE_NAME` says otherwise.
    pub traces: Option<platform::otel::Settings>,
}

impl Config {
    /// # Errors
    /// A [`ConfigError`] naming the variable.
    pub fn from_env(env: Lookup<'_>) -> Result<Self, ConfigError> {
        // QUEUE_URL and AWS_SQS_QUEUE_URL are the names the seed's compose file and web-console worker used.
        let (_, queue) = required(env, &["SQS_QUEUE_URL", "QUEUE_URL", "AWS_SQS_QUEUE_URL"])?;
        let role = match env("WORKER_ROLE") {
            Some(value) => {
                Role::from_str(&value).map_err(|reason| ConfigError::Invalid { var: "WORKER_ROLE", value, reason })?
            }
            None => Role::infer_from_queue(&queue),
        };
        let retry_base = Duration::from_secs(in_range(env, "RETRY_BASE_SECONDS", 5, 0, 43_200)?);
        let retry_max = Duration::from_secs(in_range(env, "RETRY_MAX_SECONDS", 300, 0, 43_200)?);
        Ok(Self {
            common: Common::from_env(env, DEFAULT_PORT)?,
            queue,
            role,
            concurrency: in_range(env, "WORKER_CONCURRENCY", 10, 1, 1000)?,
            wait_time: Duration::from_secs(in_range(env, "WAIT_TIME_SECONDS", 20, 0, 20)?),
            shutdown_grace: Duration::from_secs(in_range(env, "SHUTDOWN_GRACE_SECONDS", 25, 0, 3600)?),
            orders_table: orders_table(env)?,
            idempotency_table: idempotency_table(env)?,
            batched_writes: match env("STORE_WRITES").as_deref().map(str::trim) {
                None | Some("single") => false,
                Some("batched") => true,
                Some(other) => {
                    return Err(ConfigError::Invalid {
                        var: "STORE_WRITES",
                        value: other.to_owned(),
                        reason: "expected `single` or `batched`".into(),
                    })
                }
            },
            retry_base,
            retry_max: retry_max.max(retry_base),
            health: Limits {
                // The longest quiet time of a live worker is one SQS or store call that times out (60 s with a 20 s
                // long poll) plus one backoff (30 s): the default is twice that.
                stall_after: Duration::from_secs(in_range(env, "LIVENESS_STALL_SECONDS", 180, 10, 86_400)?),
                unready_after: Duration::from_secs(in_range(env, "HEALTH_FAILURE_SECONDS", 60, 1, 3600)?),
            },
            http_limits: HttpLimits::from_env(env)?,
            allowed_hosts: AllowedHosts::from_env(env)?,
            traces: platform::otel::Settings::from_env(env, &format!("pedidos-worker-{}", role.as_str()))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        Config::from_env(&move |k: &str| map.get(k).cloned())
    }

    #[test]
    fn queue_is_required_under_any_seed_name() {
        let err = load(&[]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("SQS_QUEUE_URL") && err.contains("QUEUE_URL") && err.contains("AWS_SQS_QUEUE_URL"),
            "{err}"
        );
        let c = load(&[("AWS_SQS_QUEUE_URL", "http://x/1/ecomexpress-sqs-logistics")]);
        assert_eq!(c.map(|c| (c.role, c.concurrency, c.wait_time.as_secs())).ok(), Some((Role::Logistics, 10, 20)));
    }

    #[test]
    fn role_and_ranges_are_validated() {
        assert_eq!(load(&[("QUEUE_URL", "q-orders-process")]).map(|c| c.role).ok(), Some(Role::Process));
        let bad_role =
            load(&[("QUEUE_URL", "q"), ("WORKER_ROLE", "billing")]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(bad_role.starts_with("WORKER_ROLE="), "{bad_role}");
        let bad_wait =
            load(&[("QUEUE_URL", "q"), ("WAIT_TIME_SECONDS", "30")]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(bad_wait.starts_with("WAIT_TIME_SECONDS="), "{bad_wait}");
        assert!(load(&[("QUEUE_URL", "q"), ("WORKER_CONCURRENCY", "0")]).is_err());
    }
}

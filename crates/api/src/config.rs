//! `pedidos-api` configuration, loaded once at start-up.

use platform::config::{orders_table, parsed, required, Common, ConfigError, Lookup};

use crate::admin::AdminToken;
use crate::api_keys::ApiKeys;
use crate::console::order_view::TraceUrl;
use crate::http_server::{AllowedHosts, HttpLimits};

pub const DEFAULT_PORT: u16 = 8080;

/// The trace's `service.name` unless `OTEL_SERVICE_NAME` says otherwise.
pub const SERVICE_NAME: &str = "pedidos-api";

#[derive(Debug, Clone)]
pub struct Config {
    pub common: Common,
    /// Topic ARN, or a bare topic name resolved at start-up.
    pub topic: String,
    /// `ORDERS_TABLE`: the DynamoDB table the workers apply orders to, read here.
    pub orders_table: String,
    /// `ADMIN_TOKEN`: turns the admin surface (console, subscriptions) on. Unset: every admin route is a 404.
    pub admin_token: Option<AdminToken>,
    /// `ADMIN_PORT`: serve the admin surface on this port only, so a load balancer forwarding `PORT` never reaches it.
    /// Unset: the admin surface shares `PORT`.
    pub admin_port: Option<u16>,
    /// `API_KEYS` or `API_KEYS_FILE`: keys order writes must carry. Unset: writes are open (local runs, tests).
    pub api_keys: Option<ApiKeys>,
    /// `HTTP_HEADER_READ_TIMEOUT_SECONDS` (10): how long a client may take to send a request's headers, and also how
    /// long an idle keep-alive connection stays open (hyper times both alike). Behind a load balancer that reuses
    /// connections, set it above the balancer's idle timeout, or the balancer may send a request on a connection
    /// being closed (a 502): the AWS templates do. `HTTP_MAX_CONNECTIONS` (1024): connections served at once, per
    /// port. The body deadline (10 s for the whole body) is fixed.
    pub http_limits: HttpLimits,
    /// `ALLOWED_HOSTS`: host names the console answers to besides loopback (comma-separated, no port).
    pub allowed_hosts: AllowedHosts,
    /// `TRACE_URL_TEMPLATE`: where the console's order view links a trace id (`{traceId}` in an http(s) URL).
    pub trace_url: Option<TraceUrl>,
    /// OpenTelemetry traces from the standard `OTEL_*` variables; `None` (off) without an OTLP endpoint.
    pub traces: Option<platform::otel::Settings>,
}

impl Config {
    /// # Errors
    /// A [`ConfigError`] naming the variable.
    pub fn from_env(env: Lookup<'_>) -> Result<Self, ConfigError> {
        // TOPIC_ARN is what the seed's ECS task definition and compose file used.
        let (var, topic) = required(env, &["SNS_TOPIC_ARN", "TOPIC_ARN"])?;
        if topic.starts_with("arn:") && topic.split(':').count() != 6 {
            return Err(ConfigError::Invalid {
                var,
                value: topic,
                reason: "not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)".into(),
            });
        }
        let common = Common::from_env(env, DEFAULT_PORT)?;
        let admin_token = AdminToken::from_env(env)?;
        let admin_port = env("ADMIN_PORT").map(|_| parsed(env, "ADMIN_PORT", 0_u16)).transpose()?;
        if let Some(port) = admin_port {
            let invalid = |reason: &str| ConfigError::Invalid {
                var: "ADMIN_PORT",
                value: port.to_string(),
                reason: reason.to_owned(),
            };
            if port == 0 || port == common.port {
                return Err(invalid("must be a port other than 0 and PORT"));
            }
            // A port with nothing to serve is a deployment mistake worth stopping for (a secret not wired).
            if admin_token.is_none() {
                return Err(invalid("needs ADMIN_TOKEN: without it the admin surface is off"));
            }
        }
        Ok(Self {
            common,
            topic,
            orders_table: orders_table(env)?,
            admin_token,
            admin_port,
            api_keys: ApiKeys::from_env(env)?,
            http_limits: HttpLimits::from_env(env)?,
            allowed_hosts: AllowedHosts::from_env(env)?,
            trace_url: env("TRACE_URL_TEMPLATE")
                .filter(|text| !text.is_empty())
                .map(|text| TraceUrl::parse("TRACE_URL_TEMPLATE", &text))
                .transpose()?,
            traces: platform::otel::Settings::from_env(env, SERVICE_NAME)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, String> {
        let map: HashMap<String, String> = [("SNS_TOPIC_ARN", "orders"), ("PORT", "8080")]
            .iter()
            .chain(pairs)
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        Config::from_env(&move |k| map.get(k).cloned()).map_err(|e| e.to_string())
    }

    #[test]
    fn the_trace_url_template_is_optional_and_checked() {
        assert_eq!(config(&[]).map(|c| c.trace_url.is_none()), Ok(true));
        let c = config(&[("TRACE_URL_TEMPLATE", "http://localhost:16686/trace/{traceId}")]);
        assert_eq!(c.map(|c| c.trace_url.is_some()), Ok(true));
        let error = config(&[("TRACE_URL_TEMPLATE", "http://localhost:16686/trace/")]).err().unwrap_or_default();
        assert!(error.starts_with("TRACE_URL_TEMPLATE=") && error.contains("{traceId}"), "{error}");
    }

    #[test]
    fn admin_and_keys_are_off_by_default() {
        let c = config(&[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.admin_token.is_none() && c.admin_port.is_none() && c.api_keys.is_none());
    }

    #[test]
    fn admin_settings_are_checked_and_named() {
        let token = ("ADMIN_TOKEN", "0123456789abcdef0123456789abcdef");
        let c = config(&[token, ("ADMIN_PORT", "9090"), ("API_KEYS", "key-0123456789abcdef")])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.admin_port, Some(9090));
        assert!(c.api_keys.is_some_and(|k| k.accepts("key-0123456789abcdef")));
        // The token never appears in the configuration's Debug output (it is logged at start-up by nobody, but still).
        assert!(!format!("{:?}", config(&[token]).unwrap_or_else(|e| panic!("{e}"))).contains("0123456789abcdef"));
        let limits = config(&[("HTTP_MAX_CONNECTIONS", "7"), ("ALLOWED_HOSTS", "admin.internal")])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(limits.http_limits.max_connections, 7);
        assert!(limits.allowed_hosts.allows("admin.internal:9090"));
        for (pairs, expected) in [
            (vec![("ADMIN_TOKEN", "short")], "ADMIN_TOKEN=\"(redacted)\" is invalid"),
            (
                vec![("ADMIN_TOKEN", "0123456789abcdef0123456789abcde")],
                "ADMIN_TOKEN=\"(redacted)\" is invalid: needs at least 32",
            ),
            (vec![("HTTP_MAX_CONNECTIONS", "0")], "HTTP_MAX_CONNECTIONS=\"0\" is invalid"),
            (vec![("ALLOWED_HOSTS", "http://x")], "ALLOWED_HOSTS="),
            (vec![token, ("ADMIN_PORT", "nine")], "ADMIN_PORT=\"nine\" is invalid"),
            (
                vec![token, ("ADMIN_PORT", "8080")],
                "ADMIN_PORT=\"8080\" is invalid: must be a port other than 0 and PORT",
            ),
            (vec![("ADMIN_PORT", "9090")], "ADMIN_PORT=\"9090\" is invalid: needs ADMIN_TOKEN"),
            (vec![("API_KEYS", "tiny")], "API_KEYS=\"(redacted)\" is invalid"),
            (vec![("HTTP_HEADER_READ_TIMEOUT_SECONDS", "0")], "HTTP_HEADER_READ_TIMEOUT_SECONDS=\"0\" is invalid"),
        ] {
            let err = config(&pairs).err().unwrap_or_default();
            assert!(err.starts_with(expected), "{pairs:?}: {err}");
        }
    }
}

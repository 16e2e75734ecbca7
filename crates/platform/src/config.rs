//! Environment variables, read once at start-up.

use std::str::FromStr;

/// A configuration problem, always naming the variable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{var} is required but not set{hint}")]
    Missing { var: &'static str, hint: String },
    #[error("{var}={value:?} is invalid: {reason}")]
    Invalid { var: &'static str, value: String, reason: String },
}

/// Source of variables; a function so tests can pass a map instead of touching the process environment.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, ignoring empty values (compose files often set `VAR=` to mean "unset").
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The first of `names` that is set, with the name it was found under.
pub fn first_of(env: Lookup<'_>, names: &[&'static str]) -> Option<(&'static str, String)> {
    names.iter().find_map(|n| env(n).map(|v| (*n, v)))
}

/// A required variable that may go by several names (the first is the canonical one).
///
/// # Errors
/// [`ConfigError::Missing`] naming all accepted spellings.
pub fn required(env: Lookup<'_>, names: &[&'static str]) -> Result<(&'static str, String), ConfigError> {
    first_of(env, names).ok_or_else(|| ConfigError::Missing {
        var: names[0],
        hint: if names.len() > 1 { format!(" (also accepted: {})", names[1..].join(", ")) } else { String::new() },
    })
}

/// An optional variable parsed with `FromStr`, or `default`.
///
/// # Errors
/// [`ConfigError::Invalid`] when set but unparsable.
pub fn parsed<T: FromStr>(env: Lookup<'_>, var: &'static str, default: T) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match env(var) {
        None => Ok(default),
        Some(value) => {
            value.trim().parse().map_err(|e: T::Err| ConfigError::Invalid { var, value, reason: e.to_string() })
        }
    }
}

/// Like [`parsed`], then checked to be within `min..=max`.
///
/// # Errors
/// [`ConfigError::Invalid`] when unparsable or out of range.
pub fn in_range<T>(env: Lookup<'_>, var: &'static str, default: T, min: T, max: T) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + std::fmt::Display + Copy,
    T::Err: std::fmt::Display,
{
    let value = parsed(env, var, default)?;
    if value < min || value > max {
        return Err(ConfigError::Invalid {
            var,
            value: value.to_string(),
            reason: format!("must be between {min} and {max}"),
        });
    }
    Ok(value)
}

/// A DynamoDB table name from `var`, or `default`: 3 to 255 of `a-z A-Z 0-9 _ - .`.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the variable.
pub fn table_name(env: Lookup<'_>, var: &'static str, default: &str) -> Result<String, ConfigError> {
    let name = env(var).unwrap_or_else(|| default.to_owned());
    let valid = (3..=255).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if valid {
        Ok(name)
    } else {
        Err(ConfigError::Invalid {
            var,
            value: name,
            reason: "a DynamoDB table name has 3 to 255 letters, digits, '_', '-' or '.'".into(),
        })
    }
}

/// `ORDERS_TABLE`, defaulting to the topology's name.
///
/// # Errors
/// [`ConfigError::Invalid`] for a name DynamoDB would refuse.
pub fn orders_table(env: Lookup<'_>) -> Result<String, ConfigError> {
    table_name(env, "ORDERS_TABLE", store::schema::DEFAULT_ORDERS_TABLE)
}

/// `IDEMPOTENCY_TABLE`, defaulting to the topology's name.
///
/// # Errors
/// [`ConfigError::Invalid`] for a name DynamoDB would refuse.
pub fn idempotency_table(env: Lookup<'_>) -> Result<String, ConfigError> {
    table_name(env, "IDEMPOTENCY_TABLE", store::schema::DEFAULT_IDEMPOTENCY_TABLE)
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "pretty" | "text" => Ok(Self::Pretty),
            _ => Err("expected `json` or `pretty`".into()),
        }
    }
}

/// `AWS_REGION` (or `AWS_DEFAULT_REGION`), `us-east-1` when unset.
///
/// # Errors
/// [`ConfigError::Invalid`] for something that is not a region name: a typo would otherwise surface as an opaque DNS
/// or signing error on the first call.
pub fn region(env: Lookup<'_>) -> Result<String, ConfigError> {
    match first_of(env, &["AWS_REGION", "AWS_DEFAULT_REGION"]) {
        None => Ok("us-east-1".to_owned()),
        Some((var, value)) => {
            let region = value.trim().to_owned();
            let valid = region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && region.bytes().any(|b| b.is_ascii_lowercase());
            if valid {
                Ok(region)
            } else {
                Err(ConfigError::Invalid { var, value, reason: "expected a region name such as us-east-1".into() })
            }
        }
    }
}

/// `AWS_ENDPOINT_URL`, checked (the SDK reads the variable itself).
///
/// # Errors
/// [`ConfigError::Invalid`] when it is not an http(s) URL.
pub fn endpoint_url(env: Lookup<'_>) -> Result<Option<String>, ConfigError> {
    match env("AWS_ENDPOINT_URL") {
        Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => Err(ConfigError::Invalid {
            var: "AWS_ENDPOINT_URL",
            value: url,
            reason: "must start with http:// or https://".into(),
        }),
        other => Ok(other),
    }
}

/// Settings every binary has: region, port, log format.
#[derive(Debug, Clone)]
pub struct Common {
    pub region: String,
    /// Interface to listen on: `0.0.0.0` in containers; tests and the local run use `127.0.0.1`.
    pub bind_addr: std::net::IpAddr,
    pub port: u16,
    pub log_format: LogFormat,
    /// `AWS_ENDPOINT_URL`, only for logging: the SDK reads the variable itself.
    pub endpoint_url: Option<String>,
}

impl Common {
    /// # Errors
    /// A [`ConfigError`] naming the variable.
    pub fn from_env(env: Lookup<'_>, default_port: u16) -> Result<Self, ConfigError> {
        use std::io::IsTerminal;
        // JSON for containers and log shippers; pretty when a person is watching a terminal.
        let default_format = if std::io::stdout().is_terminal() { LogFormat::Pretty } else { LogFormat::Json };
        let endpoint_url = endpoint_url(env)?;
        Ok(Self {
            region: region(env)?,
            bind_addr: parsed(env, "BIND_ADDR", std::net::IpAddr::from([0, 0, 0, 0]))?,
            port: parsed(env, "PORT", default_port)?,
            log_format: parsed(env, "LOG_FORMAT", default_format)?,
            endpoint_url,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn required_names_every_spelling() {
        let e = env(&[]);
        let err = required(&e, &["SNS_TOPIC_ARN", "TOPIC_ARN"]).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(err, "SNS_TOPIC_ARN is required but not set (also accepted: TOPIC_ARN)");
        let e = env(&[("TOPIC_ARN", "x")]);
        assert_eq!(required(&e, &["SNS_TOPIC_ARN", "TOPIC_ARN"]), Ok(("TOPIC_ARN", "x".into())));
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let e = env(&[("PORT", "eighty"), ("LOG_FORMAT", "xml"), ("N", "0")]);
        assert!(Common::from_env(&e, 8080)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
            .starts_with("PORT=\"eighty\""));
        let e2 = env(&[("LOG_FORMAT", "xml")]);
        assert!(Common::from_env(&e2, 8080)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
            .starts_with("LOG_FORMAT="));
        assert!(in_range(&e, "N", 5u32, 1, 10).is_err());
    }

    #[test]
    fn table_names_default_and_are_checked() {
        assert_eq!(orders_table(&env(&[])).ok().as_deref(), Some("ecomexpress-orders"));
        let err = orders_table(&env(&[("ORDERS_TABLE", "no spaces")])).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.starts_with("ORDERS_TABLE=")));
        assert!(idempotency_table(&env(&[("IDEMPOTENCY_TABLE", "ab")])).is_err());
    }

    #[test]
    fn defaults() {
        let e = env(&[]);
        let c = Common::from_env(&e, 8081).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.region.as_str(), c.port), ("us-east-1", 8081));
    }
}

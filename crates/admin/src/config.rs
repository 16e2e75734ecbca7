//! The environment `pedidos-admin` reads, like the other binaries: region and endpoint. Credentials come from the
//! SDK's standard chain.

use platform::config::{ConfigError, Lookup};

/// Settings read once at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `AWS_REGION` (or `AWS_DEFAULT_REGION`), `us-east-1` when unset.
    pub region: String,
    /// `AWS_ENDPOINT_URL`, checked here; the SDK reads the variable itself.
    pub endpoint_url: Option<String>,
}

impl Config {
    /// # Errors
    /// A [`ConfigError`] naming the variable.
    pub fn from_env(env: Lookup<'_>) -> Result<Self, ConfigError> {
        Ok(Self { region: platform::config::region(env)?, endpoint_url: platform::config::endpoint_url(env)? })
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
    fn defaults_to_us_east_1_without_an_endpoint() {
        assert_eq!(Config::from_env(&env(&[])), Ok(Config { region: "us-east-1".into(), endpoint_url: None }));
    }

    #[test]
    fn errors_name_the_variable_they_came_from() {
        let message = |pairs: &[(&str, &str)]| Config::from_env(&env(pairs)).err().map(|e| e.to_string());
        assert!(message(&[("AWS_REGION", "US East")]).is_some_and(|m| m.starts_with("AWS_REGION=")));
        assert!(message(&[("AWS_DEFAULT_REGION", "??")]).is_some_and(|m| m.starts_with("AWS_DEFAULT_REGION=")));
        assert!(message(&[("AWS_ENDPOINT_URL", "127.0.0.1:4566")]).is_some_and(|m| m.starts_with("AWS_ENDPOINT_URL=")));
        assert_eq!(message(&[("AWS_REGION", "eu-west-1"), ("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")]), None);
    }
}

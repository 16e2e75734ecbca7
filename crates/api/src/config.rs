//! `pedidos-api` configuration, loaded once at start-up.

use std::net::{IpAddr, Ipv4Addr};

use platform::config::{parsed, required, Common, ConfigError, Lookup};

pub const DEFAULT_PORT: u16 = 8080;
/// All interfaces, as containers need; tests and the local run set `BIND_ADDR=127.0.0.1`.
pub const DEFAULT_BIND_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

#[derive(Debug, Clone)]
pub struct Config {
    pub common: Common,
    /// Topic ARN, or a bare topic name resolved at start-up.
    pub topic: String,
    /// `BIND_ADDR`: the address to listen on.
    pub bind_addr: IpAddr,
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
        Ok(Self {
            common: Common::from_env(env, DEFAULT_PORT)?,
            topic,
            bind_addr: parsed(env, "BIND_ADDR", DEFAULT_BIND_ADDR)?,
        })
    }
}

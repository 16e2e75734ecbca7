//! `pedidos-api` configuration, loaded once at start-up.

use platform::config::{orders_table, required, Common, ConfigError, Lookup};

pub const DEFAULT_PORT: u16 = 8080;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: Common,
    /// Topic ARN, or a bare topic name resolved at start-up.
    pub topic: String,
    /// `ORDERS_TABLE`: the DynamoDB table the workers apply orders to, read here.
    pub orders_table: String,
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
        Ok(Self { common: Common::from_env(env, DEFAULT_PORT)?, topic, orders_table: orders_table(env)? })
    }
}

//! Topic names and topic configs: what Kafka accepts, and how overrides map onto [`LogConfig`].
//! Moved here from the node so that the controller validates CreateTopics, AlterConfigs and
//! auto-creation with the same rules the broker applies.

use std::collections::BTreeMap;

use crate::log::LogConfig;
use crate::ErrorCode;

/// Kafka's limit on topic name length.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Kafka's topic name rules: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("topic name {name:?} is not allowed"));
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(format!(
            "topic name is {} characters, more than {TOPIC_NAME_BYTES_MAX}",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("topic name {name:?} contains {bad:?}; allowed are ASCII letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

/// Topic configs Sluice understands, with how each maps onto [`LogConfig`]. Sorted.
pub const TOPIC_CONFIG_NAMES: &[&str] = &[
    "cleanup.policy",
    "index.interval.bytes",
    "max.message.bytes",
    "message.timestamp.type",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.ms",
];

/// Applies topic overrides to the broker defaults. Errors name the config and map to
/// INVALID_CONFIG.
pub fn topic_log_config(
    defaults: &LogConfig,
    overrides: &BTreeMap<String, String>,
) -> Result<LogConfig, (ErrorCode, String)> {
    let mut config = defaults.clone();
    for (name, value) in overrides {
        let bad = |what: &str| {
            (
                ErrorCode::InvalidConfig,
                format!("invalid value {value:?} for {name}: {what}"),
            )
        };
        let int = || value.parse::<i64>().map_err(|_| bad("not an integer"));
        match name.as_str() {
            "retention.ms" => config.retention_ms = int()?,
            "retention.bytes" => config.retention_bytes = int()?,
            "segment.bytes" => {
                config.segment_bytes_max = u64::try_from(int()?).map_err(|_| bad("negative"))?
            }
            "segment.ms" => {
                config.segment_ms = u64::try_from(int()?).map_err(|_| bad("negative"))?
            }
            "max.message.bytes" => {
                config.message_bytes_max = u32::try_from(int()?).map_err(|_| bad("out of range"))?
            }
            "index.interval.bytes" => {
                config.index_interval_bytes =
                    u32::try_from(int()?).map_err(|_| bad("out of range"))?
            }
            "cleanup.policy" if value == "delete" => {}
            "cleanup.policy" => {
                return Err(bad(
                    "only \"delete\" is supported (compaction is not implemented yet)",
                ))
            }
            "message.timestamp.type" if value == "CreateTime" => {}
            "message.timestamp.type" => return Err(bad("only CreateTime is supported")),
            _ => {
                return Err((
                    ErrorCode::InvalidConfig,
                    format!("unknown topic config {name:?}"),
                ))
            }
        }
    }
    config
        .validate()
        .map_err(|e| (ErrorCode::InvalidConfig, e))?;
    Ok(config)
}

/// The effective value of every supported topic config, and whether it is a topic override.
pub fn describe_topic_config(
    defaults: &LogConfig,
    overrides: &BTreeMap<String, String>,
) -> Vec<(&'static str, String, bool)> {
    let effective = topic_log_config(defaults, overrides).unwrap_or_else(|_| defaults.clone());
    TOPIC_CONFIG_NAMES
        .iter()
        .map(|name| {
            let value = match *name {
                "cleanup.policy" => "delete".to_string(),
                "index.interval.bytes" => effective.index_interval_bytes.to_string(),
                "max.message.bytes" => effective.message_bytes_max.to_string(),
                "message.timestamp.type" => "CreateTime".to_string(),
                "retention.bytes" => effective.retention_bytes.to_string(),
                "retention.ms" => effective.retention_ms.to_string(),
                "segment.bytes" => effective.segment_bytes_max.to_string(),
                "segment.ms" => effective.segment_ms.to_string(),
                _ => unreachable!("listed above"),
            };
            (*name, value, overrides.contains_key(*name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_eu-2").is_ok());
        for bad in ["", ".", "..", "with space", "slash/x", "ü"] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_topic_name(&"a".repeat(249)).is_ok());
        assert!(validate_topic_name(&"a".repeat(250)).is_err());
    }

    #[test]
    fn config_names_are_sorted() {
        assert!(TOPIC_CONFIG_NAMES.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn overrides_apply_and_bad_ones_are_invalid_config() {
        let mut o = BTreeMap::new();
        o.insert("retention.ms".to_string(), "1000".to_string());
        assert_eq!(
            topic_log_config(&LogConfig::default(), &o)
                .unwrap()
                .retention_ms,
            1000
        );
        o.insert("segment.bytes".to_string(), "ten".to_string());
        assert_eq!(
            topic_log_config(&LogConfig::default(), &o).unwrap_err().0,
            ErrorCode::InvalidConfig
        );
        let mut unknown = BTreeMap::new();
        unknown.insert("nope".to_string(), "1".to_string());
        assert!(topic_log_config(&LogConfig::default(), &unknown).is_err());
    }
}

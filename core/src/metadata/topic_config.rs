//! Topic names and topic configs: what Kafka accepts, and how overrides map onto [`LogConfig`].
//! Moved here from the node so that the controller validates CreateTopics, AlterConfigs and
//! auto-creation with the same rules the broker applies.

use std::collections::BTreeMap;

use crate::batch::{CompressionType, TimestampType};
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
    "compression.gzip.level",
    "compression.lz4.level",
    "compression.type",
    "compression.zstd.level",
    "delete.retention.ms",
    "flush.ms",
    "index.interval.bytes",
    "max.message.bytes",
    "message.timestamp.after.max.ms",
    "message.timestamp.before.max.ms",
    "message.timestamp.type",
    "min.cleanable.dirty.ratio",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.ms",
];

/// Topic configs Kafka 4.0 removed and ignores when a topic is created or altered (KIP-724:
/// `message.format.version`, a no-op since Kafka 3.0; Sluice writes only v2 batches): accepted
/// in CreateTopics and AlterConfigs, never stored, not described.
pub const IGNORED_TOPIC_CONFIG_NAMES: &[&str] = &["message.format.version"];

pub fn is_ignored_topic_config(name: &str) -> bool {
    IGNORED_TOPIC_CONFIG_NAMES.contains(&name)
}

/// Kafka's default of `flush.ms` (`Long.MAX_VALUE`: no periodic flush).
const FLUSH_NEVER: i64 = i64::MAX;

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
        let non_negative = || int().and_then(|v| if v < 0 { Err(bad("negative")) } else { Ok(v) });
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
            "cleanup.policy" => {
                config.delete = false;
                config.compact = false;
                for policy in value.split(',').map(str::trim) {
                    match policy {
                        "delete" => config.delete = true,
                        "compact" => config.compact = true,
                        _ => return Err(bad("expected delete, compact, or compact,delete")),
                    }
                }
            }
            "delete.retention.ms" => config.delete_retention_ms = non_negative()?,
            // Kafka's periodic flush: accepted (with Kafka's bound) and shown, with no effect.
            // Sluice syncs every write right after it (a group commit), not on a timer, so the
            // data is on disk sooner than any interval would put it there. (`flush.messages`,
            // which in Kafka makes an acks=1 answer wait for the leader's fsync, is not
            // accepted: Sluice's acks=1 answers before that fsync.)
            "flush.ms" => {
                non_negative()?;
            }
            "min.cleanable.dirty.ratio" => {
                let ratio = value
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| bad("not a number in [0, 1]"))?;
                config.min_cleanable_dirty_ratio_bp = (ratio * 10_000.0).round() as u32;
            }
            "message.timestamp.type" => {
                config.timestamp_type = match value.as_str() {
                    "CreateTime" => TimestampType::CreateTime,
                    "LogAppendTime" => TimestampType::LogAppendTime,
                    _ => return Err(bad("expected CreateTime or LogAppendTime")),
                }
            }
            "message.timestamp.before.max.ms" => config.timestamp_before_max_ms = non_negative()?,
            "message.timestamp.after.max.ms" => config.timestamp_after_max_ms = non_negative()?,
            "compression.type" => {
                config.compression_type = CompressionType::parse(value).ok_or_else(|| {
                    bad(&format!(
                        "expected one of {}",
                        CompressionType::NAMES.join(", ")
                    ))
                })?
            }
            "compression.gzip.level" | "compression.lz4.level" | "compression.zstd.level" => {
                let level = i32::try_from(int()?).map_err(|_| bad("out of range"))?;
                let levels = &mut config.compression_levels;
                match name.as_str() {
                    "compression.gzip.level" => levels.gzip = level,
                    "compression.lz4.level" => levels.lz4 = level,
                    _ => levels.zstd = level,
                }
                levels.validate().map_err(|e| bad(&e))?;
            }
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

/// `cleanup.policy` as Kafka spells it.
pub fn cleanup_policy(config: &LogConfig) -> &'static str {
    match (config.compact, config.delete) {
        (true, true) => "compact,delete",
        (true, false) => "compact",
        _ => "delete",
    }
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
                "cleanup.policy" => cleanup_policy(&effective).to_string(),
                "compression.type" => effective.compression_type.name().to_string(),
                "compression.gzip.level" => effective.compression_levels.gzip.to_string(),
                "compression.lz4.level" => effective.compression_levels.lz4.to_string(),
                "compression.zstd.level" => effective.compression_levels.zstd.to_string(),
                "delete.retention.ms" => effective.delete_retention_ms.to_string(),
                "flush.ms" => overrides
                    .get(*name)
                    .cloned()
                    .unwrap_or_else(|| FLUSH_NEVER.to_string()),
                "min.cleanable.dirty.ratio" => {
                    (f64::from(effective.min_cleanable_dirty_ratio_bp) / 10_000.0).to_string()
                }
                "index.interval.bytes" => effective.index_interval_bytes.to_string(),
                "max.message.bytes" => effective.message_bytes_max.to_string(),
                "message.timestamp.type" => match effective.timestamp_type {
                    TimestampType::CreateTime => "CreateTime".to_string(),
                    TimestampType::LogAppendTime => "LogAppendTime".to_string(),
                },
                "message.timestamp.before.max.ms" => effective.timestamp_before_max_ms.to_string(),
                "message.timestamp.after.max.ms" => effective.timestamp_after_max_ms.to_string(),
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

    /// `pairs` as topic overrides of the defaults: the resulting config, and the overrides.
    fn set(
        pairs: &[(&str, &str)],
    ) -> (
        Result<LogConfig, (ErrorCode, String)>,
        BTreeMap<String, String>,
    ) {
        let o: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        (topic_log_config(&LogConfig::default(), &o), o)
    }

    #[test]
    fn timestamp_settings_parse_and_describe() {
        let defaults = LogConfig::default();
        assert_eq!(defaults.timestamp_type, TimestampType::CreateTime);
        assert_eq!(
            defaults.timestamp_after_max_ms, 3_600_000,
            "Kafka 4's default"
        );
        assert_eq!(defaults.timestamp_before_max_ms, i64::MAX);
        let (c, o) = set(&[
            ("message.timestamp.type", "LogAppendTime"),
            ("message.timestamp.before.max.ms", "1000"),
            ("message.timestamp.after.max.ms", "0"),
        ]);
        let c = c.unwrap();
        assert_eq!(c.timestamp_type, TimestampType::LogAppendTime);
        assert_eq!(
            (c.timestamp_before_max_ms, c.timestamp_after_max_ms),
            (1000, 0)
        );
        let described = describe_topic_config(&defaults, &o);
        for (name, value) in [
            ("message.timestamp.type", "LogAppendTime"),
            ("message.timestamp.before.max.ms", "1000"),
            ("message.timestamp.after.max.ms", "0"),
        ] {
            assert!(
                described.contains(&(name, value.to_string(), true)),
                "{name}"
            );
        }
        for bad in [
            ("message.timestamp.type", "WallTime"),
            ("message.timestamp.after.max.ms", "-1"),
            ("message.timestamp.before.max.ms", "soon"),
        ] {
            assert_eq!(
                set(&[bad]).0.unwrap_err().0,
                ErrorCode::InvalidConfig,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn cleanup_policy_and_cleaner_settings_parse_and_describe() {
        let set = |pairs: &[(&str, &str)]| {
            let o: BTreeMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            topic_log_config(&LogConfig::default(), &o)
        };
        let c = set(&[("cleanup.policy", "compact")]).unwrap();
        assert!(c.compact && !c.delete);
        let c = set(&[("cleanup.policy", "delete, compact")]).unwrap();
        assert!(c.compact && c.delete);
        assert_eq!(cleanup_policy(&c), "compact,delete");
        for bad in ["", "shred", "compact,"] {
            assert!(set(&[("cleanup.policy", bad)]).is_err(), "{bad:?} accepted");
        }
        let c = set(&[
            ("delete.retention.ms", "60000"),
            ("min.cleanable.dirty.ratio", "0.25"),
        ])
        .unwrap();
        assert_eq!(
            (c.delete_retention_ms, c.min_cleanable_dirty_ratio_bp),
            (60_000, 2_500)
        );
        assert!(set(&[("delete.retention.ms", "-1")]).is_err());
        assert!(set(&[("min.cleanable.dirty.ratio", "x")]).is_err());
        let o: BTreeMap<String, String> =
            [("cleanup.policy".to_string(), "compact".to_string())].into();
        let described = describe_topic_config(&LogConfig::default(), &o);
        assert!(described.contains(&("cleanup.policy", "compact".to_string(), true)));
        assert!(described.contains(&("min.cleanable.dirty.ratio", "0.5".to_string(), false)));
    }

    #[test]
    fn compression_type_and_levels_parse_describe_and_refuse_bad_values() {
        use crate::batch::{Codec, CompressionLevels};
        let defaults = LogConfig::default();
        assert_eq!(defaults.compression_type, CompressionType::Producer);
        assert_eq!(defaults.compression_levels, CompressionLevels::default());
        let described = describe_topic_config(&defaults, &BTreeMap::new());
        for (name, value) in [
            ("compression.type", "producer"),
            ("compression.gzip.level", "-1"),
            ("compression.lz4.level", "9"),
            ("compression.zstd.level", "3"),
        ] {
            assert!(
                described.contains(&(name, value.to_string(), false)),
                "{name}: Kafka's default, not an override"
            );
        }
        for (value, want) in [
            ("uncompressed", CompressionType::Codec(Codec::None)),
            ("gzip", CompressionType::Codec(Codec::Gzip)),
            ("snappy", CompressionType::Codec(Codec::Snappy)),
            ("lz4", CompressionType::Codec(Codec::Lz4)),
            ("zstd", CompressionType::Codec(Codec::Zstd)),
            ("producer", CompressionType::Producer),
        ] {
            let (c, o) = set(&[("compression.type", value)]);
            assert_eq!(c.unwrap().compression_type, want, "{value}");
            let described = describe_topic_config(&defaults, &o);
            assert!(described.contains(&("compression.type", value.to_string(), true)));
        }
        let (c, o) = set(&[
            ("compression.type", "zstd"),
            ("compression.zstd.level", "-7"),
            ("compression.gzip.level", "9"),
            ("compression.lz4.level", "17"),
        ]);
        let c = c.unwrap();
        assert_eq!(
            (
                c.compression_levels.gzip,
                c.compression_levels.lz4,
                c.compression_levels.zstd
            ),
            (9, 17, -7)
        );
        assert!(describe_topic_config(&defaults, &o).contains(&(
            "compression.zstd.level",
            "-7".to_string(),
            true
        )));
        // A broker default shows as the effective value, not as an override.
        let gzip_broker = LogConfig {
            compression_type: CompressionType::Codec(Codec::Gzip),
            ..LogConfig::default()
        };
        assert!(
            describe_topic_config(&gzip_broker, &BTreeMap::new()).contains(&(
                "compression.type",
                "gzip".to_string(),
                false
            ))
        );
        for (name, value) in [
            ("compression.type", "none"),
            ("compression.type", "GZIP"),
            ("compression.type", ""),
            ("compression.gzip.level", "0"),
            ("compression.gzip.level", "10"),
            ("compression.lz4.level", "18"),
            ("compression.lz4.level", "fast"),
            ("compression.zstd.level", "23"),
            ("compression.zstd.level", "-131073"),
            ("compression.zstd.level", "99999999999"),
        ] {
            let (code, message) = set(&[(name, value)]).0.unwrap_err();
            assert_eq!(code, ErrorCode::InvalidConfig, "{name}={value}");
            assert!(message.contains(name), "{name}={value}: {message}");
        }
    }
}

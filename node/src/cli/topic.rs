//! `sluice topic list|describe|create|delete|alter|alter-config`.

use std::collections::BTreeMap;
use std::io::Write;
use std::ops::RangeInclusive;

use kafka_protocol::messages::alter_configs_request::{self, AlterConfigsRequest};
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsRequest, CreatePartitionsTopic,
};
use kafka_protocol::messages::create_topics_request::{
    CreatableTopic, CreatableTopicConfig, CreateTopicsRequest,
};
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsRequest, DeleteRecordsTopic,
};
use kafka_protocol::messages::delete_topics_request::{DeleteTopicState, DeleteTopicsRequest};
use kafka_protocol::messages::describe_configs_request::{
    DescribeConfigsRequest, DescribeConfigsResource,
};
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig, IncrementalAlterConfigsRequest,
};
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::{ApiKey, BrokerId};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::admin::{
    backoff, str_bytes, topic_name, Admin, LEADER_NOT_AVAILABLE, NOT_CONTROLLER,
    NOT_LEADER_OR_FOLLOWER, RETRIES_MAX, UNKNOWN_TOPIC_OR_PARTITION, UNSUPPORTED_VERSION,
};
use super::table::Table;
use super::{warn, CliError};

const CREATE_TOPICS_VERSIONS: RangeInclusive<i16> = 2..=7;
const DELETE_TOPICS_VERSIONS: RangeInclusive<i16> = 1..=6;
const CREATE_PARTITIONS_VERSIONS: RangeInclusive<i16> = 0..=3;
const DESCRIBE_CONFIGS_VERSIONS: RangeInclusive<i16> = 1..=4;
const INCREMENTAL_ALTER_CONFIGS_VERSIONS: RangeInclusive<i16> = 0..=1;
const ALTER_CONFIGS_VERSIONS: RangeInclusive<i16> = 0..=2;
const DELETE_RECORDS_VERSIONS: RangeInclusive<i16> = 0..=2;

const TOPIC_ALREADY_EXISTS: i16 = sluice_core::ErrorCode::TopicAlreadyExists as i16;
const RESOURCE_TOPIC: i8 = 2;
/// DescribeConfigs' config sources: set on the topic, and Kafka's built-in default.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DEFAULT: i8 = 5;
/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

/// Kafka's internal topics, which `list` and `describe` leave out unless asked (Metadata's
/// `is_internal` says so too, where a broker sets it).
const INTERNAL_TOPICS: &[&str] = &["__consumer_offsets", "__transaction_state"];

/// What `topic create` asks for; -1 leaves a count to the broker.
pub struct NewTopic {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    pub configs: Vec<(String, String)>,
}

fn name_of(t: &MetadataResponseTopic) -> String {
    t.name
        .as_ref()
        .map_or_else(String::new, |n| n.0.to_string())
}

fn is_internal(t: &MetadataResponseTopic) -> bool {
    t.is_internal || INTERNAL_TOPICS.contains(&name_of(t).as_str())
}

fn ids(ids: &[BrokerId]) -> String {
    ids.iter()
        .map(|b| b.0.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The broker's message, or ours if it sent none.
fn message_or(message: &Option<StrBytes>, ours: String) -> String {
    match message {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => ours,
    }
}

pub async fn list(
    admin: &mut Admin,
    include_internal: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let metadata = admin.metadata(None).await?;
    let mut names: Vec<String> = metadata
        .topics
        .iter()
        .filter(|t| include_internal || !is_internal(t))
        .map(name_of)
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    for name in names {
        writeln!(out, "{name}")?;
    }
    Ok(())
}

pub async fn describe(
    admin: &mut Admin,
    topics: &[String],
    include_internal: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let metadata = if topics.is_empty() {
        admin.metadata(None).await?
    } else {
        admin.metadata(Some(topics)).await?
    };
    let mut described: Vec<&MetadataResponseTopic> = Vec::new();
    if topics.is_empty() {
        described.extend(
            metadata
                .topics
                .iter()
                .filter(|t| include_internal || !is_internal(t)),
        );
        described.sort_by_key(|t| name_of(t));
    } else {
        for name in topics {
            let Some(t) = metadata.topics.iter().find(|t| &name_of(t) == name) else {
                return Err(CliError::failed(format!(
                    "the broker did not answer for topic {name:?}"
                )));
            };
            if t.error_code == UNKNOWN_TOPIC_OR_PARTITION {
                return Err(CliError::kafka(
                    t.error_code,
                    format!("topic {name:?} does not exist"),
                ));
            }
            if t.error_code != 0 {
                return Err(CliError::kafka(t.error_code, format!("topic {name:?}")));
            }
            described.push(t);
        }
    }
    let names: Vec<String> = described.iter().map(|t| name_of(t)).collect();
    let configs = topic_configs(admin, &names).await?;

    let mut summary = Table::new(&[
        "TOPIC",
        "TOPIC-ID",
        "PARTITIONS",
        "REPLICATION-FACTOR",
        "CONFIGS",
    ]);
    let mut partitions =
        Table::new(&["TOPIC", "PARTITION", "LEADER", "REPLICAS", "ISR", "OFFLINE"]);
    for t in &described {
        let name = name_of(t);
        let overrides = match configs.get(&name) {
            Some(Ok(entries)) => entries
                .iter()
                .filter(|(_, _, source)| *source != SOURCE_DEFAULT)
                .map(|(k, v, _)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
            Some(Err(e)) => {
                warn(format!("configs of topic {name:?}: {e}"));
                "?".to_string()
            }
            None => "?".to_string(),
        };
        let mut ps: Vec<_> = t.partitions.iter().collect();
        ps.sort_by_key(|p| p.partition_index);
        let replication = ps.first().map_or(0, |p| p.replica_nodes.len());
        summary.row(vec![
            name.clone(),
            if t.topic_id == Uuid::nil() {
                String::new()
            } else {
                t.topic_id.to_string()
            },
            ps.len().to_string(),
            replication.to_string(),
            overrides,
        ]);
        for p in ps {
            partitions.row(vec![
                name.clone(),
                p.partition_index.to_string(),
                if p.leader_id.0 >= 0 {
                    p.leader_id.0.to_string()
                } else {
                    "none".to_string()
                },
                ids(&p.replica_nodes),
                ids(&p.isr_nodes),
                ids(&p.offline_replicas),
            ]);
        }
    }
    summary.write(out)?;
    writeln!(out)?;
    partitions.write(out)?;
    Ok(())
}

/// Each topic's configs (name, value, source) per DescribeConfigs, from any broker.
async fn topic_configs(
    admin: &mut Admin,
    names: &[String],
) -> Result<BTreeMap<String, Result<Vec<(String, String, i8)>, CliError>>, CliError> {
    if names.is_empty() {
        return Ok(BTreeMap::new());
    }
    let addr = admin.any_broker().await?;
    let request = DescribeConfigsRequest::default().with_resources(
        names
            .iter()
            .map(|n| {
                DescribeConfigsResource::default()
                    .with_resource_type(RESOURCE_TOPIC)
                    .with_resource_name(str_bytes(n))
                    .with_configuration_keys(None)
            })
            .collect(),
    );
    let (response, _) = admin
        .call(&addr, DESCRIBE_CONFIGS_VERSIONS, |_| request)
        .await?;
    Ok(response
        .results
        .into_iter()
        .map(|r| {
            let name = r.resource_name.to_string();
            let entries = if r.error_code != 0 {
                Err(CliError::kafka(
                    r.error_code,
                    message_or(&r.error_message, format!("configs of topic {name:?}")),
                ))
            } else {
                let mut entries: Vec<(String, String, i8)> = r
                    .configs
                    .into_iter()
                    .map(|c| {
                        let value = if c.is_sensitive {
                            "(sensitive)".to_string()
                        } else {
                            c.value.map_or_else(String::new, |v| v.to_string())
                        };
                        (c.name.to_string(), value, c.config_source)
                    })
                    .collect();
                entries.sort();
                Ok(entries)
            };
            (name, entries)
        })
        .collect())
}

pub async fn create(
    admin: &mut Admin,
    spec: &NewTopic,
    if_not_exists: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let timeout_ms = admin.broker_timeout_ms();
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(timeout_ms)
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name(&spec.name))
            .with_num_partitions(spec.partitions)
            .with_replication_factor(spec.replication_factor)
            .with_configs(
                spec.configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(str_bytes(k))
                            .with_value(Some(str_bytes(v)))
                    })
                    .collect(),
            )]);
    let (response, _, _) = admin
        .controller_call(
            CREATE_TOPICS_VERSIONS,
            |_| request.clone(),
            |r| r.topics.iter().any(|t| t.error_code == NOT_CONTROLLER),
        )
        .await?;
    let Some(result) = response.topics.first() else {
        return Err(CliError::failed("the controller answered for no topic"));
    };
    match result.error_code {
        0 => writeln!(out, "Created topic {}.", spec.name)?,
        TOPIC_ALREADY_EXISTS if if_not_exists => {}
        code => {
            let ours = if code == TOPIC_ALREADY_EXISTS {
                format!("topic {:?} already exists", spec.name)
            } else {
                format!("creating topic {:?}", spec.name)
            };
            return Err(CliError::kafka(
                code,
                message_or(&result.error_message, ours),
            ));
        }
    }
    Ok(())
}

pub async fn delete(
    admin: &mut Admin,
    name: &str,
    if_exists: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let timeout_ms = admin.broker_timeout_ms();
    let (response, _, _) = admin
        .controller_call(
            DELETE_TOPICS_VERSIONS,
            |v| {
                let request = DeleteTopicsRequest::default().with_timeout_ms(timeout_ms);
                if v >= 6 {
                    request.with_topics(vec![DeleteTopicState::default()
                        .with_name(Some(topic_name(name)))
                        .with_topic_id(Uuid::nil())])
                } else {
                    request.with_topic_names(vec![topic_name(name)])
                }
            },
            |r| r.responses.iter().any(|t| t.error_code == NOT_CONTROLLER),
        )
        .await?;
    let Some(result) = response.responses.first() else {
        return Err(CliError::failed("the controller answered for no topic"));
    };
    match result.error_code {
        0 => writeln!(out, "Deleted topic {name}.")?,
        UNKNOWN_TOPIC_OR_PARTITION if if_exists => {}
        UNKNOWN_TOPIC_OR_PARTITION => {
            return Err(CliError::kafka(
                UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic {name:?} does not exist"),
            ))
        }
        code => {
            return Err(CliError::kafka(
                code,
                message_or(&result.error_message, format!("deleting topic {name:?}")),
            ))
        }
    }
    Ok(())
}

/// Moves the start of `name`-`partition` to `offset` (-1: its high watermark): DeleteRecords at
/// the partition's leader, asked again while leadership moves. Prints the new low watermark.
pub async fn delete_records(
    admin: &mut Admin,
    name: &str,
    partition: i32,
    offset: i64,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let timeout_ms = admin.broker_timeout_ms();
    let request = DeleteRecordsRequest::default()
        .with_timeout_ms(timeout_ms)
        .with_topics(vec![DeleteRecordsTopic::default()
            .with_name(topic_name(name))
            .with_partitions(vec![DeleteRecordsPartition::default()
                .with_partition_index(partition)
                .with_offset(offset)])]);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let moving = |why: String| CliError::kafka(LEADER_NOT_AVAILABLE, why);
        let result = match admin.partition_leader(name, partition).await? {
            None => Err(moving(format!("{name}-{partition} has no leader"))),
            Some(addr) => {
                let (response, _) = admin
                    .call(&addr, DELETE_RECORDS_VERSIONS, |_| request.clone())
                    .await?;
                let answer = response
                    .topics
                    .first()
                    .and_then(|t| t.partitions.first())
                    .map(|p| (p.error_code, p.low_watermark));
                match answer {
                    Some((0, low_watermark)) => Ok(low_watermark),
                    Some((code @ (NOT_LEADER_OR_FOLLOWER | LEADER_NOT_AVAILABLE), _)) => Err(
                        CliError::kafka(code, format!("{name}-{partition}: leadership moved")),
                    ),
                    Some((code, _)) => {
                        return Err(CliError::kafka(
                            code,
                            format!("deleting records of {name}-{partition} below {offset}"),
                        ))
                    }
                    None => return Err(CliError::failed("the leader answered for no partition")),
                }
            }
        };
        match result {
            Ok(low_watermark) => {
                writeln!(
                    out,
                    "Partition {name}-{partition} now starts at offset {low_watermark}."
                )?;
                return Ok(());
            }
            Err(e) if attempt >= RETRIES_MAX => return Err(e),
            Err(_) => backoff(attempt).await,
        }
    }
}

/// Grows `name` to `partitions` partitions (CreatePartitions at the controller); the broker
/// places the new partitions' replicas.
pub async fn alter_partitions(
    admin: &mut Admin,
    name: &str,
    partitions: i32,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let timeout_ms = admin.broker_timeout_ms();
    let request = CreatePartitionsRequest::default()
        .with_timeout_ms(timeout_ms)
        .with_validate_only(false)
        .with_topics(vec![CreatePartitionsTopic::default()
            .with_name(topic_name(name))
            .with_count(partitions)
            .with_assignments(None)]);
    let (response, _, _) = admin
        .controller_call(
            CREATE_PARTITIONS_VERSIONS,
            |_| request.clone(),
            |r| r.results.iter().any(|t| t.error_code == NOT_CONTROLLER),
        )
        .await?;
    let Some(result) = response.results.first() else {
        return Err(CliError::failed("the controller answered for no topic"));
    };
    match result.error_code {
        0 => writeln!(out, "Topic {name} now has {partitions} partitions.")?,
        UNKNOWN_TOPIC_OR_PARTITION => {
            return Err(CliError::kafka(
                UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic {name:?} does not exist"),
            ))
        }
        code => {
            return Err(CliError::kafka(
                code,
                message_or(
                    &result.error_message,
                    format!("adding partitions to topic {name:?}"),
                ),
            ))
        }
    }
    Ok(())
}

/// IncrementalAlterConfigs where the brokers serve it; else AlterConfigs, which replaces every
/// override, so the current overrides are read first and sent back with the change.
pub async fn alter_config(
    admin: &mut Admin,
    name: &str,
    set: &[(String, String)],
    delete: &[String],
    out: &mut dyn Write,
) -> Result<(), CliError> {
    if let Some(key) = delete.iter().find(|k| set.iter().any(|(s, _)| s == *k)) {
        return Err(CliError::failed(format!(
            "config {key:?} is both added and deleted"
        )));
    }
    let addr = admin.any_broker().await?;
    let (code, message) = if admin.serves(&addr, ApiKey::IncrementalAlterConfigs).await? {
        let configs: Vec<AlterableConfig> = set
            .iter()
            .map(|(k, v)| {
                AlterableConfig::default()
                    .with_name(str_bytes(k))
                    .with_config_operation(OP_SET)
                    .with_value(Some(str_bytes(v)))
            })
            .chain(delete.iter().map(|k| {
                AlterableConfig::default()
                    .with_name(str_bytes(k))
                    .with_config_operation(OP_DELETE)
                    .with_value(None)
            }))
            .collect();
        let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(RESOURCE_TOPIC)
                .with_resource_name(str_bytes(name))
                .with_configs(configs),
        ]);
        let (response, _, _) = admin
            .controller_call(
                INCREMENTAL_ALTER_CONFIGS_VERSIONS,
                |_| request.clone(),
                |r| r.responses.iter().any(|x| x.error_code == NOT_CONTROLLER),
            )
            .await?;
        let first = response.responses.first();
        (
            first.map_or(0, |r| r.error_code),
            first.and_then(|r| r.error_message.clone()),
        )
    } else if admin.serves(&addr, ApiKey::AlterConfigs).await? {
        let current = topic_configs(admin, &[name.to_string()]).await?;
        let entries = match current.into_iter().next() {
            Some((_, entries)) => entries?,
            None => return Err(CliError::failed("DescribeConfigs answered for no topic")),
        };
        let mut overrides: BTreeMap<String, String> = entries
            .into_iter()
            .filter(|(_, _, source)| *source == SOURCE_TOPIC)
            .map(|(k, v, _)| (k, v))
            .collect();
        for k in delete {
            overrides.remove(k);
        }
        overrides.extend(set.iter().cloned());
        let request = AlterConfigsRequest::default().with_resources(vec![
            alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(RESOURCE_TOPIC)
                .with_resource_name(str_bytes(name))
                .with_configs(
                    overrides
                        .iter()
                        .map(|(k, v)| {
                            alter_configs_request::AlterableConfig::default()
                                .with_name(str_bytes(k))
                                .with_value(Some(str_bytes(v)))
                        })
                        .collect(),
                ),
        ]);
        let (response, _, _) = admin
            .controller_call(
                ALTER_CONFIGS_VERSIONS,
                |_| request.clone(),
                |r| r.responses.iter().any(|x| x.error_code == NOT_CONTROLLER),
            )
            .await?;
        let first = response.responses.first();
        (
            first.map_or(0, |r| r.error_code),
            first.and_then(|r| r.error_message.clone()),
        )
    } else {
        return Err(CliError::kafka(
            UNSUPPORTED_VERSION,
            format!("the broker at {addr} serves neither IncrementalAlterConfigs nor AlterConfigs"),
        ));
    };
    if code != 0 {
        let ours = if code == UNKNOWN_TOPIC_OR_PARTITION {
            format!("topic {name:?} does not exist")
        } else {
            format!("altering the configs of topic {name:?}")
        };
        return Err(CliError::kafka(code, message_or(&message, ours)));
    }
    writeln!(out, "Completed updating config for topic {name}.")?;
    Ok(())
}

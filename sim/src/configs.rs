//! The config workload (`--scenario configs`): processes that change topic configs with
//! IncrementalAlterConfigs while the nemesis crashes, restarts and cuts off brokers (the
//! controller among them), then, after the heal, DescribeConfigs at every broker and a produce
//! that probes `max.message.bytes`. Every operation goes into the history as a
//! [`ConfigOp`]; `sluice_core::checker::configs` judges it.
//!
//! Two topics are changed: the data workload's topic, only in ways that keep its data (segment
//! size and time, huge retention, size limits above any batch the workload sends, cleaner
//! settings, but never compaction: its records have no keys), and a topic of its own
//! ([`CONFIG_TOPIC`]) that nothing else writes, where anything goes (compaction, short retention,
//! the timestamp type, `max.message.bytes`).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::alter_configs_request::{
    AlterConfigsRequest, AlterConfigsResource as LegacyResource, AlterableConfig as LegacyConfig,
};
use kafka_protocol::messages::describe_configs_request::{
    DescribeConfigsRequest, DescribeConfigsResource,
};
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig, IncrementalAlterConfigsRequest,
};
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use sluice_core::batch::{BatchBuilder, NewRecord};
use sluice_core::history::{describe, ConfigOp, OpKind, Outcome};
use sluice_core::rng::Rng;
use sluice_core::ErrorCode;

use crate::client::{CallError, Client, TOPIC};
use crate::ops::Recorded;
use crate::params::Params;
use crate::trace::Trace;

/// The config workload's own topic (one partition, nothing else writes it).
pub const CONFIG_TOPIC: &str = "cfg";
/// Config process `i` records its operations as process `CONFIG_PROCESS_BASE + i` (above the
/// pipeline zombies' numbers).
pub const CONFIG_PROCESS_BASE: u32 = 3000;
/// The process of the describes and probes after the heal.
pub const FINAL_CONFIG_PROCESS: u32 = CONFIG_PROCESS_BASE + 100;

/// Kafka's resource type of a topic, and IncrementalAlterConfigs' operations.
const RESOURCE_TOPIC: i8 = 2;
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
/// DescribeConfigs' source of a topic override.
const SOURCE_TOPIC: i8 = 1;

/// The share of changes sent as a legacy AlterConfigs (replace), per mille.
const LEGACY_PER_MILLE: u32 = 250;

/// How long the describes after the heal may take to agree.
const AGREEMENT_BOUND_MS: u64 = 20_000;

/// A change of one config: its name and new value (`None`: delete the override).
type Change = (&'static str, Option<String>);

/// A random change of one config of `topic`.
fn draw_change(rng: &mut Rng, topic: &str) -> Change {
    let data = topic == TOPIC;
    let names: &[&'static str] = if data {
        &[
            "segment.bytes",
            "segment.ms",
            "retention.ms",
            "retention.bytes",
            "max.message.bytes",
            "min.cleanable.dirty.ratio",
            "delete.retention.ms",
            "index.interval.bytes",
        ]
    } else {
        &[
            "segment.bytes",
            "retention.ms",
            "retention.bytes",
            "cleanup.policy",
            "max.message.bytes",
            "message.timestamp.type",
            "delete.retention.ms",
        ]
    };
    let name = names[rng.below(names.len() as u64) as usize];
    // The config topic's size limit is never deleted: the probe after the heal needs one.
    if rng.chance(150) && !(name == "max.message.bytes" && !data) {
        return (name, None);
    }
    let value = match name {
        "segment.bytes" => rng.between(1024, 64 * 1024).to_string(),
        "segment.ms" => rng.between(1_000, 600_000).to_string(),
        // The data topic's records are from 2020 (`TIMESTAMP_BASE_MS`): retention of 30 years
        // and more, and terabytes, keeps them all.
        "retention.ms" if data => rng
            .between(1_000_000_000_000, 9_000_000_000_000)
            .to_string(),
        "retention.bytes" if data => rng.between(1 << 40, 1 << 42).to_string(),
        "retention.ms" => rng.between(1_000, 10_000_000).to_string(),
        "retention.bytes" => rng.between(1_000, 10_000_000).to_string(),
        // Above any batch the data workload sends (one small record).
        "max.message.bytes" if data => rng.between(64 * 1024, 2 << 20).to_string(),
        "max.message.bytes" => rng.between(512, 32 * 1024).to_string(),
        "min.cleanable.dirty.ratio" => format!("0.{}", rng.between(1, 9)),
        "delete.retention.ms" => rng.between(0, 86_400_000).to_string(),
        "index.interval.bytes" => rng.between(128, 8192).to_string(),
        "cleanup.policy" => ["delete", "compact", "compact,delete"][rng.below(3) as usize].into(),
        "message.timestamp.type" => ["CreateTime", "LogAppendTime"][rng.below(2) as usize].into(),
        _ => unreachable!("listed above"),
    };
    (name, Some(value))
}

/// One IncrementalAlterConfigs of `topic` with one to three changes (distinct names).
fn draw_alter(rng: &mut Rng, topic: &str) -> (Vec<(String, String)>, Vec<String>) {
    let mut changes: BTreeMap<&'static str, Option<String>> = BTreeMap::new();
    for _ in 0..rng.between(1, 3) {
        let (name, value) = draw_change(rng, topic);
        changes.insert(name, value);
    }
    let mut set = Vec::new();
    let mut delete = Vec::new();
    for (name, value) in changes {
        match value {
            Some(v) => set.push((name.to_string(), v)),
            None => delete.push(name.to_string()),
        }
    }
    (set, delete)
}

pub(crate) fn alter_request(
    topic: &str,
    set: &[(String, String)],
    delete: &[String],
) -> IncrementalAlterConfigsRequest {
    let configs = set
        .iter()
        .map(|(name, value)| {
            AlterableConfig::default()
                .with_name(StrBytes::from_string(name.clone()))
                .with_config_operation(OP_SET)
                .with_value(Some(StrBytes::from_string(value.clone())))
        })
        .chain(delete.iter().map(|name| {
            AlterableConfig::default()
                .with_name(StrBytes::from_string(name.clone()))
                .with_config_operation(OP_DELETE)
                .with_value(None)
        }))
        .collect();
    IncrementalAlterConfigsRequest::default().with_resources(vec![AlterConfigsResource::default()
        .with_resource_type(RESOURCE_TOPIC)
        .with_resource_name(StrBytes::from_string(topic.to_string()))
        .with_configs(configs)])
}

/// The legacy AlterConfigs (API 33) of `topic`: `set` becomes its whole set of overrides.
fn legacy_request(topic: &str, set: &[(String, String)]) -> AlterConfigsRequest {
    let configs = set
        .iter()
        .map(|(name, value)| {
            LegacyConfig::default()
                .with_name(StrBytes::from_string(name.clone()))
                .with_value(Some(StrBytes::from_string(value.clone())))
        })
        .collect();
    AlterConfigsRequest::default().with_resources(vec![LegacyResource::default()
        .with_resource_type(RESOURCE_TOPIC)
        .with_resource_name(StrBytes::from_string(topic.to_string()))
        .with_configs(configs)])
}

/// Error codes that say the change was refused as it stands: it never takes effect.
fn refused(code: i16) -> bool {
    [
        ErrorCode::InvalidConfig,
        ErrorCode::InvalidRequest,
        ErrorCode::UnknownTopicOrPartition,
    ]
    .iter()
    .any(|e| e.code() == code)
}

/// One config process: a change every `think_ms`, sent to the brokers in turn (one that is not
/// the controller forwards it), until `deadline_ms`.
pub async fn run_process(
    index: u32,
    bootstrap: Vec<String>,
    params: Params,
    mut rng: Rng,
    trace: Trace,
    deadline_ms: u64,
) -> Vec<Recorded> {
    let settings = params.configs.clone().expect("the configs scenario");
    let process = CONFIG_PROCESS_BASE + index;
    let source = format!("config-{index}");
    let mut client = Client::new(&bootstrap);
    let timeout = Duration::from_millis(settings.timeout_ms);
    // Which changes use the legacy AlterConfigs: a stream of its own, so that the other draws
    // of a seed are what they were before it existed.
    let mut legacy_rng = Rng::new(params.seed ^ 0x1e9a_c7a1_7e2c_0a1d ^ u64::from(index));
    let mut ops = Vec::new();
    while trace.now_ms() < deadline_ms {
        let think = rng.between(settings.think_ms.0, settings.think_ms.1);
        tokio::time::sleep(Duration::from_millis(think)).await;
        let topic = if rng.chance(500) { TOPIC } else { CONFIG_TOPIC };
        let (mut set, delete) = draw_alter(&mut rng, topic);
        let legacy = legacy_rng.chance(LEGACY_PER_MILLE);
        if legacy && topic == CONFIG_TOPIC && !set.iter().any(|(n, _)| n == "max.message.bytes") {
            // A replace removes what it does not name; the size probe needs the config topic's
            // `max.message.bytes`.
            let limit = legacy_rng.between(512, 32 * 1024).to_string();
            set.push(("max.message.bytes".to_string(), limit));
            set.sort();
        }
        let invoke_ms = trace.now_ms();
        let addr = client.next_broker();
        let answer = if legacy {
            let request = legacy_request(topic, &set);
            client
                .call_at_within(&addr, &request, 2, timeout)
                .await
                .map(|r| r.responses.first().map(|r| r.error_code))
        } else {
            let request = alter_request(topic, &set, &delete);
            client
                .call_at_within(&addr, &request, 1, timeout)
                .await
                .map(|r| r.responses.first().map(|r| r.error_code))
        };
        let outcome = match answer {
            Ok(code) => match code {
                Some(0) => Outcome::Ok(()),
                Some(code) if refused(code) => Outcome::Fail(format!("error code {code}")),
                Some(code) => Outcome::Info(format!("error code {code}")),
                None => Outcome::Info("no result".into()),
            },
            Err(CallError::NotSent(why)) => Outcome::Fail(why),
            Err(CallError::Unknown(why)) => Outcome::Info(why),
        };
        let kind = if legacy {
            OpKind::Config(ConfigOp::Replace {
                topic: topic.to_string(),
                set,
                outcome,
            })
        } else {
            OpKind::Config(ConfigOp::Alter {
                topic: topic.to_string(),
                set,
                delete,
                outcome,
            })
        };
        trace.record(&source, "op", describe(&kind));
        ops.push(Recorded {
            process,
            kind,
            invoke_ms,
            complete_ms: trace.now_ms(),
        });
    }
    ops
}

/// One broker's overrides of `topic` (the configs whose source is the topic).
pub(crate) async fn describe_at(
    client: &mut Client,
    addr: &str,
    topic: &str,
) -> Outcome<BTreeMap<String, String>> {
    let request =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(RESOURCE_TOPIC)
            .with_resource_name(StrBytes::from_string(topic.to_string()))
            .with_configuration_keys(None)]);
    match client.call_at(addr, &request, 4).await {
        Ok(response) => match response.results.first() {
            Some(r) if r.error_code == 0 => Outcome::Ok(
                r.configs
                    .iter()
                    .filter(|c| c.config_source == SOURCE_TOPIC)
                    .map(|c| {
                        let value = c.value.as_ref().map_or("", |v| v.as_str());
                        (c.name.to_string(), value.to_string())
                    })
                    .collect(),
            ),
            Some(r) => Outcome::Fail(format!("error code {}", r.error_code)),
            None => Outcome::Fail("no result".into()),
        },
        Err(CallError::NotSent(why) | CallError::Unknown(why)) => Outcome::Info(why),
    }
}

/// After the heal: DescribeConfigs of both topics at every broker, round after round until all
/// answer and agree (or [`AGREEMENT_BOUND_MS`] passes); the last round goes into the history.
/// Then, if they agree on the config topic's `max.message.bytes`, a produce of a batch within
/// it and one of a batch above it.
pub async fn final_configs(bootstrap: &[String], trace: &Trace) -> Vec<Recorded> {
    let process = FINAL_CONFIG_PROCESS;
    let mut client = Client::new(bootstrap);
    let started_ms = trace.now_ms();
    let mut round: Vec<Recorded>;
    loop {
        round = Vec::new();
        for (node, addr) in bootstrap.iter().enumerate() {
            for topic in [TOPIC, CONFIG_TOPIC] {
                let invoke_ms = trace.now_ms();
                let outcome = describe_at(&mut client, addr, topic).await;
                round.push(Recorded {
                    process,
                    kind: OpKind::Config(ConfigOp::Describe {
                        topic: topic.to_string(),
                        node: node as i32,
                        outcome,
                    }),
                    invoke_ms,
                    complete_ms: trace.now_ms(),
                });
            }
        }
        if agreed(&round).is_some() || trace.now_ms() >= started_ms + AGREEMENT_BOUND_MS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for r in &round {
        trace.record("final-configs", "op", describe(&r.kind));
    }
    let limit = agreed(&round).and_then(|finals| {
        finals
            .get(CONFIG_TOPIC)?
            .get("max.message.bytes")?
            .parse::<u64>()
            .ok()
    });
    if let Some(limit) = limit {
        let probes_from = round.len();
        for batch_bytes in [limit, limit + 1] {
            let invoke_ms = trace.now_ms();
            let (actual, outcome) = probe(&mut client, bootstrap, batch_bytes).await;
            let kind = OpKind::Config(ConfigOp::SizeProbe {
                topic: CONFIG_TOPIC.to_string(),
                limit_bytes: limit,
                batch_bytes: actual,
                outcome,
            });
            trace.record("final-configs", "op", describe(&kind));
            round.push(Recorded {
                process,
                kind,
                invoke_ms,
                complete_ms: trace.now_ms(),
            });
        }
        // An indeterminate change of the fault phase may still commit after the describes
        // agreed (its request was still on its way): then the probes were judged against a
        // limit no longer in force. Keep them only if every broker still describes it.
        let mut still = true;
        for addr in bootstrap {
            let now = describe_at(&mut client, addr, CONFIG_TOPIC).await;
            still &= matches!(&now, Outcome::Ok(o)
                if o.get("max.message.bytes").and_then(|v| v.parse::<u64>().ok()) == Some(limit));
        }
        if !still {
            trace.record(
                "final-configs",
                "skipped",
                "max.message.bytes changed during the size probes",
            );
            round.truncate(probes_from);
        }
    }
    round
}

/// Every topic's overrides, if every broker described every topic and they all agree.
fn agreed(round: &[Recorded]) -> Option<BTreeMap<&str, &BTreeMap<String, String>>> {
    let mut finals: BTreeMap<&str, &BTreeMap<String, String>> = BTreeMap::new();
    for r in round {
        let OpKind::Config(ConfigOp::Describe {
            topic,
            outcome: Outcome::Ok(overrides),
            ..
        }) = &r.kind
        else {
            return None;
        };
        if *finals.entry(topic.as_str()).or_insert(overrides) != overrides {
            return None;
        }
    }
    Some(finals)
}

/// A batch of one record whose encoding is exactly `bytes` long (at least the smallest one).
fn batch_of(bytes: u64) -> Vec<u8> {
    let build = |value_bytes: usize| {
        let mut builder = BatchBuilder::new(crate::workload::TIMESTAMP_BASE_MS);
        builder.push(&NewRecord {
            timestamp: crate::workload::TIMESTAMP_BASE_MS,
            key: Some(b"probe".to_vec()),
            value: Some(vec![b'x'; value_bytes]),
            headers: vec![],
        });
        builder.build()
    };
    let mut value_bytes = 0usize;
    // The record's varint lengths grow with the value: a few rounds settle.
    for _ in 0..4 {
        let len = build(value_bytes).len() as u64;
        if len == bytes {
            break;
        }
        value_bytes = (value_bytes as u64 + bytes).saturating_sub(len) as usize;
    }
    build(value_bytes)
}

/// Produces a batch of about `bytes` to the config topic's partition at each broker in turn
/// until one answers as its leader: its length and the error code (`Info` if none did).
async fn probe(client: &mut Client, bootstrap: &[String], bytes: u64) -> (u64, Outcome<i16>) {
    let batch = batch_of(bytes);
    let actual = batch.len() as u64;
    (
        actual,
        produce_to_config_topic(client, bootstrap, batch).await,
    )
}

/// Produces `records` (acks=all) to the config topic's partition at each broker in turn until
/// its leader takes it: the error code, or why no broker did.
pub async fn produce_to_config_topic(
    client: &mut Client,
    bootstrap: &[String],
    records: Vec<u8>,
) -> Outcome<i16> {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str(CONFIG_TOPIC)))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(records)))])]);
    let not_leader = [
        ErrorCode::NotLeaderOrFollower.code(),
        ErrorCode::LeaderNotAvailable.code(),
        ErrorCode::NotEnoughReplicas.code(),
        ErrorCode::RequestTimedOut.code(),
    ];
    let mut last = String::from("no broker answered");
    for _ in 0..10 {
        for addr in bootstrap {
            match client.call_at(addr, &request, 9).await {
                Ok(response) => {
                    let code = response
                        .responses
                        .first()
                        .and_then(|t| t.partition_responses.first())
                        .map_or(-1, |p| p.error_code);
                    if !not_leader.contains(&code) && code >= 0 {
                        return Outcome::Ok(code);
                    }
                    last = format!("error code {code}");
                }
                Err(CallError::NotSent(why) | CallError::Unknown(why)) => last = why,
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Outcome::Info(last)
}

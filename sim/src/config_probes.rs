//! The config-effects probe of the `configs` scenario: after the heal, once every broker
//! describes the same overrides of the config topic ([`CONFIG_TOPIC`]), does its
//! `segment.bytes` and retention take effect on every replica?
//!
//! The probe keeps the described `segment.bytes` and `retention.ms` (values that lived through
//! the controller failovers and restarts of the fault phase) and sets, with one
//! IncrementalAlterConfigs, only what it needs: a `segment.bytes` and `retention.ms` where none
//! is described, always a fresh `retention.bytes` (a few segments' worth, so size retention has
//! work), `cleanup.policy=delete` and `message.timestamp.type=CreateTime` where another is
//! described, and a `max.message.bytes` its batches fit under. That change is always made: once
//! it shows at every broker, every change committed before it has too, so what the brokers then
//! describe is what the checker judges against (up to three rounds, should a late change of the
//! fault phase get in the way). Then it produces a known sequence of batches (acks=all): the
//! first half stamped twice
//! `retention.ms` ago (due by time at once), the rest stamped now, each a quarter to a half of
//! `segment.bytes` (so segments roll every two or three batches). Then it waits one retention
//! check interval plus [`SLACK_MS`], describes once more (a change whose request was still on
//! its way may have landed: then nothing is judged), and the simulator reads every replica's
//! segments of the partition from its disk ([`layouts`]) for
//! `sluice_core::checker::config_effects`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use kafka_protocol::messages::describe_configs_request::{
    DescribeConfigsRequest, DescribeConfigsResource,
};
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig, IncrementalAlterConfigsRequest,
};
use kafka_protocol::protocol::StrBytes;
use sluice_core::batch::{BatchBuilder, BatchHeader, NewRecord};
use sluice_core::checker::config_effects::{
    BatchLayout, EffectsProbe, ReplicaLayout, SegmentLayout,
};
use sluice_core::checker::replicas::ReplicaChecker;
use sluice_core::history::{describe, ConfigOp, Key, OpKind, Outcome};
use sluice_core::rng::Rng;

use crate::client::{CallError, Client};
use crate::configs::{produce_to_config_topic, CONFIG_TOPIC, FINAL_CONFIG_PROCESS};
use crate::nemesis::Cluster;
use crate::ops::Recorded;
use crate::trace::Trace;

/// How long after the probe's last append, beyond one retention check interval, every replica
/// has its high watermark at its log end and its checkpoint past the last roll, so that its
/// next retention check sees the whole probe.
pub const SLACK_MS: u64 = 500;
/// Batches the probe writes: half old, half new.
const BATCHES: usize = 12;
/// How long the describes after the probe's change may take to show it everywhere.
const AGREEMENT_BOUND_MS: u64 = 20_000;
/// The probe's batches carry this record key, with the batch's number.
const KEY_PREFIX: &str = "config-effects-";

/// What the probe set up and wrote: what the checker judges the layouts against.
#[derive(Clone, Debug)]
pub struct Plan {
    pub segment_bytes: u64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    /// The timestamps of the probe's batches (each is one record: its max timestamp).
    pub timestamps: BTreeSet<i64>,
    pub check_interval_ms: u64,
}

/// The overrides of the config topic every broker described in the final round, if they agree.
pub fn agreed_overrides(round: &[Recorded]) -> Option<BTreeMap<String, String>> {
    let mut agreed: Option<&BTreeMap<String, String>> = None;
    for r in round {
        let OpKind::Config(ConfigOp::Describe { topic, outcome, .. }) = &r.kind else {
            continue;
        };
        if topic != CONFIG_TOPIC {
            continue;
        }
        let Outcome::Ok(overrides) = outcome else {
            return None;
        };
        if agreed.is_some_and(|a| a != overrides) {
            return None;
        }
        agreed = Some(overrides);
    }
    agreed.cloned()
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the simulated clock is after 1970")
        .as_millis() as i64
}

/// The configs the probe sets on top of `described`, and the values then in force.
fn choose(
    rng: &mut Rng,
    described: &BTreeMap<String, String>,
) -> (Vec<(String, String)>, u64, i64, i64) {
    let mut set = Vec::new();
    let mut value = |name: &str, fresh: String| -> String {
        set.push((name.to_string(), fresh.clone()));
        fresh
    };
    let segment_bytes: u64 = match described.get("segment.bytes").and_then(|v| v.parse().ok()) {
        Some(v) => v,
        None => value("segment.bytes", rng.between(1024, 8192).to_string())
            .parse()
            .expect("a number"),
    };
    let retention_ms: i64 = match described.get("retention.ms").and_then(|v| v.parse().ok()) {
        Some(v) if v >= 0 => v,
        _ => value("retention.ms", rng.between(1_000, 600_000).to_string())
            .parse()
            .expect("a number"),
    };
    // Between one and three segments: size retention keeps a segment or two of the new half.
    let retention_bytes: i64 = value(
        "retention.bytes",
        (segment_bytes * rng.between(100, 300) / 100).to_string(),
    )
    .parse()
    .expect("a number");
    if described
        .get("cleanup.policy")
        .is_some_and(|p| p != "delete")
    {
        value("cleanup.policy", "delete".into());
    }
    if described
        .get("message.timestamp.type")
        .is_some_and(|t| t != "CreateTime")
    {
        value("message.timestamp.type", "CreateTime".into());
    }
    // The largest batch is half a segment (and at least the smallest batch).
    let limit: u64 = described
        .get("max.message.bytes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    if limit < segment_bytes {
        value("max.message.bytes", segment_bytes.to_string());
    }
    (set, segment_bytes, retention_ms, retention_bytes)
}

fn alter_request(set: &[(String, String)]) -> IncrementalAlterConfigsRequest {
    let configs = set
        .iter()
        .map(|(name, value)| {
            AlterableConfig::default()
                .with_name(StrBytes::from_string(name.clone()))
                .with_config_operation(0)
                .with_value(Some(StrBytes::from_string(value.clone())))
        })
        .collect();
    IncrementalAlterConfigsRequest::default().with_resources(vec![AlterConfigsResource::default()
        .with_resource_type(2)
        .with_resource_name(StrBytes::from_static_str(CONFIG_TOPIC))
        .with_configs(configs)])
}

/// The config topic's overrides (source `TOPIC_CONFIG`), if every broker describes the same ones
/// and they include `set`.
async fn everywhere(
    client: &mut Client,
    bootstrap: &[String],
    set: &[(String, String)],
) -> Option<BTreeMap<String, String>> {
    let request =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_static_str(CONFIG_TOPIC))
            .with_configuration_keys(None)]);
    let mut agreed: Option<BTreeMap<String, String>> = None;
    for addr in bootstrap {
        let response = client.call_at(addr, &request, 4).await.ok()?;
        let result = response.results.first().filter(|r| r.error_code == 0)?;
        let overrides: BTreeMap<String, String> = result
            .configs
            .iter()
            .filter(|c| c.config_source == 1)
            .map(|c| {
                let value = c.value.as_ref().map_or("", |v| v.as_str());
                (c.name.to_string(), value.to_string())
            })
            .collect();
        if agreed.as_ref().is_some_and(|a| *a != overrides) {
            return None;
        }
        agreed = Some(overrides);
    }
    let agreed = agreed?;
    set.iter()
        .all(|(name, value)| agreed.get(name) == Some(value))
        .then_some(agreed)
}

/// The `segment.bytes`, `retention.ms` and `retention.bytes` the probe can be judged against,
/// if `described` sets all three and nothing that would get in the way (compaction,
/// LogAppendTime, a `max.message.bytes` below a segment).
fn suitable(described: &BTreeMap<String, String>) -> Option<(u64, i64, i64)> {
    let segment_bytes: u64 = described.get("segment.bytes")?.parse().ok()?;
    let retention_ms: i64 = described.get("retention.ms")?.parse().ok()?;
    let retention_bytes: i64 = described.get("retention.bytes")?.parse().ok()?;
    let limit: u64 = described
        .get("max.message.bytes")
        .map_or(Some(u64::MAX), |v| v.parse().ok())?;
    let fits = described
        .get("cleanup.policy")
        .is_none_or(|p| p == "delete")
        && described
            .get("message.timestamp.type")
            .is_none_or(|t| t == "CreateTime")
        && limit >= segment_bytes;
    (fits && retention_ms >= 0 && retention_bytes >= 0).then_some((
        segment_bytes,
        retention_ms,
        retention_bytes,
    ))
}

/// A batch of one record, keyed `KEY_PREFIX` + `n`, stamped `timestamp`, about `bytes` long.
fn batch(n: usize, bytes: u64, timestamp: i64) -> Vec<u8> {
    let build = |value_bytes: usize| {
        let mut builder = BatchBuilder::new(timestamp);
        builder.push(&NewRecord {
            timestamp,
            key: Some(format!("{KEY_PREFIX}{n}").into_bytes()),
            value: Some(vec![b'e'; value_bytes]),
            headers: vec![],
        });
        builder.build()
    };
    let overhead = build(0).len() as u64;
    build(bytes.saturating_sub(overhead) as usize)
}

/// Runs the probe (see the module documentation): the alter it sent, for the history, and
/// what the layouts are to be judged against (`None` if the probe could not run: the brokers
/// did not agree, the change failed or never showed everywhere, or no batch was taken).
pub async fn probe_effects(
    bootstrap: Vec<String>,
    trace: Trace,
    described: Option<BTreeMap<String, String>>,
    seed: u64,
    check_interval_ms: u64,
) -> (Vec<Recorded>, Option<Plan>) {
    let mut ops = Vec::new();
    let Some(described) = described else {
        trace.record("config-effects", "skipped", "the brokers did not agree");
        return (ops, None);
    };
    let mut rng = Rng::new(seed ^ 0xeffe_c75e_ffec_75e0);
    let mut client = Client::new(&bootstrap);
    let mut described = described;
    // At least one change: its record, committed by the current controller, comes after every
    // earlier change that may still commit (an indeterminate one of the fault phase), so what
    // every broker describes once it shows is final. A change of the fault phase that applied
    // after the describes may still leave something in the way: then one more round.
    let mut rounds = 0;
    let (segment_bytes, retention_ms, retention_bytes) = loop {
        if let Some(values) = suitable(&described).filter(|_| rounds > 0) {
            break values;
        }
        if rounds == 3 {
            trace.record(
                "config-effects",
                "skipped",
                "no suitable configs after 3 changes",
            );
            return (ops, None);
        }
        rounds += 1;
        let (set, ..) = choose(&mut rng, &described);
        let invoke_ms = trace.now_ms();
        let outcome = match client.call_at(&bootstrap[0], &alter_request(&set), 1).await {
            Ok(response) => match response.responses.first().map(|r| r.error_code) {
                Some(0) => Outcome::Ok(()),
                Some(code) => Outcome::Info(format!("error code {code}")),
                None => Outcome::Info("no result".into()),
            },
            Err(CallError::NotSent(why) | CallError::Unknown(why)) => Outcome::Info(why),
        };
        let acked = matches!(outcome, Outcome::Ok(()));
        let kind = OpKind::Config(ConfigOp::Alter {
            topic: CONFIG_TOPIC.to_string(),
            set: set.clone(),
            delete: vec![],
            outcome,
        });
        trace.record("config-effects", "op", describe(&kind));
        ops.push(Recorded {
            process: FINAL_CONFIG_PROCESS,
            kind,
            invoke_ms,
            complete_ms: trace.now_ms(),
        });
        if !acked {
            return (ops, None);
        }
        let started_ms = trace.now_ms();
        described = loop {
            if let Some(d) = everywhere(&mut client, &bootstrap, &set).await {
                break d;
            }
            if trace.now_ms() >= started_ms + AGREEMENT_BOUND_MS {
                trace.record(
                    "config-effects",
                    "skipped",
                    "the change never showed everywhere",
                );
                return (ops, None);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
    };
    trace.record(
        "config-effects",
        "configs",
        format!("in force everywhere: {described:?}"),
    );
    let old_ms = wall_ms() - 2 * retention_ms;
    let new_ms = wall_ms();
    let mut timestamps = BTreeSet::new();
    let mut taken = 0;
    for n in 0..BATCHES {
        let timestamp = if n < BATCHES / 2 { old_ms } else { new_ms } + n as i64;
        let bytes = rng.between(segment_bytes / 4, segment_bytes / 2);
        let records = batch(n, bytes, timestamp);
        let outcome = produce_to_config_topic(&mut client, &bootstrap, records).await;
        trace.record(
            "config-effects",
            "produce",
            format!("batch {n}: {bytes} bytes stamped {timestamp}: {outcome:?}"),
        );
        timestamps.insert(timestamp);
        taken += u32::from(matches!(outcome, Outcome::Ok(0)));
    }
    if taken == 0 {
        return (ops, None);
    }
    tokio::time::sleep(Duration::from_millis(check_interval_ms + SLACK_MS)).await;
    if everywhere(&mut client, &bootstrap, &[]).await.as_ref() != Some(&described) {
        trace.record(
            "config-effects",
            "skipped",
            "the configs changed during the probe",
        );
        return (ops, None);
    }
    let plan = Plan {
        segment_bytes,
        retention_ms,
        retention_bytes,
        timestamps,
        check_interval_ms,
    };
    (ops, Some(plan))
}

/// Every broker's segments of the config topic's partition as its disk holds them now, with
/// what each replica last reported committed, for the checker.
pub fn layouts(
    cluster: &Cluster,
    checker: &ReplicaChecker,
    plan: &Plan,
    trace: &Trace,
) -> EffectsProbe {
    let group = format!("{CONFIG_TOPIC}-0");
    let mut replicas = Vec::new();
    for (node, broker) in cluster.brokers.iter().enumerate() {
        let mut files: Vec<(u64, std::path::PathBuf)> = broker
            .storage
            .paths()
            .into_iter()
            .filter(|p| p.parent() == Some(Path::new(&group)))
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .filter_map(|p| Some((p.file_stem()?.to_str()?.parse::<u64>().ok()?, p)))
            .collect();
        if files.is_empty() {
            continue;
        }
        files.sort();
        let mut segments = Vec::new();
        for (base_offset, path) in files {
            let bytes = broker.storage.read_file(&path).unwrap_or_default();
            let mut batches = Vec::new();
            let mut at = 0;
            while let Ok(header) = BatchHeader::parse(&bytes[at..]) {
                let total = header.total_bytes();
                if at + total > bytes.len() {
                    break;
                }
                batches.push(BatchLayout {
                    base_offset: header.base_offset as u64,
                    next_offset: header.next_offset() as u64,
                    size_bytes: total as u64,
                    max_timestamp: header.max_timestamp,
                    probe: !header.is_control() && plan.timestamps.contains(&header.max_timestamp),
                });
                at += total;
            }
            segments.push(SegmentLayout {
                base_offset,
                size_bytes: bytes.len() as u64,
                batches,
            });
        }
        let committed_end = checker.committed_end(&group, node as u64);
        trace.record(
            "config-effects",
            "layout",
            format!(
                "broker {node}: committed end {committed_end:?}, segments {:?}",
                segments
                    .iter()
                    .map(|s| (s.base_offset, s.size_bytes, s.batches.len()))
                    .collect::<Vec<_>>()
            ),
        );
        replicas.push(ReplicaLayout {
            node: node as u64,
            committed_end,
            segments,
        });
    }
    EffectsProbe {
        key: Key::new(CONFIG_TOPIC, 0),
        segment_bytes: plan.segment_bytes,
        retention_ms: plan.retention_ms,
        retention_bytes: plan.retention_bytes,
        judged_at_ms: (wall_ms() as u64).saturating_sub(plan.check_interval_ms + 100),
        replicas,
    }
}

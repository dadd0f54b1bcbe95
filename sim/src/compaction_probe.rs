//! The compaction probe of the `configs` scenario, after the heal and the final describes:
//! switches `cleanup.policy=compact` on for the config topic (small segments, every segment
//! dirty enough to clean) and waits until every broker describes it, produces several values
//! of a few keys, then records of fresh keys until the segments holding the old values are
//! sealed, waits (bounded) until every replica's cleaner removed some superseded value, and
//! reads every replica's stored records of the partition from its disk. The whole of it goes
//! into the history as one [`ConfigOp::Compaction`]; `sluice_core::checker::compaction` judges
//! it.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use sluice_core::batch::{BatchBuilder, BatchHeader, NewRecord, Records};
use sluice_core::checker::compaction::{CompactionProbe, ProbeSend, ReplicaRecords, StoredRecord};
use sluice_core::history::{describe, ConfigOp, OpKind, Outcome};
use sluice_core::testing::MemStorage;
use sluice_core::ErrorCode;

use crate::client::{CallError, Client};
use crate::configs::{alter_request, describe_at, CONFIG_TOPIC, FINAL_CONFIG_PROCESS};
use crate::ops::Recorded;
use crate::trace::Trace;

/// The probe's keys, and how many values each gets (one batch per round, every key in it).
const KEYS: usize = 4;
const ROUNDS: usize = 3;
/// Batches of fresh keys after the rounds: with [`SEGMENT_BYTES`], enough to seal the segments
/// that hold the rounds and to move the recovery point past them.
const FILLER_BATCHES: usize = 10;
/// The probe's `segment.bytes`: a few of its batches per segment.
const SEGMENT_BYTES: u64 = 1024;
/// How long the probe waits for the describes to agree, and then for the cleaners.
const AGREE_BOUND_MS: u64 = 5_000;
const CLEAN_BOUND_MS: u64 = 8_000;
const POLL_MS: u64 = 100;

/// Runs the probe (see the module documentation); `storages` are the brokers' disks, by node.
pub async fn run(bootstrap: &[String], storages: &[MemStorage], trace: &Trace) -> Vec<Recorded> {
    let mut client = Client::new(bootstrap);
    let invoke_ms = trace.now_ms();
    let compact_described = switch_on(&mut client, bootstrap, trace).await;
    let mut sends = Vec::new();
    let mut batch_index = 0u64;
    for round in 0..ROUNDS {
        let records: Vec<(String, String)> = (0..KEYS)
            .map(|k| (format!("cmp-{k}"), format!("cmp-{k}-v{round}")))
            .collect();
        produce(&mut client, bootstrap, &records, &mut sends, batch_index).await;
        batch_index += 1;
    }
    for f in 0..FILLER_BATCHES {
        let records: Vec<(String, String)> = (0..KEYS)
            .map(|k| (format!("fill-{f}-{k}"), format!("fill-{f}-{k}-v")))
            .collect();
        produce(&mut client, bootstrap, &records, &mut sends, batch_index).await;
        batch_index += 1;
    }
    let mut probe = CompactionProbe {
        topic: CONFIG_TOPIC.to_string(),
        partition: 0,
        compact_described,
        sends,
        waited_ms: 0,
        replicas: Vec::new(),
    };
    // Wait until every replica holds the last acknowledged record and removed some superseded
    // value, or the bound passes.
    let last_acked = probe
        .sends
        .iter()
        .rev()
        .find(|s| s.outcome.is_ok())
        .map(|s| s.value.clone());
    let waited_from = trace.now_ms();
    loop {
        probe.replicas = read_replicas(storages);
        probe.waited_ms = trace.now_ms() - waited_from;
        let done = probe.replicas.iter().all(|r| {
            let caught_up = last_acked
                .as_ref()
                .is_none_or(|v| r.records.iter().any(|s| s.value.as_ref() == Some(v)));
            caught_up && probe.compacted_on(r)
        });
        if done || !compact_described || probe.waited_ms >= CLEAN_BOUND_MS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
    // A change of the fault phase whose request was still on its way can commit after the
    // probe's own and replace its configs (`configs` seed 172: a late segment.bytes left the
    // probe's records in the active segment). Compaction is judged only under the probe's configs.
    if probe.compact_described && !shown_everywhere(&mut client, bootstrap).await {
        trace.record(
            "final-configs",
            "compaction-probe",
            "a late change replaced the probe's configs: compaction not judged",
        );
        probe.compact_described = false;
    }
    let kind = OpKind::Config(ConfigOp::Compaction(Box::new(probe)));
    trace.record("final-configs", "op", describe(&kind));
    vec![Recorded {
        process: FINAL_CONFIG_PROCESS,
        kind,
        invoke_ms,
        complete_ms: trace.now_ms(),
    }]
}

/// Sets compaction on (with small segments and no dirty-ratio wait) until acknowledged, then
/// describes at every broker until all show it: whether both happened within the bounds.
async fn switch_on(client: &mut Client, bootstrap: &[String], trace: &Trace) -> bool {
    let set: Vec<(String, String)> = probe_configs()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let request = alter_request(CONFIG_TOPIC, &set, &[]);
    let started_ms = trace.now_ms();
    let mut acked = false;
    while !acked && trace.now_ms() < started_ms + AGREE_BOUND_MS {
        let addr = client.next_broker();
        if let Ok(response) = client.call_at(&addr, &request, 1).await {
            acked = response.responses.first().map(|r| r.error_code) == Some(0);
        }
        if !acked {
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
    }
    trace.record(
        "final-configs",
        "compaction-probe",
        format!("cleanup.policy=compact acknowledged: {acked}"),
    );
    while acked && trace.now_ms() < started_ms + AGREE_BOUND_MS {
        if shown_everywhere(client, bootstrap).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
    false
}

/// The configs [`switch_on`] sets.
fn probe_configs() -> [(&'static str, String); 3] {
    [
        ("cleanup.policy", "compact".to_string()),
        ("segment.bytes", SEGMENT_BYTES.to_string()),
        ("min.cleanable.dirty.ratio", "0".to_string()),
    ]
}

/// Whether every broker describes the probe's configs.
async fn shown_everywhere(client: &mut Client, bootstrap: &[String]) -> bool {
    let mut all = true;
    for addr in bootstrap {
        let shown = match describe_at(client, addr, CONFIG_TOPIC).await {
            Outcome::Ok(overrides) => overrides,
            _ => BTreeMap::new(),
        };
        all &= probe_configs()
            .iter()
            .all(|(k, v)| shown.get(*k) == Some(v));
    }
    all
}

/// Produces one batch of `records` (acks=all) to the config topic's partition at each broker in
/// turn until one answers as its leader; records each record with the batch's outcome.
async fn produce(
    client: &mut Client,
    bootstrap: &[String],
    records: &[(String, String)],
    sends: &mut Vec<ProbeSend>,
    batch_index: u64,
) {
    let timestamp = crate::workload::TIMESTAMP_BASE_MS + batch_index as i64;
    let mut builder = BatchBuilder::new(timestamp);
    for (key, value) in records {
        builder.push(&NewRecord {
            timestamp,
            key: Some(key.as_bytes().to_vec()),
            value: Some(value.as_bytes().to_vec()),
            headers: vec![],
        });
    }
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str(CONFIG_TOPIC)))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(builder.build())))])]);
    // Refusals that say the batch was not appended: try the next broker.
    let refused = [
        ErrorCode::NotLeaderOrFollower.code(),
        ErrorCode::LeaderNotAvailable.code(),
        ErrorCode::NotEnoughReplicas.code(),
    ];
    let mut outcome = Outcome::Fail("no broker answered".to_string());
    'attempts: for _ in 0..5 {
        for addr in bootstrap {
            match client.call_at(addr, &request, 9).await {
                Ok(response) => {
                    let code = response
                        .responses
                        .first()
                        .and_then(|t| t.partition_responses.first())
                        .map_or(-1, |p| p.error_code);
                    if code == 0 {
                        outcome = Outcome::Ok(());
                        break 'attempts;
                    }
                    if !refused.contains(&code) {
                        outcome = Outcome::Info(format!("error code {code}"));
                    }
                }
                Err(CallError::Unknown(why)) => outcome = Outcome::Info(why),
                Err(CallError::NotSent(_)) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
    for (key, value) in records {
        sends.push(ProbeSend {
            key: key.clone(),
            value: value.clone(),
            outcome: outcome.clone(),
        });
    }
}

/// Every replica's stored data records of the config topic's partition, read from its disk.
fn read_replicas(storages: &[MemStorage]) -> Vec<ReplicaRecords> {
    let group = format!("{CONFIG_TOPIC}-0");
    storages
        .iter()
        .enumerate()
        // Only the partition's replicas (3 of 5 brokers, say) have its directory.
        .filter(|(_, storage)| {
            storage
                .paths()
                .iter()
                .any(|p| p.parent() == Some(std::path::Path::new(&group)))
        })
        .map(|(node, storage)| {
            let mut records = Vec::new();
            for batch in crate::agreement::committed_batches(storage, &group, u64::MAX).values() {
                let Ok(header) = BatchHeader::parse(batch) else {
                    continue;
                };
                if header.is_control() {
                    continue;
                }
                let Ok(parsed) = Records::new(batch) else {
                    continue;
                };
                for record in parsed.flatten() {
                    let text =
                        |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
                    records.push(StoredRecord {
                        offset: header.base_offset as u64 + record.offset_delta as u64,
                        key: text(record.key),
                        value: text(record.value),
                    });
                }
            }
            ReplicaRecords {
                node: node as i32,
                records,
            }
        })
        .collect()
}

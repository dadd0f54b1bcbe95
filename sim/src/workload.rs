//! Workload clients in the spirit of Jepsen's Kafka workload: each process sends unique values to
//! random partitions (acks=all or acks=1), polls its assigned partitions in assign mode,
//! sometimes reassigns and seeks to the beginning, and records every operation with its invoke
//! and completion time and what it returned. One process may be a pipelining idempotent
//! producer whose sends go to a sender task (`pipeline`). At the end a fresh process reads
//! every partition from the beginning.

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::ProducerId;
use sluice_core::checker::retention::DeleteRecordsCall;
use sluice_core::history::{describe, Acks, OpKind, Outcome, ProducerStamp, Reads};
use sluice_core::rng::Rng;
use sluice_core::ErrorCode;

use crate::client::{
    fetch, key, produce_request, produce_request_as, CallError, Client, POLL_MAX_WAIT_MS,
};
use crate::ops::Recorded;
use crate::params::Params;
use crate::pipeline::{SendJob, Sender, QUEUED_SENDS_MAX};
use crate::trace::Trace;

/// Produce error codes that mean the batch is not in the log and never will be: corrupt message,
/// unknown topic or partition, message too large, invalid acks, and not the leader (refused by
/// a follower, or appended by a leader whose entry a new leader then cut).
pub(crate) fn refused_before_write(code: i16) -> bool {
    [2, 3, 6, 10, 21].contains(&code)
}

/// Record timestamps: September 2020, before any simulated wall clock (madsim starts it in
/// 2022), so brokers never refuse them as too far in the future (Kafka 4's
/// `message.timestamp.after.max.ms`, one hour).
pub(crate) const TIMESTAMP_BASE_MS: i64 = 1_600_000_000_000;

/// A record's timestamp for a send invoked at `invoke_ms` (trace time): from the simulated wall
/// clock the brokers read when retention is on (`clock`), so that time retention has records
/// of every age to judge; otherwise [`TIMESTAMP_BASE_MS`] + `invoke_ms`.
pub(crate) fn record_timestamp(clock: bool, trace: &Trace, invoke_ms: u64) -> i64 {
    if !clock {
        return TIMESTAMP_BASE_MS + invoke_ms as i64;
    }
    let wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the simulated clock is after 1970")
        .as_millis() as i64;
    wall_ms - trace.now_ms() as i64 + invoke_ms as i64
}

/// Sends once; the outcome as the checker should see it.
async fn send_once(
    client: &mut Client,
    partition: i32,
    acks: i16,
    value: u64,
    timestamp: i64,
) -> Outcome<u64> {
    match client
        .produce(
            partition,
            &produce_request(partition, acks, value, timestamp),
        )
        .await
    {
        Ok(p) => {
            match p.error_code {
                0 => Outcome::Ok(p.base_offset as u64),
                // Refused before anything was written: definitely not in the log.
                code if refused_before_write(code) => Outcome::Fail(format!("error code {code}")),
                code => Outcome::Info(format!("error code {code}")),
            }
        }
        Err(CallError::NotSent(why)) => Outcome::Fail(why),
        Err(CallError::Unknown(why)) => Outcome::Info(why),
    }
}

/// Attempts per send of an idempotent producer (the first try and its retries).
const IDEMPOTENT_ATTEMPTS_MAX: u32 = 6;

/// An idempotent producer's identity and per-partition sequence numbers.
#[derive(Default)]
struct IdempotentProducer {
    id: Option<(i64, i16)>,
    sequences: BTreeMap<i32, i32>,
    /// The identity the last send went out under (none if InitProducerId failed); the caller
    /// takes it for the history.
    sent_as: Option<ProducerStamp>,
}

impl IdempotentProducer {
    /// Sends `value`, retrying the identical batch while its fate is unknown. The broker must
    /// answer a retry of a batch it already has with the original offset.
    async fn send(
        &mut self,
        client: &mut Client,
        partition: i32,
        acks: i16,
        value: u64,
        timestamp: i64,
    ) -> Outcome<u64> {
        let (producer_id, epoch) = match self.id {
            Some(id) => id,
            None => {
                let request = InitProducerIdRequest::default()
                    .with_transactional_id(None)
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1);
                match client.call_checked(&request, 4).await {
                    Ok(r) if r.error_code == 0 => {
                        let id = (r.producer_id.0, r.producer_epoch);
                        self.id = Some(id);
                        self.sequences.clear();
                        id
                    }
                    Ok(r) => {
                        return Outcome::Fail(format!("InitProducerId error code {}", r.error_code))
                    }
                    Err(CallError::NotSent(why) | CallError::Unknown(why)) => {
                        return Outcome::Fail(format!("InitProducerId: {why}"))
                    }
                }
            }
        };
        let sequence = *self.sequences.get(&partition).unwrap_or(&0);
        self.sent_as = Some(ProducerStamp { producer_id, epoch });
        let request = produce_request_as(
            partition,
            acks,
            value,
            timestamp,
            Some((producer_id, epoch, sequence)),
        );
        let mut maybe_sent = false;
        let mut last = String::new();
        for attempt in 0..IDEMPOTENT_ATTEMPTS_MAX {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 << attempt.min(4))).await;
            }
            match client.produce(partition, &request).await {
                Ok(p) => {
                    match p.error_code {
                        0 => {
                            self.sequences.insert(partition, sequence.wrapping_add(1));
                            return Outcome::Ok(p.base_offset as u64);
                        }
                        // DUPLICATE_SEQUENCE_NUMBER: a retry of a batch the broker has, whose
                        // offset it can no longer tell (below its log start). Written, as the
                        // Java client takes it, but with no offset to check: the next value
                        // goes on at the next sequence.
                        46 => {
                            self.sequences.insert(partition, sequence.wrapping_add(1));
                            return Outcome::Info(
                                "error code 46: a duplicate, offset unknown".to_string(),
                            );
                        }
                        code if refused_before_write(code) && !maybe_sent => {
                            return Outcome::Fail(format!("error code {code}"));
                        }
                        // The sequence no longer fits what the broker has (an acks=1 batch lost
                        // in a crash, say): start over as a new producer. This value's fate is
                        // unknown if an earlier attempt may have landed.
                        45 | 47 | 59 => {
                            self.id = None;
                            let why = format!("error code {}, producer reset", p.error_code);
                            return if maybe_sent {
                                Outcome::Info(why)
                            } else {
                                Outcome::Fail(why)
                            };
                        }
                        code => {
                            maybe_sent = true;
                            last = format!("error code {code}");
                        }
                    }
                }
                Err(CallError::NotSent(why)) => last = why,
                Err(CallError::Unknown(why)) => {
                    maybe_sent = true;
                    last = why;
                }
            }
        }
        // Gave up: the next value must not reuse this sequence, so start over as a new producer.
        self.id = None;
        if maybe_sent {
            Outcome::Info(format!("{last} after {IDEMPOTENT_ATTEMPTS_MAX} attempts"))
        } else {
            Outcome::Fail(format!("{last} after {IDEMPOTENT_ATTEMPTS_MAX} attempts"))
        }
    }
}

/// One DeleteRecords of `partition` to `offset`, recorded for the retention checker.
async fn delete_records(
    client: &mut Client,
    partition: i32,
    offset: u64,
    source: &str,
    trace: &Trace,
) {
    let invoke_ms = trace.now_ms();
    let outcome = match client.delete_records(partition, offset).await {
        Ok((0, low_watermark)) => Outcome::Ok(low_watermark.max(0) as u64),
        // OFFSET_OUT_OF_RANGE (past the high watermark), UNKNOWN_TOPIC_OR_PARTITION and
        // NOT_LEADER_OR_FOLLOWER are refusals before anything is proposed; any other error
        // (REQUEST_TIMED_OUT: the entry may still commit) leaves it unknown.
        Ok((code, _)) if [1, 3, 6].contains(&code) => Outcome::Fail(format!("error code {code}")),
        Ok((code, _)) => Outcome::Info(format!("error code {code}")),
        Err(CallError::NotSent(why)) => Outcome::Fail(why),
        Err(CallError::Unknown(why)) => Outcome::Info(why),
    };
    let call = DeleteRecordsCall {
        invoke_ms,
        complete_ms: trace.now_ms(),
        offset,
        outcome,
    };
    trace.observe_delete_records(source, partition, call);
}

/// One client process, until `deadline_ms` of simulated time.
pub async fn run_client(
    process: u32,
    bootstrap: Vec<String>,
    params: Params,
    mut rng: Rng,
    trace: Trace,
    deadline_ms: u64,
) -> Vec<Recorded> {
    let source = format!("client-{process}");
    let mut client = Client::new(&bootstrap);
    let mut ops = Vec::new();
    let mut next_value: u64 = 0;
    let all: Vec<i32> = (0..params.partitions).collect();
    let mut cursors: BTreeMap<i32, u64> = all.iter().map(|p| (*p, 0)).collect();
    // Some processes are idempotent producers that retry indeterminate sends, as Kafka
    // clients do: the broker must recognise every retry, even across crashes.
    let mut idempotence = rng
        .chance(params.idempotent_per_mille)
        .then(IdempotentProducer::default);
    // The pipelining producer of this run, if it is this process: its sends go to a sender
    // task (Kafka's sender thread) while the process goes on polling.
    let pipeline = params
        .pipeline
        .as_ref()
        .filter(|p| p.process == process)
        .map(|_| {
            let (queue, jobs) = tokio::sync::mpsc::channel(QUEUED_SENDS_MAX);
            let sender = Sender::new(
                process,
                bootstrap.clone(),
                params.clone(),
                rng.fork(),
                trace.clone(),
                deadline_ms,
            );
            (queue, tokio::spawn(sender.run(jobs)))
        });
    let record = |ops: &mut Vec<Recorded>, kind: OpKind, invoke_ms: u64, trace: &Trace| {
        let complete_ms = trace.now_ms();
        trace.record(&source, "op", describe(&kind));
        ops.push(Recorded {
            process,
            kind,
            invoke_ms,
            complete_ms,
        });
    };
    // The process starts assigned every partition at the beginning (its cursors are 0), so the
    // offsets checker knows where its first reads must start: at the log start.
    let kind = OpKind::Assign {
        keys: all.iter().map(|p| key(*p)).collect(),
        seek_to_beginning: true,
        outcome: Outcome::Ok(()),
    };
    record(&mut ops, kind, trace.now_ms(), &trace);
    // In the `retention` scenario some operations are DeleteRecords (drawn only there, so no
    // other scenario's seeds changed), to an offset between the log start and the high
    // watermark this process last saw.
    let delete_per_mille = params
        .retention
        .as_ref()
        .map_or(0, |r| r.delete_records_per_mille);
    let mut seen: BTreeMap<i32, (u64, u64)> = BTreeMap::new();
    while trace.now_ms() < deadline_ms {
        let invoke_ms = trace.now_ms();
        if delete_per_mille > 0 && rng.chance(delete_per_mille) {
            let partition = *rng.pick(&all);
            let (start, hw) = seen.get(&partition).copied().unwrap_or((0, 0));
            if hw > start {
                let offset = rng.between(start + 1, hw);
                delete_records(&mut client, partition, offset, &source, &trace).await;
            }
        } else {
            let roll = rng.below(1000) as u32;
            if roll < params.send_per_mille {
                let partition = *rng.pick(&all);
                let all_acks = rng.chance(params.acks_all_per_mille);
                let (acks, acks_code) = if all_acks {
                    (Acks::All, -1)
                } else {
                    (Acks::One, 1)
                };
                // Unique per key across the run: the process in the high bits, a counter below.
                let value = (u64::from(process) << 40) | next_value;
                next_value += 1;
                let timestamp = record_timestamp(params.retention.is_some(), &trace, invoke_ms);
                if let Some((queue, _)) = &pipeline {
                    // The sender records the send once it is resolved. Waits while the sender's
                    // queue is full, as a Kafka producer's send does when its buffer is.
                    let job = SendJob {
                        partition,
                        acks,
                        value,
                        invoke_ms,
                    };
                    if queue.send(job).await.is_err() {
                        unreachable!("the sender runs until the queue is closed");
                    }
                } else {
                    let (outcome, producer) = match idempotence.as_mut() {
                        None => (
                            send_once(&mut client, partition, acks_code, value, timestamp).await,
                            None,
                        ),
                        Some(producer) => {
                            let outcome = producer
                                .send(&mut client, partition, acks_code, value, timestamp)
                                .await;
                            (outcome, producer.sent_as.take())
                        }
                    };
                    record(
                        &mut ops,
                        OpKind::Send {
                            key: key(partition),
                            value,
                            acks,
                            outcome,
                            producer,
                        },
                        invoke_ms,
                        &trace,
                    );
                }
            } else if roll < params.send_per_mille + 60 {
                // Reassign: a random non-empty subset of partitions, sometimes seeking to the start.
                let mut keys: Vec<i32> = all.iter().copied().filter(|_| rng.chance(600)).collect();
                if keys.is_empty() {
                    keys.push(*rng.pick(&all));
                }
                let seek = rng.chance(500);
                cursors = keys
                    .iter()
                    .map(|p| {
                        (
                            *p,
                            if seek {
                                0
                            } else {
                                cursors.get(p).copied().unwrap_or(0)
                            },
                        )
                    })
                    .collect();
                let kind = OpKind::Assign {
                    keys: keys.iter().map(|p| key(*p)).collect(),
                    seek_to_beginning: seek,
                    outcome: Outcome::Ok(()),
                };
                record(&mut ops, kind, invoke_ms, &trace);
            } else {
                let mut log_starts = BTreeMap::new();
                let mut high_watermarks = BTreeMap::new();
                let (reads, outcome, reset) =
                    match fetch(&mut client, &cursors, POLL_MAX_WAIT_MS).await {
                        Ok(fetched) => {
                            trace.observe_log_starts(invoke_ms, &fetched.log_starts);
                            log_starts = fetched.log_starts.clone();
                            high_watermarks = fetched.high_watermarks.clone();
                            // Past the last batch returned, like a Kafka consumer, which also steps over
                            // control batches.
                            for (partition, next) in &fetched.next_offsets {
                                if let Some(cursor) = cursors.get_mut(partition) {
                                    *cursor = (*cursor).max(*next);
                                }
                            }
                            let outcome = if fetched.errors.is_empty() {
                                Outcome::Ok(())
                            } else {
                                Outcome::Info(format!("partition errors {:?}", fetched.errors))
                            };
                            (fetched.reads, outcome, !fetched.out_of_range.is_empty())
                        }
                        Err(e) => (Reads::new(), Outcome::Info(e), false),
                    };
                record(&mut ops, OpKind::Poll { reads, outcome }, invoke_ms, &trace);
                if reset {
                    // Out of range (the log lost unsynced records in a crash, or retention moved
                    // the log start past the cursor): like a consumer with
                    // auto.offset.reset=earliest, start over at the log start the fetch reported —
                    // an assignment change for the checker.
                    let invoke_ms = trace.now_ms();
                    let keys: Vec<i32> = cursors.keys().copied().collect();
                    cursors = keys
                        .iter()
                        .map(|p| (*p, log_starts.get(p).copied().unwrap_or(0)))
                        .collect();
                    let kind = OpKind::Assign {
                        keys: keys.iter().map(|p| key(*p)).collect(),
                        seek_to_beginning: true,
                        outcome: Outcome::Ok(()),
                    };
                    record(&mut ops, kind, invoke_ms, &trace);
                }
                for (partition, hw) in &high_watermarks {
                    let entry = seen.entry(*partition).or_default();
                    entry.0 = log_starts.get(partition).copied().unwrap_or(entry.0);
                    entry.1 = *hw;
                }
            }
        }
        let think = rng.between(params.think_ms.0, params.think_ms.1);
        tokio::time::sleep(Duration::from_millis(think)).await;
    }
    if let Some((queue, sender)) = pipeline {
        // Closing the queue lets the sender resolve what is left and return.
        drop(queue);
        ops.extend(sender.await.expect("sender task"));
    }
    ops
}

/// At the end: a fresh consumer reads every partition from the beginning up to its high
/// watermark. Partitions that cannot be read (a damaged batch) stop early; the outcome says so.
/// Also returns the highest high watermark each partition's fetches reported.
pub async fn final_read(
    process: u32,
    bootstrap: &[String],
    partitions: i32,
    trace: &Trace,
) -> (Recorded, BTreeMap<i32, u64>) {
    let invoke_ms = trace.now_ms();
    let mut client = Client::new(bootstrap);
    let mut reads = Reads::new();
    let mut marks: BTreeMap<i32, u64> = BTreeMap::new();
    let mut problems = Vec::new();
    for partition in 0..partitions {
        let mut cursor = 0u64;
        let mut values = Vec::new();
        let mut attempts = 0;
        loop {
            attempts += 1;
            if attempts > 10_000 {
                problems.push(format!(
                    "partition {partition}: gave up after {attempts} fetches"
                ));
                break;
            }
            let cursors = BTreeMap::from([(partition, cursor)]);
            let fetch_invoke_ms = trace.now_ms();
            match fetch(&mut client, &cursors, 0).await {
                Ok(fetched) => {
                    if let Some((_, code)) = fetched.errors.first() {
                        // The leader moved or is being elected: ask again (bounded).
                        let moving = [
                            ErrorCode::LeaderNotAvailable.code(),
                            ErrorCode::NotLeaderOrFollower.code(),
                            ErrorCode::UnknownServerError.code(),
                        ];
                        if moving.contains(code) && attempts <= 100 {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                        problems.push(format!(
                            "partition {partition}: error code {code} at offset {cursor}"
                        ));
                        break;
                    }
                    trace.observe_log_starts(fetch_invoke_ms, &fetched.log_starts);
                    if !fetched.out_of_range.is_empty() {
                        // Retention moved the log start past the cursor: start the partition
                        // over from there (what was read so far sits below it, and a read that
                        // jumped would look like a skip to the checkers).
                        match fetched.log_starts.get(&partition) {
                            Some(&start) if start > cursor => {
                                cursor = start;
                                values.clear();
                                continue;
                            }
                            _ => {}
                        }
                        problems.push(format!(
                            "partition {partition}: offset {cursor} out of range"
                        ));
                        break;
                    }
                    if let Some(read) = fetched.reads.get(&key(partition)) {
                        values.extend_from_slice(read);
                    }
                    if let Some(next) = fetched.next_offsets.get(&partition) {
                        cursor = cursor.max(*next);
                    }
                    let hw = fetched
                        .high_watermarks
                        .get(&partition)
                        .copied()
                        .unwrap_or(0);
                    let mark = marks.entry(partition).or_insert(0);
                    *mark = (*mark).max(hw);
                    if cursor >= hw
                        || (fetched.next_offsets.is_empty() && hw > cursor && attempts > 50)
                    {
                        if cursor < hw {
                            problems.push(format!("partition {partition}: stuck at {cursor} below high watermark {hw}"));
                        }
                        break;
                    }
                }
                Err(e) => {
                    if attempts > 100 {
                        problems.push(format!("partition {partition}: {e}"));
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        reads.insert(key(partition), values);
    }
    let outcome = if problems.is_empty() {
        Outcome::Ok(())
    } else {
        Outcome::Info(problems.join("; "))
    };
    let kind = OpKind::FinalRead { reads, outcome };
    trace.record("final-read", "op", describe(&kind));
    let recorded = Recorded {
        process,
        kind,
        invoke_ms,
        complete_ms: trace.now_ms(),
    };
    (recorded, marks)
}

/// Liveness: once faults have stopped, a fresh client (process `process`) must be able to produce
/// an acks=all record and read it back within `bound`. Its sends are part of the history.
pub async fn liveness(
    process: u32,
    bootstrap: &[String],
    partition: i32,
    bound: Duration,
    trace: &Trace,
) -> (Result<u64, String>, Vec<Recorded>) {
    let start = trace.now_ms();
    let mut client = Client::new(bootstrap);
    let mut ops = Vec::new();
    let mut last_error = String::from("no attempt");
    let mut attempt = 0u64;
    while trace.now_ms() - start < bound.as_millis() as u64 {
        attempt += 1;
        let value = (u64::from(process) << 40) | attempt;
        let invoke_ms = trace.now_ms();
        let outcome = match client
            .produce(
                partition,
                &produce_request(partition, -1, value, TIMESTAMP_BASE_MS),
            )
            .await
        {
            Ok(p) if p.error_code == 0 => Outcome::Ok(p.base_offset as u64),
            Ok(p) => Outcome::Info(format!("error code {}", p.error_code)),
            Err(CallError::NotSent(why) | CallError::Unknown(why)) => Outcome::Info(why),
        };
        let kind = OpKind::Send {
            key: key(partition),
            value,
            acks: Acks::All,
            outcome: outcome.clone(),
            producer: None,
        };
        trace.record("liveness", "op", describe(&kind));
        ops.push(Recorded {
            process,
            kind,
            invoke_ms,
            complete_ms: trace.now_ms(),
        });
        match outcome {
            Outcome::Ok(offset) => {
                let cursors = BTreeMap::from([(partition, offset)]);
                match fetch(&mut client, &cursors, 500).await {
                    Ok(f)
                        if f.reads
                            .get(&key(partition))
                            .is_some_and(|r| r.first() == Some(&(offset, value))) =>
                    {
                        let took = trace.now_ms() - start;
                        trace.record(
                            "liveness",
                            "ok",
                            format!("produced and fetched offset {offset} after {took} ms"),
                        );
                        return (Ok(took), ops);
                    }
                    Ok(_) => last_error = format!("fetch at {offset} did not return the record"),
                    Err(e) => last_error = e,
                }
            }
            Outcome::Info(why) | Outcome::Fail(why) => last_error = why,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (
        Err(format!(
            "no acks=all produce + fetch within {} ms: {last_error}",
            bound.as_millis()
        )),
        ops,
    )
}

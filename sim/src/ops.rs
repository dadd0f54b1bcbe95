//! What a simulated process did: one recorded operation, and the line it makes in the trace and
//! the timeline.

use sluice_core::history::{ConfigOp, GroupOp, Key, OpKind, Outcome, Reads};

/// One recorded operation of one process, before the run merges them into a `History`.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub process: u32,
    pub kind: OpKind,
    pub invoke_ms: u64,
    pub complete_ms: u64,
}

/// An outcome as the trace shows it.
fn outcome<T: std::fmt::Debug>(o: &Outcome<T>) -> String {
    match o {
        Outcome::Ok(v) => format!("ok {v:?}"),
        Outcome::Fail(why) => format!("fail ({why})"),
        Outcome::Info(why) => format!("info ({why})"),
    }
}

/// One line per operation for the trace.
pub fn describe(kind: &OpKind) -> String {
    fn reads(r: &Reads) -> String {
        r.iter()
            .map(|(k, v)| {
                let first = v.first().map_or(String::new(), |(o, _)| o.to_string());
                let last = v.last().map_or(String::new(), |(o, _)| o.to_string());
                format!("{}:{}[{first}..{last}]", k.partition, v.len())
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
    match kind {
        OpKind::Send {
            key,
            value,
            acks,
            outcome: o,
            producer,
        } => {
            let producer = producer.map_or(String::new(), |p| {
                format!(" producer={} epoch={}", p.producer_id, p.epoch)
            });
            format!(
                "send {key} value={value:#x} acks={}{producer} -> {}",
                acks.name(),
                outcome(o)
            )
        }
        OpKind::Poll {
            reads: r,
            outcome: o,
        } => format!("poll {} -> {}", reads(r), outcome(o)),
        OpKind::Assign {
            keys,
            seek_to_beginning,
            ..
        } => {
            let keys: Vec<String> = keys.iter().map(|k| k.partition.to_string()).collect();
            format!(
                "assign [{}] seek_to_beginning={seek_to_beginning}",
                keys.join(",")
            )
        }
        OpKind::FinalRead {
            reads: r,
            outcome: o,
        } => format!("final-read {} -> {}", reads(r), outcome(o)),
        OpKind::Group(op) => describe_group(op),
        OpKind::Config(op) => describe_config(op),
    }
}

/// One line for the trace and the timeline.
pub fn describe_config(op: &ConfigOp) -> String {
    match op {
        ConfigOp::Alter {
            topic,
            set,
            delete,
            outcome: o,
        } => {
            let set: Vec<String> = set.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!(
                "alter-configs {topic} set [{}] delete [{}] -> {}",
                set.join(" "),
                delete.join(" "),
                outcome(o)
            )
        }
        ConfigOp::Replace {
            topic,
            set,
            outcome: o,
        } => {
            let set: Vec<String> = set.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!(
                "alter-configs (legacy, replace) {topic} [{}] -> {}",
                set.join(" "),
                outcome(o)
            )
        }
        ConfigOp::Describe {
            topic,
            node,
            outcome: o,
        } => format!(
            "describe-configs {topic} at broker {node} -> {}",
            outcome(o)
        ),
        ConfigOp::SizeProbe {
            topic,
            limit_bytes,
            batch_bytes,
            outcome: o,
        } => format!(
            "size-probe {topic} batch {batch_bytes} bytes, max.message.bytes {limit_bytes} -> {}",
            outcome(o)
        ),
        ConfigOp::Compaction(p) => {
            let acked = p.sends.iter().filter(|s| s.outcome.is_ok()).count();
            let held: Vec<String> = p
                .replicas
                .iter()
                .map(|r| format!("{}:{}", r.node, r.records.len()))
                .collect();
            format!(
                "compaction-probe {}-{} compact described {}, {} records sent ({acked} ok), \
                 waited {} ms, records held by broker [{}]",
                p.topic,
                p.partition,
                p.compact_described,
                p.sends.len(),
                p.waited_ms,
                held.join(" ")
            )
        }
    }
}

/// One line for the trace and the timeline.
pub fn describe_group(op: &GroupOp) -> String {
    fn outcome<T>(o: &Outcome<T>, ok: impl Fn(&T) -> String) -> String {
        match o {
            Outcome::Ok(v) => format!("ok {}", ok(v)),
            Outcome::Fail(why) => format!("fail ({why})"),
            Outcome::Info(why) => format!("info ({why})"),
        }
    }
    fn keys(keys: &[Key]) -> String {
        let parts: Vec<String> = keys.iter().map(|k| k.partition.to_string()).collect();
        format!("[{}]", parts.join(","))
    }
    match op {
        GroupOp::Join { group, outcome: o } => format!(
            "join {group} -> {}",
            outcome(o, |a| format!(
                "generation {} member {} partitions {}",
                a.generation,
                a.member,
                keys(&a.keys)
            ))
        ),
        GroupOp::Commit {
            group,
            member,
            generation,
            offsets,
            outcome: o,
            ..
        } => {
            let offsets: Vec<String> = offsets
                .iter()
                .map(|(k, o)| format!("{}:{o}", k.partition))
                .collect();
            format!(
                "commit {group} generation {generation} member {member} [{}] -> {}",
                offsets.join(" "),
                outcome(o, |_| String::new())
            )
        }
        GroupOp::OffsetFetch {
            group,
            member,
            generation,
            outcome: o,
        } => format!(
            "offset-fetch {group} generation {generation} member {member} -> {}",
            outcome(o, |positions| {
                let parts: Vec<String> = positions
                    .iter()
                    .map(|p| match p.committed {
                        Some(c) => format!("{}:committed {c} start {}", p.key.partition, p.start),
                        None => format!("{}:none start {}", p.key.partition, p.start),
                    })
                    .collect();
                parts.join(" ")
            })
        ),
        GroupOp::Reset {
            group,
            member,
            generation,
            key,
            from,
            to,
        } => format!("reset {group} generation {generation} member {member} {key} {from} -> {to}"),
        GroupOp::Leave {
            group,
            member,
            outcome: o,
        } => format!(
            "leave {group} member {member} -> {}",
            outcome(o, |_| String::new())
        ),
        GroupOp::Crash { group } => format!("crash (a member of {group} killed)"),
        GroupOp::HighWatermarks { marks } => {
            let parts: Vec<String> = marks
                .iter()
                .map(|(k, hw)| format!("{}:{hw}", k.partition))
                .collect();
            format!("high-watermarks {}", parts.join(" "))
        }
    }
}

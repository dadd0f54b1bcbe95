//! One line per operation, in words: what the simulator's trace and `history.txt` print and what
//! the timeline shows when an operation's bar is hovered. Pure string building, so that the
//! simulator and the Jepsen-style harness describe a history the same way.

use super::{ConfigOp, GroupOp, Key, OpKind, Outcome, Reads};

/// An outcome as the trace shows it.
fn outcome<T: std::fmt::Debug>(o: &Outcome<T>) -> String {
    match o {
        Outcome::Ok(v) => format!("ok {v:?}"),
        Outcome::Fail(why) => format!("fail ({why})"),
        Outcome::Info(why) => format!("info ({why})"),
    }
}

/// One line for one operation, e.g. `send t-0 value=0x2a acks=all -> ok 7`.
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

/// The line for a config operation ([`describe`]).
fn describe_config(op: &ConfigOp) -> String {
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

/// The line for a consumer-group operation ([`describe`]).
fn describe_group(op: &GroupOp) -> String {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::history::{Acks, Assignment, Position, ProducerStamp};

    fn key(partition: i32) -> Key {
        Key::new("sim", partition)
    }

    #[test]
    fn a_send_names_key_value_acks_producer_and_outcome() {
        let plain = OpKind::Send {
            key: key(0),
            value: 0x2a,
            acks: Acks::One,
            outcome: Outcome::Ok(7),
            producer: None,
        };
        assert_eq!(describe(&plain), "send sim-0 value=0x2a acks=1 -> ok 7");
        let fenced = OpKind::Send {
            key: key(1),
            value: 0,
            acks: Acks::All,
            outcome: Outcome::Fail("error code 47".into()),
            producer: Some(ProducerStamp {
                producer_id: 3,
                epoch: 2,
            }),
        };
        assert_eq!(
            describe(&fenced),
            "send sim-1 value=0x0 acks=all producer=3 epoch=2 -> fail (error code 47)"
        );
    }

    #[test]
    fn reads_show_per_partition_count_and_offset_range() {
        let mut reads = Reads::new();
        reads.insert(key(0), vec![(4, 10), (5, 11), (6, 12)]);
        reads.insert(key(2), vec![]);
        let poll = OpKind::Poll {
            reads: reads.clone(),
            outcome: Outcome::Info("timeout".into()),
        };
        assert_eq!(describe(&poll), "poll 0:3[4..6] 2:0[..] -> info (timeout)");
        let final_read = OpKind::FinalRead {
            reads,
            outcome: Outcome::Ok(()),
        };
        assert_eq!(
            describe(&final_read),
            "final-read 0:3[4..6] 2:0[..] -> ok ()"
        );
        let empty = OpKind::Poll {
            reads: Reads::new(),
            outcome: Outcome::Ok(()),
        };
        assert_eq!(describe(&empty), "poll  -> ok ()");
        let assign = OpKind::Assign {
            keys: vec![key(0), key(1)],
            seek_to_beginning: true,
            outcome: Outcome::Ok(()),
        };
        assert_eq!(describe(&assign), "assign [0,1] seek_to_beginning=true");
    }

    #[test]
    fn group_operations_name_group_generation_and_member() {
        let join = OpKind::Group(GroupOp::Join {
            group: "g".into(),
            outcome: Outcome::Ok(Assignment {
                member: "m1".into(),
                generation: 4,
                keys: vec![key(0), key(2)],
            }),
        });
        assert_eq!(
            describe(&join),
            "join g -> ok generation 4 member m1 partitions [0,2]"
        );
        let commit = OpKind::Group(GroupOp::Commit {
            group: "g".into(),
            member: "m1".into(),
            generation: 4,
            offsets: vec![(key(0), 11), (key(2), 9)],
            outcome: Outcome::Ok(()),
            error_code: None,
        });
        assert_eq!(
            describe(&commit),
            "commit g generation 4 member m1 [0:11 2:9] -> ok "
        );
        let fetch = OpKind::Group(GroupOp::OffsetFetch {
            group: "g".into(),
            member: "m1".into(),
            generation: 4,
            outcome: Outcome::Ok(vec![
                Position {
                    key: key(0),
                    committed: Some(11),
                    start: 11,
                },
                Position {
                    key: key(2),
                    committed: None,
                    start: 0,
                },
            ]),
        });
        assert_eq!(
            describe(&fetch),
            "offset-fetch g generation 4 member m1 -> ok 0:committed 11 start 11 2:none start 0"
        );
        let leave = OpKind::Group(GroupOp::Leave {
            group: "g".into(),
            member: "m1".into(),
            outcome: Outcome::Fail("error code 25".into()),
        });
        assert_eq!(
            describe(&leave),
            "leave g member m1 -> fail (error code 25)"
        );
        let crash = OpKind::Group(GroupOp::Crash { group: "g".into() });
        assert_eq!(describe(&crash), "crash (a member of g killed)");
        let marks = OpKind::Group(GroupOp::HighWatermarks {
            marks: vec![(key(0), 277), (key(1), 301)],
        });
        assert_eq!(describe(&marks), "high-watermarks 0:277 1:301");
    }

    #[test]
    fn config_operations_name_topic_and_what_was_set() {
        let alter = OpKind::Config(ConfigOp::Alter {
            topic: "sim".into(),
            set: vec![("segment.bytes".into(), "61970".into())],
            delete: vec!["retention.ms".into()],
            outcome: Outcome::Ok(()),
        });
        assert_eq!(
            describe(&alter),
            "alter-configs sim set [segment.bytes=61970] delete [retention.ms] -> ok ()"
        );
        let replace = OpKind::Config(ConfigOp::Replace {
            topic: "sim".into(),
            set: vec![("segment.ms".into(), "8330".into())],
            outcome: Outcome::Info("timeout".into()),
        });
        assert_eq!(
            describe(&replace),
            "alter-configs (legacy, replace) sim [segment.ms=8330] -> info (timeout)"
        );
        let overrides = BTreeMap::from([("segment.ms".to_string(), "8330".to_string())]);
        let described = OpKind::Config(ConfigOp::Describe {
            topic: "sim".into(),
            node: 2,
            outcome: Outcome::Ok(overrides),
        });
        assert_eq!(
            describe(&described),
            r#"describe-configs sim at broker 2 -> ok {"segment.ms": "8330"}"#
        );
        let probe = OpKind::Config(ConfigOp::SizeProbe {
            topic: "cfg".into(),
            limit_bytes: 9615,
            batch_bytes: 9700,
            outcome: Outcome::Ok(10),
        });
        assert_eq!(
            describe(&probe),
            "size-probe cfg batch 9700 bytes, max.message.bytes 9615 -> ok 10"
        );
    }
}

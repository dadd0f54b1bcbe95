//! `sluice group list|describe|reset-offsets|delete`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::ops::RangeInclusive;

use bytes::{Buf, Bytes};
use kafka_protocol::messages::consumer_protocol_assignment::ConsumerProtocolAssignment;
use kafka_protocol::messages::delete_groups_request::DeleteGroupsRequest;
use kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequest, OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::GroupId;
use kafka_protocol::protocol::{Decodable, Message, StrBytes};
use sluice_core::ErrorCode;
use tokio::time::Instant;

use super::admin::{
    backoff, str_bytes, topic_name, Admin, OffsetResult, EARLIEST, LATEST, RETRIES_MAX,
    UNKNOWN_TOPIC_OR_PARTITION, UNSUPPORTED_VERSION,
};
use super::parse::{parse_datetime_ms, topic_partitions};
use super::table::Table;
use super::{warn, CliError, ResetArgs};

const DESCRIBE_GROUPS_VERSIONS: RangeInclusive<i16> = 0..=5;
const LIST_GROUPS_VERSIONS: RangeInclusive<i16> = 0..=4;
const DELETE_GROUPS_VERSIONS: RangeInclusive<i16> = 0..=2;
/// From v2: a null topic list asks for every committed offset.
const OFFSET_FETCH_VERSIONS: RangeInclusive<i16> = 2..=8;
const OFFSET_COMMIT_VERSIONS: RangeInclusive<i16> = 2..=8;

const COORDINATOR_LOAD_IN_PROGRESS: i16 = ErrorCode::CoordinatorLoadInProgress as i16;
const ILLEGAL_GENERATION: i16 = ErrorCode::IllegalGeneration as i16;
const UNKNOWN_MEMBER_ID: i16 = ErrorCode::UnknownMemberId as i16;
const REBALANCE_IN_PROGRESS: i16 = ErrorCode::RebalanceInProgress as i16;
const FENCED_INSTANCE_ID: i16 = ErrorCode::FencedInstanceId as i16;
const NON_EMPTY_GROUP: i16 = ErrorCode::NonEmptyGroup as i16;
const GROUP_ID_NOT_FOUND: i16 = ErrorCode::GroupIdNotFound as i16;

/// A group as DescribeGroups shows it.
struct Group {
    state: String,
    protocol_type: String,
    protocol: String,
    members: Vec<Member>,
}

struct Member {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    host: String,
    /// The consumer protocol's assignment; `None` when it could not be decoded.
    assignment: Option<Vec<(String, Vec<i32>)>>,
}

type Tp = (String, i32);

fn group_id(group: &str) -> GroupId {
    GroupId(str_bytes(group))
}

fn not_empty(group: &str, state: &str, answer: Option<i16>) -> CliError {
    let answer = answer.map_or_else(String::new, |code| {
        format!(" (the coordinator answered {})", super::error_name(code))
    });
    CliError::kafka(
        NON_EMPTY_GROUP,
        format!("group {group} is not empty (state {state}): stop its consumers first{answer}"),
    )
}

/// The topic partitions in a consumer-protocol assignment (a version, then the message).
/// Versions newer than the protocol crate knows are read as its newest, as Kafka does: later
/// versions only append fields.
pub fn decode_assignment(bytes: &[u8]) -> Option<Vec<(String, Vec<i32>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let mut buf = Bytes::copy_from_slice(bytes);
    if buf.remaining() < 2 {
        return None;
    }
    let version = buf.get_i16();
    if version < 0 {
        return None;
    }
    let version = version.min(ConsumerProtocolAssignment::VERSIONS.max);
    let assignment = ConsumerProtocolAssignment::decode(&mut buf, version).ok()?;
    Some(
        assignment
            .assigned_partitions
            .into_iter()
            .map(|tp| {
                let mut ps = tp.partitions;
                ps.sort_unstable();
                (tp.topic.0.to_string(), ps)
            })
            .collect(),
    )
}

fn format_assignment(assignment: &Option<Vec<(String, Vec<i32>)>>) -> String {
    match assignment {
        None => "(opaque)".to_string(),
        Some(topics) => topics
            .iter()
            .map(|(t, ps)| {
                let ps: Vec<String> = ps.iter().map(|p| p.to_string()).collect();
                format!("{t}:{}", ps.join(","))
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

async fn describe_group(admin: &mut Admin, group: &str) -> Result<Group, CliError> {
    let (response, _) = admin
        .group_call(
            group,
            DESCRIBE_GROUPS_VERSIONS,
            |_| DescribeGroupsRequest::default().with_groups(vec![group_id(group)]),
            |r| r.groups.first().map_or(0, |g| g.error_code),
        )
        .await?;
    let Some(g) = response.groups.into_iter().next() else {
        return Err(CliError::failed("DescribeGroups answered for no group"));
    };
    if g.error_code != 0 {
        let message = g
            .error_message
            .filter(|m| !m.is_empty())
            .map_or_else(|| format!("describing group {group:?}"), |m| m.to_string());
        return Err(CliError::kafka(g.error_code, message));
    }
    let consumer = g.protocol_type.as_str() == "consumer" || g.protocol_type.is_empty();
    Ok(Group {
        state: g.group_state.to_string(),
        protocol_type: g.protocol_type.to_string(),
        protocol: g.protocol_data.to_string(),
        members: g
            .members
            .into_iter()
            .map(|m| Member {
                id: m.member_id.to_string(),
                instance_id: m.group_instance_id.map(|s| s.to_string()),
                client_id: m.client_id.to_string(),
                host: m.client_host.to_string(),
                assignment: if consumer {
                    decode_assignment(&m.member_assignment)
                } else {
                    None
                },
            })
            .collect(),
    })
}

/// The group's committed offsets (`partitions`: those, or `None`: every one it has).
async fn fetch_offsets(
    admin: &mut Admin,
    group: &str,
    partitions: Option<&[Tp]>,
) -> Result<BTreeMap<Tp, i64>, CliError> {
    let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (t, p) in partitions.unwrap_or_default() {
        by_topic.entry(t.clone()).or_default().push(*p);
    }
    let (response, version) = admin
        .group_call(
            group,
            OFFSET_FETCH_VERSIONS,
            |v| {
                if v >= 8 {
                    let topics = partitions.map(|_| {
                        by_topic
                            .iter()
                            .map(|(t, ps)| {
                                OffsetFetchRequestTopics::default()
                                    .with_name(topic_name(t))
                                    .with_partition_indexes(ps.clone())
                            })
                            .collect()
                    });
                    OffsetFetchRequest::default().with_groups(vec![
                        OffsetFetchRequestGroup::default()
                            .with_group_id(group_id(group))
                            .with_topics(topics),
                    ])
                } else {
                    let topics = partitions.map(|_| {
                        by_topic
                            .iter()
                            .map(|(t, ps)| {
                                OffsetFetchRequestTopic::default()
                                    .with_name(topic_name(t))
                                    .with_partition_indexes(ps.clone())
                            })
                            .collect()
                    });
                    OffsetFetchRequest::default()
                        .with_group_id(group_id(group))
                        .with_topics(topics)
                }
            },
            |r| r.groups.first().map_or(r.error_code, |g| g.error_code),
        )
        .await?;
    // (topic, partition, offset, error) whichever layout the version has.
    let rows: Vec<(String, i32, i64, i16)> = if version >= 8 {
        let Some(g) = response.groups.first() else {
            return Err(CliError::failed("OffsetFetch answered for no group"));
        };
        if g.error_code != 0 {
            return Err(CliError::kafka(
                g.error_code,
                format!("fetching the offsets of group {group:?}"),
            ));
        }
        g.topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(|p| {
                    let name = t.name.0.to_string();
                    (name, p.partition_index, p.committed_offset, p.error_code)
                })
            })
            .collect()
    } else {
        if response.error_code != 0 {
            return Err(CliError::kafka(
                response.error_code,
                format!("fetching the offsets of group {group:?}"),
            ));
        }
        response
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions.iter().map(|p| {
                    let name = t.name.0.to_string();
                    (name, p.partition_index, p.committed_offset, p.error_code)
                })
            })
            .collect()
    };
    let mut offsets = BTreeMap::new();
    for (t, p, offset, code) in rows {
        if code != 0 {
            warn(format!(
                "the committed offset of {t}-{p}: {}",
                super::error_name(code)
            ));
        } else if offset >= 0 {
            offsets.insert((t, p), offset);
        }
    }
    Ok(offsets)
}

pub async fn list(
    admin: &mut Admin,
    states: &[String],
    out: &mut dyn Write,
) -> Result<(), CliError> {
    admin.metadata(Some(&[])).await?;
    // group id → (state, protocol type); every coordinator answers for its own groups.
    let mut groups: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut failures: Vec<(i32, String, CliError)> = Vec::new();
    for (id, addr) in admin.brokers() {
        let deadline = Instant::now() + admin.timeout();
        let mut attempt = 0;
        let answer = loop {
            attempt += 1;
            let result = admin
                .call(&addr, LIST_GROUPS_VERSIONS, |v| {
                    let request = ListGroupsRequest::default();
                    if v >= 4 {
                        request.with_states_filter(states.iter().map(|s| str_bytes(s)).collect())
                    } else {
                        request
                    }
                })
                .await;
            match result {
                Ok((r, _))
                    if r.error_code == COORDINATOR_LOAD_IN_PROGRESS
                        && attempt < RETRIES_MAX
                        && Instant::now() < deadline =>
                {
                    backoff(attempt).await
                }
                other => break other,
            }
        };
        match answer {
            Ok((_, version)) if version < 4 && !states.is_empty() => {
                return Err(CliError::kafka(
                    UNSUPPORTED_VERSION,
                    format!("the broker at {addr} cannot filter groups by state (ListGroups v{version})"),
                ));
            }
            Ok((r, _)) if r.error_code != 0 => failures.push((
                id,
                addr.clone(),
                CliError::kafka(r.error_code, "listing its groups"),
            )),
            Ok((r, _)) => {
                for g in r.groups {
                    groups.insert(
                        g.group_id.0.to_string(),
                        (g.group_state.to_string(), g.protocol_type.to_string()),
                    );
                }
            }
            Err(e) => failures.push((id, addr.clone(), e)),
        }
    }
    let mut table = Table::new(&["GROUP", "STATE", "PROTOCOL-TYPE"]);
    for (id, (state, protocol_type)) in groups {
        table.row(vec![id, state, protocol_type]);
    }
    table.write(out)?;
    match failures.into_iter().next() {
        None => Ok(()),
        Some((id, addr, e)) => {
            let detail =
                format!("broker {id} at {addr} did not list its groups, so the list is incomplete");
            Err(match e {
                CliError::Kafka { code, message } => {
                    CliError::kafka(code, format!("{detail}: {message}"))
                }
                CliError::Failed(message) => CliError::failed(format!("{detail}: {message}")),
            })
        }
    }
}

pub async fn describe(admin: &mut Admin, group: &str, out: &mut dyn Write) -> Result<(), CliError> {
    let described = describe_group(admin, group).await?;
    if described.state == "Dead" {
        return Err(CliError::kafka(
            GROUP_ID_NOT_FOUND,
            format!("group {group} does not exist"),
        ));
    }
    let committed = fetch_offsets(admin, group, None).await?;
    let mut owner: BTreeMap<Tp, &Member> = BTreeMap::new();
    for m in &described.members {
        for (t, ps) in m.assignment.iter().flatten() {
            for p in ps {
                owner.insert((t.clone(), *p), m);
            }
        }
    }
    let partitions: Vec<Tp> = committed
        .keys()
        .chain(owner.keys())
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let ends = admin.list_offsets(&partitions, LATEST).await;

    let mut summary = Table::new(&["GROUP", "STATE", "PROTOCOL-TYPE", "PROTOCOL", "MEMBERS"]);
    summary.row(vec![
        group.to_string(),
        described.state.clone(),
        described.protocol_type.clone(),
        described.protocol.clone(),
        described.members.len().to_string(),
    ]);
    summary.write(out)?;
    writeln!(out)?;
    if described.members.is_empty() {
        writeln!(out, "Group {group} has no active members.")?;
    } else {
        let mut members = Table::new(&[
            "MEMBER-ID",
            "GROUP-INSTANCE-ID",
            "CLIENT-ID",
            "HOST",
            "ASSIGNMENT",
        ]);
        for m in &described.members {
            members.row(vec![
                m.id.clone(),
                m.instance_id.clone().unwrap_or_default(),
                m.client_id.clone(),
                m.host.clone(),
                format_assignment(&m.assignment),
            ]);
        }
        members.write(out)?;
    }
    writeln!(out)?;
    let mut offsets = Table::new(&[
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
        "MEMBER-ID",
    ]);
    for tp in &partitions {
        let current = committed.get(tp).copied();
        let end = match ends.get(tp) {
            Some(Ok(end)) => Some(*end),
            Some(Err(e)) => {
                warn(format!("the log end offset of {}-{}: {e}", tp.0, tp.1));
                None
            }
            None => None,
        };
        let lag = match (current, end) {
            (Some(c), Some(e)) => (e - c).max(0).to_string(),
            _ => String::new(),
        };
        offsets.row(vec![
            tp.0.clone(),
            tp.1.to_string(),
            current.map_or_else(String::new, |c| c.to_string()),
            end.map_or_else(String::new, |e| e.to_string()),
            lag,
            owner.get(tp).map_or_else(String::new, |m| m.id.clone()),
        ]);
    }
    offsets.write(out)?;
    Ok(())
}

/// Where `reset-offsets` moves each partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetSpec {
    Earliest,
    Latest,
    Offset(i64),
    ShiftBy(i64),
    /// The first offset at or after this time (ms since the epoch).
    Datetime(i64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResetScope {
    /// Every partition the group has a committed offset for.
    AllTopics,
    /// Topics, each with its partitions (`None`: all of them).
    Topics(Vec<(String, Option<Vec<i32>>)>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetPlan {
    pub group: String,
    pub scope: ResetScope,
    pub spec: ResetSpec,
    pub execute: bool,
}

impl ResetPlan {
    pub fn from_args(args: &ResetArgs) -> Result<ResetPlan, CliError> {
        let scope = if args.all_topics {
            ResetScope::AllTopics
        } else {
            let mut topics: Vec<(String, Option<Vec<i32>>)> = Vec::new();
            for arg in &args.topic {
                let (topic, partitions) = topic_partitions(arg)?;
                if topics.iter().any(|(t, _)| *t == topic) {
                    return Err(CliError::failed(format!("--topic {topic} is given twice")));
                }
                topics.push((topic, partitions));
            }
            ResetScope::Topics(topics)
        };
        let spec = if args.to_earliest {
            ResetSpec::Earliest
        } else if args.to_latest {
            ResetSpec::Latest
        } else if let Some(offset) = args.to_offset {
            ResetSpec::Offset(offset)
        } else if let Some(shift) = args.shift_by {
            ResetSpec::ShiftBy(shift)
        } else if let Some(when) = &args.to_datetime {
            ResetSpec::Datetime(parse_datetime_ms(when)?)
        } else {
            return Err(CliError::failed(
                "say where to: --to-earliest, --to-latest, --to-offset, --shift-by or --to-datetime",
            ));
        };
        Ok(ResetPlan {
            group: args.group.clone(),
            scope,
            spec,
            execute: args.execute,
        })
    }
}

/// The partitions `scope` names, checked against Metadata.
async fn reset_partitions(
    admin: &mut Admin,
    plan: &ResetPlan,
    committed: &BTreeMap<Tp, i64>,
) -> Result<Vec<Tp>, CliError> {
    let topics = match &plan.scope {
        ResetScope::AllTopics => {
            if committed.is_empty() {
                return Err(CliError::failed(format!(
                    "group {} has no committed offsets: name the topics with --topic",
                    plan.group
                )));
            }
            return Ok(committed.keys().cloned().collect());
        }
        ResetScope::Topics(topics) => topics,
    };
    let names: Vec<String> = topics.iter().map(|(t, _)| t.clone()).collect();
    let metadata = admin.metadata(Some(&names)).await?;
    let mut partitions = Vec::new();
    for (topic, wanted) in topics {
        let found = metadata
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic));
        let Some(found) = found else {
            return Err(CliError::failed(format!(
                "the broker did not answer for topic {topic:?}"
            )));
        };
        if found.error_code == UNKNOWN_TOPIC_OR_PARTITION {
            return Err(CliError::kafka(
                found.error_code,
                format!("topic {topic:?} does not exist"),
            ));
        }
        if found.error_code != 0 {
            return Err(CliError::kafka(
                found.error_code,
                format!("topic {topic:?}"),
            ));
        }
        let count = found.partitions.len() as i32;
        match wanted {
            None => partitions.extend((0..count).map(|p| (topic.clone(), p))),
            Some(ps) => {
                if let Some(p) = ps.iter().find(|p| **p >= count) {
                    return Err(CliError::kafka(
                        UNKNOWN_TOPIC_OR_PARTITION,
                        format!("topic {topic:?} has no partition {p} (it has {count})"),
                    ));
                }
                partitions.extend(ps.iter().map(|p| (topic.clone(), *p)));
            }
        }
    }
    Ok(partitions)
}

fn offset_of(results: &BTreeMap<Tp, OffsetResult>, tp: &Tp, what: &str) -> Result<i64, CliError> {
    match results.get(tp) {
        Some(Ok(offset)) => Ok(*offset),
        Some(Err(e)) => Err(e.clone()),
        None => Err(CliError::failed(format!(
            "no {what} offset for {}-{}",
            tp.0, tp.1
        ))),
    }
}

pub async fn reset_offsets(
    admin: &mut Admin,
    plan: &ResetPlan,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let group = &plan.group;
    let described = describe_group(admin, group).await?;
    // Kafka's rule: a group's offsets are reset only while no consumer owns them.
    if !matches!(described.state.as_str(), "Empty" | "Dead") {
        return Err(not_empty(group, &described.state, None));
    }
    let committed = fetch_offsets(admin, group, None).await?;
    let partitions = reset_partitions(admin, plan, &committed).await?;
    let earliest = admin.list_offsets(&partitions, EARLIEST).await;
    let latest = admin.list_offsets(&partitions, LATEST).await;
    let at_time = match plan.spec {
        ResetSpec::Datetime(ms) => admin.list_offsets(&partitions, ms).await,
        _ => BTreeMap::new(),
    };
    let mut moves: Vec<(Tp, Option<i64>, i64)> = Vec::new();
    for tp in &partitions {
        let low = offset_of(&earliest, tp, "earliest")?;
        let high = offset_of(&latest, tp, "latest")?;
        let current = committed.get(tp).copied();
        let target = match plan.spec {
            ResetSpec::Earliest => low,
            ResetSpec::Latest => high,
            ResetSpec::Offset(offset) => offset,
            ResetSpec::ShiftBy(shift) => match current {
                Some(c) => c.saturating_add(shift),
                None => {
                    return Err(CliError::failed(format!(
                        "{}-{} has no committed offset to shift from",
                        tp.0, tp.1
                    )))
                }
            },
            ResetSpec::Datetime(_) => match offset_of(&at_time, tp, "timestamp")? {
                // No record that recent: the end of the log, as Kafka does.
                -1 => high,
                offset => offset,
            },
        };
        let new = target.clamp(low, high.max(low));
        if new != target {
            warn(format!(
                "{}-{}: offset {target} is outside the log [{low}, {high}]; using {new}",
                tp.0, tp.1
            ));
        }
        moves.push((tp.clone(), current, new));
    }
    if plan.execute {
        commit(admin, group, &moves).await?;
    }
    let mut table = Table::new(&[
        "GROUP",
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "NEW-OFFSET",
    ]);
    for ((t, p), current, new) in &moves {
        table.row(vec![
            group.clone(),
            t.clone(),
            p.to_string(),
            current.map_or_else(String::new, |c| c.to_string()),
            new.to_string(),
        ]);
    }
    table.write(out)?;
    if !plan.execute {
        eprintln!("Dry run: nothing was committed. Add --execute to commit these offsets.");
    }
    Ok(())
}

/// OffsetCommit outside any generation (generation -1, no member id), which a coordinator takes
/// only from a group without members.
async fn commit(
    admin: &mut Admin,
    group: &str,
    moves: &[(Tp, Option<i64>, i64)],
) -> Result<(), CliError> {
    let mut by_topic: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
    for ((t, p), _, offset) in moves {
        by_topic.entry(t.as_str()).or_default().push(
            OffsetCommitRequestPartition::default()
                .with_partition_index(*p)
                .with_committed_offset(*offset)
                .with_committed_metadata(Some(StrBytes::default())),
        );
    }
    let topics: Vec<OffsetCommitRequestTopic> = by_topic
        .into_iter()
        .map(|(t, ps)| {
            OffsetCommitRequestTopic::default()
                .with_name(topic_name(t))
                .with_partitions(ps)
        })
        .collect();
    let first_error = |r: &kafka_protocol::messages::OffsetCommitResponse| {
        r.topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .map(|p| p.error_code)
            .find(|c| *c != 0)
            .unwrap_or(0)
    };
    let (response, _) = admin
        .group_call(
            group,
            OFFSET_COMMIT_VERSIONS,
            |_| {
                OffsetCommitRequest::default()
                    .with_group_id(group_id(group))
                    .with_generation_id_or_member_epoch(-1)
                    .with_member_id(StrBytes::default())
                    .with_topics(topics.clone())
            },
            first_error,
        )
        .await?;
    let failed: Vec<(String, i32, i16)> = response
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .filter(|p| p.error_code != 0)
                .map(|p| (t.name.0.to_string(), p.partition_index, p.error_code))
        })
        .collect();
    let Some(&(_, _, code)) = failed.first() else {
        return Ok(());
    };
    if matches!(
        code,
        UNKNOWN_MEMBER_ID | REBALANCE_IN_PROGRESS | ILLEGAL_GENERATION | FENCED_INSTANCE_ID
    ) {
        // A consumer joined since we looked.
        let state = match describe_group(admin, group).await {
            Ok(g) => g.state,
            Err(_) => "unknown".to_string(),
        };
        return Err(not_empty(group, &state, Some(code)));
    }
    let which: Vec<String> = failed
        .iter()
        .map(|(t, p, c)| format!("{t}-{p} ({})", super::error_name(*c)))
        .collect();
    Err(CliError::kafka(
        code,
        format!(
            "{} of {} offsets were not committed: {}",
            failed.len(),
            moves.len(),
            which.join(", ")
        ),
    ))
}

pub async fn delete(
    admin: &mut Admin,
    groups: &[String],
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut failures: Vec<CliError> = Vec::new();
    for group in groups {
        let result = admin
            .group_call(
                group,
                DELETE_GROUPS_VERSIONS,
                |_| DeleteGroupsRequest::default().with_groups_names(vec![group_id(group)]),
                |r| r.results.first().map_or(0, |x| x.error_code),
            )
            .await;
        let code = match result {
            Err(e) => {
                failures.push(e);
                continue;
            }
            Ok((r, _)) => r.results.first().map_or(0, |x| x.error_code),
        };
        match code {
            0 => writeln!(out, "Deleted group {group}.")?,
            NON_EMPTY_GROUP => {
                let state = match describe_group(admin, group).await {
                    Ok(g) => g.state,
                    Err(_) => "unknown".to_string(),
                };
                failures.push(not_empty(group, &state, None));
            }
            GROUP_ID_NOT_FOUND => failures.push(CliError::kafka(
                code,
                format!("group {group} does not exist"),
            )),
            code => failures.push(CliError::kafka(code, format!("deleting group {group}"))),
        }
    }
    match failures.len() {
        0 => Ok(()),
        1 => Err(failures.remove(0)),
        n => Err(CliError::failed(format!(
            "{n} of {} groups were not deleted: {}",
            groups.len(),
            failures
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
    use kafka_protocol::protocol::Encodable;

    #[test]
    fn assignments_decode_and_garbage_does_not_panic() {
        let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
            TopicPartition::default()
                .with_topic(topic_name("t"))
                .with_partitions(vec![2, 0]),
        ]);
        for version in 0..=3i16 {
            let mut buf = bytes::BytesMut::new();
            bytes::BufMut::put_i16(&mut buf, version);
            assignment.encode(&mut buf, version).unwrap();
            assert_eq!(
                decode_assignment(&buf),
                Some(vec![("t".to_string(), vec![0, 2])]),
                "v{version}"
            );
            // A newer version than the crate knows is read as the newest.
            buf[0..2].copy_from_slice(&7i16.to_be_bytes());
            assert!(decode_assignment(&buf).is_some());
        }
        assert_eq!(decode_assignment(b""), Some(Vec::new()));
        assert_eq!(decode_assignment(b"\x00"), None);
        assert_eq!(decode_assignment(b"\xff\xff"), None);
        assert_eq!(decode_assignment(b"\x00\x00\x7f\xff\xff\xff"), None);
        assert_eq!(
            format_assignment(&Some(vec![("a".into(), vec![0, 1]), ("b".into(), vec![3])])),
            "a:0,1 b:3"
        );
    }
}

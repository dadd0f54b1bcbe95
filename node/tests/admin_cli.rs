//! `sluice topic …` and `sluice group …`, the built binary, against an in-process broker on a
//! loopback port: what an operator runs and reads (tables on stdout, `KAFKA_ERROR: message` on
//! stderr, exit status 1), checked against what the broker then holds (Metadata, OffsetFetch).
#![cfg(not(madsim))]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::{
    ConsumerProtocolAssignment, TopicPartition as AssignedPartitions,
};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    BrokerId, FetchRequest, FindCoordinatorRequest, GroupId, JoinGroupRequest, LeaveGroupRequest,
    OffsetCommitRequest, OffsetFetchRequest, ProduceRequest, SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use sluice_core::batch::{BatchBuilder, NewRecord};
use sluice_core::testing::MemStorage;
use sluice_node::broker::Broker;
use sluice_node::client::Connection;
use sluice_node::config::{Config, ServeArgs};
use tokio::runtime::Runtime;

/// Record timestamps: record `i` of a batch has `BASE_TIMESTAMP_MS + i`.
const BASE_TIMESTAMP_MS: i64 = 1_700_000_000_000;

/// A broker on its own runtime, stopped when dropped.
struct Node {
    runtime: Option<Runtime>,
    addr: String,
}

impl Node {
    fn start(args: ServeArgs) -> Node {
        let mut config = Config::resolve(ServeArgs {
            listen: Some("127.0.0.1:0".into()),
            ..args
        })
        .unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        config.advertised_listener = addr.clone();
        let broker = Broker::open(config.clone(), MemStorage::new()).unwrap();
        runtime.spawn(sluice_node::server::run(config, broker, listener));
        Node {
            runtime: Some(runtime),
            addr,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn client_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `sluice <args> --bootstrap-server <addr>`.
fn sluice(addr: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .args(["--bootstrap-server", addr, "--timeout-ms", "5000"])
        .env_remove("SLUICE_BOOTSTRAP_SERVER")
        .env("SLUICE_LOG", "warn")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Stdout of a command that must succeed.
fn ok(addr: &str, args: &[&str]) -> String {
    let out = sluice(addr, args);
    assert!(
        out.status.success(),
        "sluice {args:?} failed ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Stderr of a command that must fail with status 1.
fn fails(addr: &str, args: &[&str]) -> String {
    let out = sluice(addr, args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "sluice {args:?} should fail:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

/// The rows of the table whose header line starts with `first_column`, cells split on spaces
/// (no cell of these tests holds one).
fn table(stdout: &str, first_column: &str) -> Vec<Vec<String>> {
    let mut lines = stdout
        .lines()
        .skip_while(|l| l.split_whitespace().next() != Some(first_column));
    assert!(
        lines.next().is_some(),
        "no {first_column} table in:\n{stdout}"
    );
    lines
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

fn s(x: &str) -> StrBytes {
    StrBytes::from_string(x.to_string())
}

fn name(x: &str) -> TopicName {
    TopicName(s(x))
}

async fn produce(c: &mut Connection, topic: &str, partition: i32, count: u8) {
    let mut b = BatchBuilder::new(BASE_TIMESTAMP_MS);
    for i in 0..count {
        b.push(&NewRecord {
            timestamp: BASE_TIMESTAMP_MS + i64::from(i),
            key: Some(format!("k{i}").into_bytes()),
            value: Some(format!("v{i}").into_bytes()),
            headers: Vec::new(),
        });
    }
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(Bytes::from(b.build())))])]);
    let response = c.call(&request, 9).await.unwrap();
    let p = &response.responses[0].partition_responses[0];
    assert_eq!(p.error_code, 0, "produce to {topic}-{partition}");
}

/// Asks FindCoordinator until `__consumer_offsets` exists and leads (the first ask creates it).
async fn wait_for_coordinator(c: &mut Connection, group: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let request = FindCoordinatorRequest::default().with_key(s(group));
        let response = c.call(&request, 3).await.unwrap();
        if response.error_code == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no coordinator for {group}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Commits outside any generation, as an admin tool does.
async fn commit(c: &mut Connection, group: &str, topic: &str, offsets: &[(i32, i64)]) {
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(name(topic))
            .with_partitions(
                offsets
                    .iter()
                    .map(|(p, o)| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(*p)
                            .with_committed_offset(*o)
                    })
                    .collect(),
            )]);
    let response = c.call(&request, 8).await.unwrap();
    for p in &response.topics[0].partitions {
        assert_eq!(
            p.error_code, 0,
            "commit {group} {topic}-{}",
            p.partition_index
        );
    }
}

/// The committed offsets of `topic`'s partitions 0..n (-1: none).
async fn committed(c: &mut Connection, group: &str, topic: &str, n: i32) -> Vec<i64> {
    let request =
        OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(s(group)))
            .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                .with_name(name(topic))
                .with_partition_indexes((0..n).collect())]))]);
    let response = c.call(&request, 8).await.unwrap();
    assert_eq!(response.groups[0].error_code, 0);
    let mut partitions = response.groups[0].topics[0].partitions.clone();
    partitions.sort_by_key(|p| p.partition_index);
    partitions.iter().map(|p| p.committed_offset).collect()
}

/// A consumer-protocol assignment (version 0) of `partitions` of `topic`.
fn assignment(topic: &str, partitions: Vec<i32>) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    ConsumerProtocolAssignment::default()
        .with_assigned_partitions(vec![AssignedPartitions::default()
            .with_topic(name(topic))
            .with_partitions(partitions)])
        .encode(&mut buf, 0)
        .unwrap();
    buf.freeze()
}

#[test]
fn topics_are_created_listed_described_altered_and_deleted() {
    let node = Node::start(ServeArgs::default());
    let addr = node.addr.as_str();

    let out = ok(
        addr,
        &[
            "topic",
            "create",
            "--topic",
            "orders",
            "--partitions",
            "3",
            "--replication-factor",
            "1",
            "--config",
            "retention.ms=3600000",
        ],
    );
    assert_eq!(out, "Created topic orders.\n");
    let err = fails(addr, &["topic", "create", "--topic", "orders"]);
    assert!(
        err.starts_with("sluice topic create: TOPIC_ALREADY_EXISTS: "),
        "{err}"
    );
    ok(
        addr,
        &["topic", "create", "--topic", "orders", "--if-not-exists"],
    );
    let err = fails(
        addr,
        &["topic", "create", "--topic", "bad", "--partitions", "0"],
    );
    assert!(
        err.starts_with("sluice topic create: INVALID_PARTITIONS: "),
        "{err}"
    );

    // Looking a group up creates `__consumer_offsets`, which lists hide unless asked.
    let err = fails(addr, &["group", "describe", "--group", "nobody"]);
    assert_eq!(
        err,
        "sluice group describe: GROUP_ID_NOT_FOUND: group nobody does not exist\n"
    );
    assert_eq!(ok(addr, &["topic", "list"]), "orders\n");
    assert_eq!(
        ok(addr, &["topic", "list", "--include-internal"]),
        "__consumer_offsets\norders\n"
    );

    let out = ok(addr, &["topic", "describe", "--topic", "orders"]);
    let summary = table(&out, "TOPIC");
    assert_eq!(summary.len(), 1, "{out}");
    assert_eq!(summary[0][0], "orders");
    assert_eq!(summary[0][1].len(), 36, "a topic id: {out}");
    assert_eq!(summary[0][2..], row(&["3", "1", "retention.ms=3600000"]));
    let partitions = table(out.split("\n\n").nth(1).unwrap(), "TOPIC");
    assert_eq!(
        partitions,
        vec![
            row(&["orders", "0", "0", "0", "0", "-"]),
            row(&["orders", "1", "0", "0", "0", "-"]),
            row(&["orders", "2", "0", "0", "0", "-"]),
        ],
        "{out}"
    );

    let out = ok(
        addr,
        &[
            "topic",
            "alter-config",
            "--topic",
            "orders",
            "--add-config",
            "segment.bytes=1048576,max.message.bytes=65536",
            "--delete-config",
            "retention.ms",
        ],
    );
    assert_eq!(out, "Completed updating config for topic orders.\n");
    let out = ok(addr, &["topic", "describe"]);
    assert_eq!(
        table(&out, "TOPIC")[0][4],
        "max.message.bytes=65536,segment.bytes=1048576",
        "{out}"
    );
    let err = fails(
        addr,
        &[
            "topic",
            "alter-config",
            "--topic",
            "orders",
            "--add-config",
            "retention.ms=soon",
        ],
    );
    assert!(
        err.starts_with("sluice topic alter-config: INVALID_CONFIG: "),
        "{err}"
    );
    let err = fails(
        addr,
        &[
            "topic",
            "alter-config",
            "--topic",
            "missing",
            "--delete-config",
            "retention.ms",
        ],
    );
    assert!(
        err.starts_with("sluice topic alter-config: UNKNOWN_TOPIC_OR_PARTITION: "),
        "{err}"
    );
    let err = fails(addr, &["topic", "describe", "--topic", "missing"]);
    assert_eq!(
        err,
        "sluice topic describe: UNKNOWN_TOPIC_OR_PARTITION: topic \"missing\" does not exist\n"
    );

    assert_eq!(
        ok(addr, &["topic", "delete", "--topic", "orders"]),
        "Deleted topic orders.\n"
    );
    assert_eq!(ok(addr, &["topic", "list"]), "");
    let err = fails(addr, &["topic", "delete", "--topic", "orders"]);
    assert!(
        err.starts_with("sluice topic delete: UNKNOWN_TOPIC_OR_PARTITION: "),
        "{err}"
    );
    ok(
        addr,
        &["topic", "delete", "--topic", "orders", "--if-exists"],
    );
}

/// The values of `topic`-`partition` from offset 0, as a consumer reads them.
async fn read_values(c: &mut Connection, topic: &str, partition: i32) -> Vec<String> {
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)
                .with_current_leader_epoch(-1)])]);
    let response = c.call(&request, 12).await.unwrap();
    let p = &response.responses[0].partitions[0];
    assert_eq!(p.error_code, 0, "fetch {topic}-{partition}");
    let records = p.records.clone().unwrap_or_default();
    let mut values = Vec::new();
    for (header, range) in sluice_core::batch::split_batches(&records).unwrap() {
        if header.is_control() {
            continue;
        }
        for r in sluice_core::batch::Records::new(&records[range]).unwrap() {
            let value = r.unwrap().value.unwrap_or_default();
            values.push(String::from_utf8_lossy(value).into_owned());
        }
    }
    values
}

#[test]
fn topic_alter_adds_partitions_that_take_records_at_once() {
    let node = Node::start(ServeArgs::default());
    let addr = node.addr.as_str();
    ok(
        addr,
        &["topic", "create", "--topic", "grow", "--partitions", "1"],
    );
    assert_eq!(
        ok(addr, &["topic", "alter", "grow", "--partitions", "3"]),
        "Topic grow now has 3 partitions.\n"
    );
    client_runtime().block_on(async {
        let mut c = Connection::connect(addr).await.unwrap();
        produce(&mut c, "grow", 2, 3).await;
        assert_eq!(read_values(&mut c, "grow", 2).await, ["v0", "v1", "v2"]);
    });
    let out = ok(addr, &["topic", "describe", "--topic", "grow"]);
    assert_eq!(table(&out, "TOPIC")[0][2..4], row(&["3", "1"]), "{out}");
    let partitions = table(out.split("\n\n").nth(1).unwrap(), "TOPIC");
    assert_eq!(
        partitions,
        vec![
            row(&["grow", "0", "0", "0", "0", "-"]),
            row(&["grow", "1", "0", "0", "0", "-"]),
            row(&["grow", "2", "0", "0", "0", "-"]),
        ],
        "{out}"
    );

    assert_eq!(
        ok(
            addr,
            &["topic", "alter", "--topic", "grow", "--partitions", "4"]
        ),
        "Topic grow now has 4 partitions.\n"
    );
    assert_eq!(
        fails(addr, &["topic", "alter", "grow", "--partitions", "2"]),
        "sluice topic alter: INVALID_PARTITIONS: The topic grow currently has 4 partition(s); 2 \
         would not be an increase.\n"
    );
    assert_eq!(
        fails(addr, &["topic", "alter", "grow", "--partitions", "4"]),
        "sluice topic alter: INVALID_PARTITIONS: Topic already has 4 partition(s).\n"
    );
    assert_eq!(
        fails(addr, &["topic", "alter", "missing", "--partitions", "2"]),
        "sluice topic alter: UNKNOWN_TOPIC_OR_PARTITION: topic \"missing\" does not exist\n"
    );
    // Looking a group up creates `__consumer_offsets`, whose partition count is fixed.
    fails(addr, &["group", "describe", "--group", "nobody"]);
    let err = fails(
        addr,
        &["topic", "alter", "__consumer_offsets", "--partitions", "64"],
    );
    assert!(
        err.starts_with("sluice topic alter: INVALID_REQUEST: "),
        "{err}"
    );
    // The topic once, by name or by --topic; and a count.
    let status = |args: &[&str]| sluice(addr, args).status.code();
    assert_eq!(status(&["topic", "alter", "grow"]), Some(2));
    assert_eq!(status(&["topic", "alter", "--partitions", "5"]), Some(2));
    assert_eq!(
        status(&[
            "topic",
            "alter",
            "grow",
            "--topic",
            "grow",
            "--partitions",
            "5"
        ]),
        Some(2)
    );
}

#[test]
fn group_lag_reset_offsets_and_delete() {
    let node = Node::start(ServeArgs {
        group_initial_rebalance_delay_ms: Some(0),
        ..ServeArgs::default()
    });
    let addr = node.addr.as_str();
    let rt = client_runtime();
    let mut c = rt.block_on(Connection::connect(addr)).unwrap();
    ok(
        addr,
        &["topic", "create", "--topic", "events", "--partitions", "2"],
    );
    // Records start at Kafka offset 0 (the leader's term-start entry takes none): the log end is
    // 10 and 4.
    rt.block_on(async {
        produce(&mut c, "events", 0, 10).await;
        produce(&mut c, "events", 1, 4).await;
        wait_for_coordinator(&mut c, "billing").await;
        commit(&mut c, "billing", "events", &[(0, 4), (1, 4)]).await;
    });

    let out = ok(addr, &["group", "describe", "--group", "billing"]);
    assert_eq!(
        table(&out, "GROUP"),
        vec![row(&["billing", "Empty", "-", "-", "0"])],
        "{out}"
    );
    assert!(
        out.contains("Group billing has no active members."),
        "{out}"
    );
    assert_eq!(
        table(&out, "TOPIC"),
        vec![
            row(&["events", "0", "4", "10", "6", "-"]),
            row(&["events", "1", "4", "4", "0", "-"]),
        ],
        "{out}"
    );
    assert!(ok(addr, &["group", "list"]).contains("billing  Empty"));

    // A dry run shows the new offsets and commits nothing.
    let out = sluice(
        addr,
        &[
            "group",
            "reset-offsets",
            "--group",
            "billing",
            "--topic",
            "events",
            "--to-earliest",
        ],
    );
    assert!(out.status.success());
    assert_eq!(
        table(&text(&out.stdout), "GROUP"),
        vec![
            row(&["billing", "events", "0", "4", "0"]),
            row(&["billing", "events", "1", "4", "0"]),
        ]
    );
    assert!(
        text(&out.stderr).contains("Dry run"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        rt.block_on(committed(&mut c, "billing", "events", 2)),
        [4, 4]
    );

    let reset = |args: &[&str]| {
        let mut all = vec!["group", "reset-offsets", "--group", "billing"];
        all.extend_from_slice(args);
        all.push("--execute");
        ok(addr, &all)
    };
    reset(&["--all-topics", "--to-earliest"]);
    assert_eq!(
        rt.block_on(committed(&mut c, "billing", "events", 2)),
        [0, 0]
    );
    reset(&["--topic", "events:1", "--shift-by", "2"]);
    assert_eq!(
        rt.block_on(committed(&mut c, "billing", "events", 2)),
        [0, 2]
    );
    // Past the log end: clamped to it, as Kafka does.
    reset(&["--topic", "events:0", "--to-offset", "99"]);
    assert_eq!(
        rt.block_on(committed(&mut c, "billing", "events", 2)),
        [10, 2]
    );
    reset(&["--topic", "events", "--shift-by", "-3"]);
    assert_eq!(
        rt.block_on(committed(&mut c, "billing", "events", 2)),
        [7, 0]
    );
    // Record i has timestamp BASE + i ms: the first at or after BASE + 5 ms is record 5 at
    // offset 5; partition 1 has nothing that recent and goes to its end.
    reset(&["--all-topics", "--to-datetime", "2023-11-14T22:13:20.005Z"]);
    assert_eq!(
        rt.block_on(committed(&mut c, "billing", "events", 2)),
        [5, 4]
    );
    reset(&["--topic", "events", "--to-latest"]);
    assert_eq!(
        rt.block_on(committed(&mut c, "billing", "events", 2)),
        [10, 4]
    );
    let err = fails(
        addr,
        &[
            "group",
            "reset-offsets",
            "--group",
            "billing",
            "--topic",
            "events:7",
            "--to-earliest",
        ],
    );
    assert!(err.contains("UNKNOWN_TOPIC_OR_PARTITION"), "{err}");

    // A member joins and gets both partitions: describe shows it, and resets and deletes are
    // refused while it is there.
    let member = rt.block_on(async {
        let join = |member: &str| {
            JoinGroupRequest::default()
                .with_group_id(GroupId(s("billing")))
                .with_session_timeout_ms(60_000)
                .with_rebalance_timeout_ms(60_000)
                .with_member_id(s(member))
                .with_protocol_type(s("consumer"))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(s("range"))
                    .with_metadata(Bytes::new())])
        };
        let first = c.call(&join(""), 5).await.unwrap();
        assert_eq!(first.error_code, 79, "MEMBER_ID_REQUIRED");
        let joined = c.call(&join(first.member_id.as_str()), 5).await.unwrap();
        assert_eq!(joined.error_code, 0);
        let sync = SyncGroupRequest::default()
            .with_group_id(GroupId(s("billing")))
            .with_generation_id(joined.generation_id)
            .with_member_id(joined.member_id.clone())
            .with_assignments(vec![SyncGroupRequestAssignment::default()
                .with_member_id(joined.member_id.clone())
                .with_assignment(assignment("events", vec![0, 1]))]);
        assert_eq!(c.call(&sync, 3).await.unwrap().error_code, 0);
        joined.member_id.to_string()
    });
    assert!(
        member.starts_with("sluice-"),
        "{member}: the client id, then a unique part"
    );
    let out = ok(addr, &["group", "describe", "--group", "billing"]);
    assert_eq!(
        table(&out, "GROUP"),
        vec![row(&["billing", "Stable", "consumer", "range", "1"])],
        "{out}"
    );
    assert_eq!(
        table(&out, "MEMBER-ID"),
        vec![row(&[&member, "-", "sluice", "/127.0.0.1", "events:0,1"])],
        "{out}"
    );
    assert_eq!(
        table(&out, "TOPIC"),
        vec![
            row(&["events", "0", "10", "10", "0", &member]),
            row(&["events", "1", "4", "4", "0", &member]),
        ],
        "{out}"
    );
    let err = fails(
        addr,
        &[
            "group",
            "reset-offsets",
            "--group",
            "billing",
            "--all-topics",
            "--to-earliest",
            "--execute",
        ],
    );
    assert_eq!(
        err,
        "sluice group reset-offsets: NON_EMPTY_GROUP: group billing is not empty (state Stable): \
         stop its consumers first\n"
    );
    assert_eq!(
        rt.block_on(committed(&mut c, "billing", "events", 2)),
        [10, 4]
    );
    let err = fails(addr, &["group", "delete", "--group", "billing"]);
    assert!(
        err.starts_with("sluice group delete: NON_EMPTY_GROUP: group billing is not empty"),
        "{err}"
    );

    rt.block_on(async {
        let leave = LeaveGroupRequest::default()
            .with_group_id(GroupId(s("billing")))
            .with_members(vec![MemberIdentity::default().with_member_id(s(&member))]);
        assert_eq!(c.call(&leave, 3).await.unwrap().error_code, 0);
    });
    assert_eq!(
        ok(addr, &["group", "delete", "--group", "billing"]),
        "Deleted group billing.\n"
    );
    assert_eq!(
        ok(addr, &["group", "list"]),
        "GROUP  STATE  PROTOCOL-TYPE\n"
    );
    let err = fails(addr, &["group", "describe", "--group", "billing"]);
    assert!(err.contains("GROUP_ID_NOT_FOUND"), "{err}");
    assert_eq!(
        rt.block_on(committed(&mut c, "billing", "events", 2)),
        [-1, -1]
    );
}

#[test]
fn bad_input_and_unreachable_brokers_fail_cleanly() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .env_remove("SLUICE_BOOTSTRAP_SERVER")
            .output()
            .unwrap()
    };
    // Nothing listens on port 1.
    let out = run(&["topic", "list", "--bootstrap-server", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("sluice topic list: no broker reachable: 127.0.0.1:1: "),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["group", "list", "--bootstrap-server", "nohost"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "sluice group list: --bootstrap-server: \"nohost\" is not HOST:PORT\n"
    );

    // A listener that never answers: the command gives up after its timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let started = Instant::now();
    let out = run(&[
        "group",
        "describe",
        "--group",
        "g",
        "--bootstrap-server",
        &silent_addr,
        "--timeout-ms",
        "300",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no answer to ApiVersions within 300 ms"),
        "{}",
        text(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(silent);

    // Command-line mistakes are clap's: status 2.
    let out = run(&["group", "reset-offsets", "--group", "g", "--all-topics"]);
    assert_eq!(out.status.code(), Some(2), "no --to-…");
    let out = run(&[
        "group",
        "reset-offsets",
        "--group",
        "g",
        "--all-topics",
        "--to-earliest",
        "--execute",
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(2), "--execute with --dry-run");
    let out = run(&["topic", "alter-config", "--topic", "t"]);
    assert_eq!(out.status.code(), Some(2), "nothing to alter");
    // A value clap accepts but the CLI cannot use: status 1, before any connection.
    let out = run(&[
        "group",
        "reset-offsets",
        "--group",
        "g",
        "--all-topics",
        "--to-datetime",
        "yesterday",
        "--bootstrap-server",
        "127.0.0.1:1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("sluice group reset-offsets: --to-datetime \"yesterday\""),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn topic_delete_records_moves_the_start_of_a_partition() {
    let node = Node::start(ServeArgs::default());
    let addr = node.addr.as_str();
    ok(
        addr,
        &["topic", "create", "--topic", "cut", "--partitions", "1"],
    );
    client_runtime().block_on(async {
        let mut c = Connection::connect(addr).await.unwrap();
        produce(&mut c, "cut", 0, 5).await;
    });
    let delete = |offset: &'static str| {
        [
            "topic",
            "delete-records",
            "--topic",
            "cut",
            "--partition",
            "0",
            "--offset",
            offset,
        ]
    };
    assert_eq!(
        ok(addr, &delete("2")),
        "Partition cut-0 now starts at offset 2.\n"
    );
    // -1 is the high watermark; a lower offset leaves the start where it is.
    assert_eq!(
        ok(addr, &delete("-1")),
        "Partition cut-0 now starts at offset 5.\n"
    );
    assert_eq!(
        ok(addr, &delete("1")),
        "Partition cut-0 now starts at offset 5.\n"
    );
    assert_eq!(
        fails(addr, &delete("6")),
        "sluice topic delete-records: OFFSET_OUT_OF_RANGE: deleting records of cut-0 below 6\n"
    );
}

//! The group coordinator against scenarios Kafka's own coordinator tests walk through, and a
//! random walk that checks its invariants after every step.

use proptest::prelude::*;

use super::*;
use crate::rng::Rng;
use crate::ErrorCode;

const SESSION_MS: i32 = 10_000;
const REBALANCE_MS: i32 = 30_000;

/// Both clocks at `ms` (the tests move them together).
fn at(ms: u64) -> crate::time::Now {
    crate::time::Now::new(crate::time::Instant::from_millis(ms), ms)
}

/// A coordinator with a log: appends land at once, and `commit` moves the high watermark to the
/// end, as a Raft group would once a majority fsynced.
struct Harness {
    c: GroupCoordinator,
    now: u64,
    next_request: RequestId,
    /// (offset, key, value) of every appended record.
    log: Vec<(u64, Vec<u8>, Option<Vec<u8>>)>,
    high_watermark: u64,
    replies: Vec<(RequestId, Reply)>,
    /// Append results to report instead of success (e.g. NOT_COORDINATOR).
    fail_appends: Option<ErrorCode>,
}

impl Harness {
    fn new(config: CoordinatorConfig) -> Harness {
        Harness {
            c: GroupCoordinator::new(config, Rng::new(7), at(0)),
            now: 0,
            next_request: 0,
            log: Vec::new(),
            high_watermark: 0,
            replies: Vec::new(),
            fail_appends: None,
        }
    }

    fn no_delay() -> Harness {
        Harness::new(CoordinatorConfig {
            initial_rebalance_delay_ms: 0,
            ..CoordinatorConfig::default()
        })
    }

    fn drain(&mut self) {
        while let Some(out) = self.c.poll_output() {
            match out {
                Output::Append { write, records } => {
                    if let Some(code) = self.fail_appends {
                        self.c.appended(write, Err(code));
                        continue;
                    }
                    for r in records {
                        let (k, v) = r.encode();
                        self.log.push((self.log.len() as u64, k, v));
                    }
                    self.c.appended(write, Ok(self.log.len() as u64 - 1));
                }
                Output::Reply { request, reply } => self.replies.push((request, reply)),
            }
        }
        self.c.check_invariants();
    }

    fn commit(&mut self) {
        self.high_watermark = self.log.len() as u64;
        self.c.on_high_watermark(at(self.now), self.high_watermark);
        self.drain();
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
        self.c.tick(at(self.now));
        self.drain();
    }

    fn take_reply(&mut self, request: RequestId) -> Option<Reply> {
        let at = self.replies.iter().position(|(r, _)| *r == request)?;
        Some(self.replies.remove(at).1)
    }

    fn join_request(&mut self, member_id: &str, instance: Option<&str>) -> RequestId {
        let request = self.next_request;
        self.next_request += 1;
        let req = JoinRequest {
            group_id: "g".into(),
            member_id: member_id.into(),
            instance_id: instance.map(str::to_string),
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: SESSION_MS,
            rebalance_timeout_ms: REBALANCE_MS,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), subscription(&["t"]))],
            require_known_member_id: true,
        };
        self.c.join(at(self.now), request, req);
        self.drain();
        request
    }

    fn join_reply(&mut self, request: RequestId) -> Option<JoinResponse> {
        match self.take_reply(request)? {
            Reply::Join(j) => Some(j),
            other => panic!("expected a join reply, got {other:?}"),
        }
    }

    /// A first join: MEMBER_ID_REQUIRED, then the join with the given id (left waiting).
    fn join_new(&mut self) -> (String, RequestId) {
        let first = self.join_request("", None);
        let reply = self.join_reply(first).expect("answered at once");
        assert_eq!(reply.error, ErrorCode::MemberIdRequired);
        assert!(!reply.member_id.is_empty());
        let second = self.join_request(&reply.member_id, None);
        (reply.member_id, second)
    }

    fn sync_request(
        &mut self,
        member: &str,
        generation: i32,
        assignments: Vec<(String, Vec<u8>)>,
    ) -> RequestId {
        let request = self.next_request;
        self.next_request += 1;
        let req = SyncRequest {
            group_id: "g".into(),
            member_id: member.into(),
            instance_id: None,
            generation,
            protocol_type: Some("consumer".into()),
            protocol_name: Some("range".into()),
            assignments,
        };
        self.c.sync(at(self.now), request, req);
        self.drain();
        request
    }

    fn sync_reply(&mut self, request: RequestId) -> Option<SyncResponse> {
        match self.take_reply(request)? {
            Reply::Sync(s) => Some(s),
            other => panic!("expected a sync reply, got {other:?}"),
        }
    }

    fn commit_request(&mut self, member: &str, generation: i32, offset: i64) -> RequestId {
        let request = self.next_request;
        self.next_request += 1;
        let req = CommitRequest {
            group_id: "g".into(),
            generation,
            member_id: member.into(),
            instance_id: None,
            partitions: vec![CommitPartition {
                topic: "t".into(),
                partition: 0,
                offset,
                leader_epoch: -1,
                metadata: None,
            }],
        };
        self.c.commit_offsets(at(self.now), request, req);
        self.drain();
        request
    }

    fn commit_reply(&mut self, request: RequestId) -> Option<ErrorCode> {
        match self.take_reply(request)? {
            Reply::Commit(results) => {
                assert_eq!(results.len(), 1);
                Some(results[0].2)
            }
            other => panic!("expected a commit reply, got {other:?}"),
        }
    }

    fn committed(&self) -> Option<i64> {
        self.c.fetch_offsets("g", Some(&[("t".to_string(), 0)]))[0]
            .2
            .as_ref()
            .map(|v| v.offset)
    }

    /// Two members in a Stable generation 1; returns (leader, follower).
    fn stable_pair(&mut self) -> (String, String) {
        let (a, ja) = self.join_new();
        // `a` alone completes generation 1 at once (no initial delay); `b` starts generation 2.
        assert_eq!(self.join_reply(ja).expect("alone").generation, 1);
        let (b, jb) = self.join_new();
        assert!(self.join_reply(jb).is_none(), "waits for `a` to rejoin");
        let ja = self.join_request(&a, None);
        let ra = self.join_reply(ja).expect("all joined");
        let rb = self.join_reply(jb).expect("all joined");
        assert_eq!(ra.generation, rb.generation);
        assert_eq!(ra.leader, rb.leader);
        let generation = ra.generation;
        let (leader, follower) = if ra.leader == a { (a, b) } else { (b, a) };
        let sf = self.sync_request(&follower, generation, vec![]);
        let assignments = vec![
            (leader.clone(), b"L".to_vec()),
            (follower.clone(), b"F".to_vec()),
        ];
        let sl = self.sync_request(&leader, generation, assignments);
        assert!(
            self.sync_reply(sl).is_none(),
            "the assignment is not out before it commits"
        );
        self.commit();
        assert_eq!(self.sync_reply(sl).unwrap().assignment, b"L");
        assert_eq!(self.sync_reply(sf).unwrap().assignment, b"F");
        assert_eq!(self.c.group_state("g"), Some(GroupState::Stable));
        (leader, follower)
    }
}

/// A `ConsumerProtocolSubscription` v0 naming `topics`.
fn subscription(topics: &[&str]) -> Vec<u8> {
    let mut out = 0i16.to_be_bytes().to_vec();
    out.extend_from_slice(&(topics.len() as i32).to_be_bytes());
    for t in topics {
        out.extend_from_slice(&(t.len() as i16).to_be_bytes());
        out.extend_from_slice(t.as_bytes());
    }
    out.extend_from_slice(&(-1i32).to_be_bytes()); // user data: null
    out
}

#[test]
fn partition_for_is_javas_string_hash_code_modulo_the_partitions() {
    // "a".hashCode() = 97; "ab" = 97 * 31 + 98 = 3105; the sign bit is masked, not negated
    // (Utils.abs): "polygenelubricants".hashCode() = -2147483648 maps to 0.
    assert_eq!(partition_for("a", 50), 97 % 50);
    assert_eq!(partition_for("ab", 50), 3105 % 50);
    assert_eq!(partition_for("polygenelubricants", 50), 0);
    // Negative hashes: "my-group".hashCode() = -1906497762, "test-consumer-group" =
    // -1793216381 (computed independently of this code).
    assert_eq!(partition_for("my-group", 50), 36);
    assert_eq!(partition_for("test-consumer-group", 50), 17);
    assert_eq!(partition_for("test-consumer-group", 16), 3);
    assert_eq!(partition_for("", 7), 0);
}

#[test]
fn records_round_trip_in_kafkas_layouts() {
    let offset = OffsetsRecord::Offset {
        group: "g".into(),
        topic: "t".into(),
        partition: 3,
        value: Some(OffsetValue {
            offset: 42,
            leader_epoch: 7,
            metadata: "m".into(),
            commit_timestamp_ms: 1_700_000_000_000,
        }),
    };
    let (key, value) = offset.encode();
    // Key v1: version, group, topic, partition.
    assert_eq!(key, [0, 1, 0, 1, b'g', 0, 1, b't', 0, 0, 0, 3]);
    let value = value.unwrap();
    assert_eq!(&value[..2], &[0, 3], "OffsetCommitValue v3");
    assert_eq!(OffsetsRecord::decode(&key, Some(&value)).unwrap(), offset);

    let group = OffsetsRecord::Group {
        group: "g".into(),
        value: Some(GroupValue {
            protocol_type: "consumer".into(),
            generation: 5,
            protocol: Some("range".into()),
            leader: Some("m-1".into()),
            current_state_timestamp_ms: 9,
            members: vec![MemberValue {
                member_id: "m-1".into(),
                instance_id: Some("i".into()),
                client_id: "c".into(),
                client_host: "/h".into(),
                rebalance_timeout_ms: 30_000,
                session_timeout_ms: 10_000,
                subscription: vec![1, 2],
                assignment: vec![3],
            }],
        }),
    };
    let (key, value) = group.encode();
    assert_eq!(key, [0, 2, 0, 1, b'g']);
    assert_eq!(
        OffsetsRecord::decode(&key, value.as_deref()).unwrap(),
        group
    );
    let tombstone = OffsetsRecord::Group {
        group: "g".into(),
        value: None,
    };
    assert_eq!(OffsetsRecord::decode(&key, None).unwrap(), tombstone);

    // Damage is an error, never a panic.
    for cut in 0..value.as_ref().unwrap().len() {
        assert!(OffsetsRecord::decode(&key, Some(&value.as_ref().unwrap()[..cut])).is_err());
    }
    assert!(OffsetsRecord::decode(&[0, 9, 0, 0], None).is_err());
    assert!(OffsetsRecord::decode(&[0], None).is_err());
}

#[test]
fn a_first_join_gets_member_id_required_and_a_group_forms_on_the_rejoin() {
    let mut h = Harness::no_delay();
    let (a, ja) = h.join_new();
    let reply = h
        .join_reply(ja)
        .expect("a lone member completes the join at once");
    assert_eq!(reply.error, ErrorCode::None);
    assert_eq!(reply.generation, 1);
    assert_eq!(reply.leader, a);
    assert_eq!(reply.protocol_name.as_deref(), Some("range"));
    assert_eq!(reply.members.len(), 1, "the leader sees every member");
    assert_eq!(h.c.group_state("g"), Some(GroupState::CompletingRebalance));
}

#[test]
fn the_initial_delay_gathers_members_into_the_first_generation() {
    let mut h = Harness::new(CoordinatorConfig {
        initial_rebalance_delay_ms: 3_000,
        ..CoordinatorConfig::default()
    });
    let (_, ja) = h.join_new();
    h.advance(2_000);
    let (_, jb) = h.join_new(); // extends the wait to 5 000
    h.advance(2_000);
    let (_, jc) = h.join_new(); // extends it to 7 000
    assert!(h.join_reply(ja).is_none() && h.join_reply(jb).is_none());
    h.advance(2_999);
    assert!(h.join_reply(ja).is_none(), "the window is still open");
    h.advance(1);
    let replies: Vec<JoinResponse> = [ja, jb, jc]
        .iter()
        .map(|r| h.join_reply(*r).unwrap())
        .collect();
    assert!(replies
        .iter()
        .all(|r| r.error == ErrorCode::None && r.generation == 1));
    let leaders = replies.iter().filter(|r| !r.members.is_empty()).count();
    assert_eq!(leaders, 1, "only the leader gets the member list");
    assert_eq!(
        replies
            .iter()
            .find(|r| !r.members.is_empty())
            .unwrap()
            .members
            .len(),
        3
    );
}

#[test]
fn sync_hands_out_the_assignment_only_once_it_is_committed() {
    let mut h = Harness::no_delay();
    let (leader, follower) = h.stable_pair();
    // A SyncGroup in a Stable group gets the assignment again at once.
    let s = h.sync_request(&follower, 2, vec![]);
    assert_eq!(h.sync_reply(s).unwrap().assignment, b"F");
    let s = h.sync_request(&leader, 1, vec![]);
    assert_eq!(h.sync_reply(s).unwrap().error, ErrorCode::IllegalGeneration);
    let s = h.sync_request("nobody", 2, vec![]);
    assert_eq!(h.sync_reply(s).unwrap().error, ErrorCode::UnknownMemberId);
}

#[test]
fn a_failed_assignment_write_fails_the_syncs() {
    let mut h = Harness::no_delay();
    let (a, ja) = h.join_new();
    let generation = h.join_reply(ja).unwrap().generation;
    h.fail_appends = Some(ErrorCode::NotCoordinator);
    let s = h.sync_request(&a, generation, vec![(a.clone(), b"x".to_vec())]);
    assert_eq!(h.sync_reply(s).unwrap().error, ErrorCode::NotCoordinator);
    assert_eq!(h.c.group_state("g"), Some(GroupState::CompletingRebalance));
}

#[test]
fn a_new_member_triggers_a_rebalance_that_heartbeats_announce() {
    let mut h = Harness::no_delay();
    let (leader, follower) = h.stable_pair();
    assert_eq!(
        h.c.heartbeat(at(h.now), "g", &follower, None, 2),
        ErrorCode::None
    );
    let (c, jc) = h.join_new();
    assert_eq!(h.c.group_state("g"), Some(GroupState::PreparingRebalance));
    assert_eq!(
        h.c.heartbeat(at(h.now), "g", &follower, None, 2),
        ErrorCode::RebalanceInProgress
    );
    assert_eq!(
        h.c.heartbeat(at(h.now), "g", &leader, None, 1),
        ErrorCode::IllegalGeneration
    );
    assert_eq!(
        h.c.heartbeat(at(h.now), "g", "who", None, 2),
        ErrorCode::UnknownMemberId
    );
    let jl = h.join_request(&leader, None);
    assert!(h.join_reply(jl).is_none(), "still waiting for the follower");
    let jf = h.join_request(&follower, None);
    for r in [jl, jf, jc] {
        let reply = h.join_reply(r).unwrap();
        assert_eq!((reply.error, reply.generation), (ErrorCode::None, 3));
        assert_eq!(reply.leader, leader, "the leader keeps its role");
    }
    assert!(h.c.generation("g") == Some(3) && !c.is_empty());
}

#[test]
fn an_expired_session_removes_the_member_and_the_rest_rebalance() {
    let mut h = Harness::no_delay();
    let (leader, follower) = h.stable_pair();
    for _ in 0..3 {
        h.advance(3_000);
        assert_eq!(
            h.c.heartbeat(at(h.now), "g", &leader, None, 2),
            ErrorCode::None
        );
    }
    // The follower never heartbeated: its 10 s session ran out at 10 s.
    h.advance(3_000);
    assert_eq!(
        h.c.heartbeat(at(h.now), "g", &leader, None, 2),
        ErrorCode::RebalanceInProgress
    );
    assert_eq!(h.c.group_state("g"), Some(GroupState::PreparingRebalance));
    assert_eq!(
        h.c.heartbeat(at(h.now), "g", &follower, None, 2),
        ErrorCode::UnknownMemberId
    );
    let jl = h.join_request(&leader, None);
    let reply = h.join_reply(jl).unwrap();
    assert_eq!((reply.generation, reply.members.len()), (3, 1));
}

#[test]
fn members_that_do_not_rejoin_within_the_rebalance_timeout_are_dropped() {
    let mut h = Harness::no_delay();
    let (leader, follower) = h.stable_pair();
    let jl = h.join_request(&leader, None); // the leader rejoins (e.g. new subscription)
    assert_eq!(h.c.group_state("g"), Some(GroupState::PreparingRebalance));
    // The follower keeps heartbeating but never rejoins.
    for _ in 0..9 {
        h.advance(3_000);
        assert_eq!(
            h.c.heartbeat(at(h.now), "g", &follower, None, 2),
            ErrorCode::RebalanceInProgress
        );
    }
    assert!(h.join_reply(jl).is_none());
    h.advance(3_000); // 30 s: the rebalance timeout
    let reply = h.join_reply(jl).unwrap();
    assert_eq!((reply.generation, reply.members.len()), (3, 1));
    assert_eq!(
        h.c.heartbeat(at(h.now), "g", &follower, None, 3),
        ErrorCode::UnknownMemberId
    );
}

#[test]
fn leaving_rebalances_and_the_last_leave_empties_the_group() {
    let mut h = Harness::no_delay();
    let (leader, follower) = h.stable_pair();
    let (error, per_member) = h.c.leave(
        at(h.now),
        "g",
        &[(follower.clone(), None), ("x".into(), None)],
    );
    h.drain();
    assert_eq!(error, ErrorCode::None);
    assert_eq!(
        per_member,
        vec![ErrorCode::None, ErrorCode::UnknownMemberId]
    );
    assert_eq!(h.c.group_state("g"), Some(GroupState::PreparingRebalance));
    let jl = h.join_request(&leader, None);
    assert_eq!(h.join_reply(jl).unwrap().generation, 3);
    let before = h.log.len();
    h.c.leave(at(h.now), "g", &[(leader.clone(), None)]);
    h.drain();
    assert_eq!(h.c.group_state("g"), Some(GroupState::Empty));
    assert_eq!(h.log.len(), before + 1, "the emptied group is written");
}

#[test]
fn offset_commits_are_validated_against_the_generation_and_visible_once_committed() {
    let mut h = Harness::no_delay();
    let (leader, follower) = h.stable_pair();
    let r = h.commit_request(&leader, 1, 5);
    assert_eq!(h.commit_reply(r), Some(ErrorCode::IllegalGeneration));
    let r = h.commit_request("stranger", 2, 5);
    assert_eq!(h.commit_reply(r), Some(ErrorCode::UnknownMemberId));
    let r = h.commit_request("", -1, 5);
    assert_eq!(
        h.commit_reply(r),
        Some(ErrorCode::UnknownMemberId),
        "not while it has members"
    );
    let r = h.commit_request(&follower, 2, 5);
    assert_eq!(h.commit_reply(r), None, "answered only once committed");
    assert_eq!(h.committed(), None, "not visible before it commits");
    h.commit();
    assert_eq!(h.commit_reply(r), Some(ErrorCode::None));
    assert_eq!(h.committed(), Some(5));
    // During CompletingRebalance a commit would race the new assignment.
    let (_, jc) = h.join_new();
    let jl = h.join_request(&leader, None);
    let jf = h.join_request(&follower, None);
    assert!(h.join_reply(jc).is_some() && h.join_reply(jl).is_some() && h.join_reply(jf).is_some());
    let r = h.commit_request(&follower, 3, 6);
    assert_eq!(h.commit_reply(r), Some(ErrorCode::RebalanceInProgress));
}

#[test]
fn a_group_without_members_takes_commits_outside_a_generation() {
    let mut h = Harness::no_delay();
    let r = h.commit_request("", -1, 9);
    h.commit();
    assert_eq!(h.commit_reply(r), Some(ErrorCode::None));
    assert_eq!(h.committed(), Some(9));
    assert_eq!(h.c.group_state("g"), Some(GroupState::Empty));
    let r = h.commit_request("m", 1, 9);
    assert_eq!(h.commit_reply(r), Some(ErrorCode::UnknownMemberId));
    let big = "x".repeat(crate::limits::OFFSET_METADATA_BYTES_MAX + 1);
    let request = 1000;
    h.c.commit_offsets(
        at(h.now),
        request,
        CommitRequest {
            group_id: "g".into(),
            generation: -1,
            partitions: vec![CommitPartition {
                topic: "t".into(),
                partition: 1,
                offset: 1,
                leader_epoch: -1,
                metadata: Some(big),
            }],
            ..CommitRequest::default()
        },
    );
    h.drain();
    assert_eq!(
        h.take_reply(request),
        Some(Reply::Commit(vec![(
            "t".into(),
            1,
            ErrorCode::OffsetMetadataTooLarge
        )]))
    );
}

#[test]
fn a_new_coordinator_rebuilds_groups_and_offsets_from_the_partition() {
    let mut h = Harness::no_delay();
    let (leader, follower) = h.stable_pair();
    let r = h.commit_request(&leader, 2, 77);
    h.commit();
    assert_eq!(h.commit_reply(r), Some(ErrorCode::None));
    let r = h.commit_request(&leader, 2, 78);
    h.commit();
    assert_eq!(h.commit_reply(r), Some(ErrorCode::None));

    let mut rebuilt = GroupCoordinator::new(CoordinatorConfig::default(), Rng::new(1), at(h.now));
    for (_, key, value) in &h.log {
        rebuilt.replay(
            OffsetsRecord::decode(key, value.as_deref()).unwrap(),
            at(h.now),
        );
    }
    rebuilt.check_invariants();
    assert_eq!(rebuilt.group_state("g"), Some(GroupState::Stable));
    assert_eq!(rebuilt.generation("g"), Some(2));
    assert_eq!(rebuilt.assignments("g"), h.c.assignments("g"));
    assert_eq!(
        rebuilt.fetch_offsets("g", None),
        h.c.fetch_offsets("g", None)
    );
    // The members carry on with the new coordinator without rejoining.
    assert_eq!(
        rebuilt.heartbeat(at(h.now), "g", &follower, None, 2),
        ErrorCode::None
    );
    assert_eq!(rebuilt.describe("g").members.len(), 2);
}

#[test]
fn losing_leadership_answers_every_waiting_request_not_coordinator() {
    let mut h = Harness::no_delay();
    let (leader, _) = h.stable_pair();
    let r = h.commit_request(&leader, 2, 1);
    let (_, jc) = h.join_new();
    let replies = std::mem::replace(
        &mut h.c,
        GroupCoordinator::new(CoordinatorConfig::default(), Rng::new(1), at(0)),
    )
    .shutdown();
    let mut codes: Vec<(RequestId, ErrorCode)> = replies
        .into_iter()
        .map(|(request, reply)| match reply {
            Reply::Commit(p) => (request, p[0].2),
            Reply::Join(j) => (request, j.error),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        vec![
            (r, ErrorCode::NotCoordinator),
            (jc, ErrorCode::NotCoordinator)
        ]
    );
}

#[test]
fn a_restarted_static_member_takes_its_place_without_a_rebalance_and_fences_the_old_id() {
    let mut h = Harness::no_delay();
    let ja = h.join_request("", Some("i-a"));
    let a = h.join_reply(ja).unwrap();
    assert_eq!(
        (a.error, a.generation),
        (ErrorCode::None, 1),
        "static members need no member id round"
    );
    let jb = h.join_request("", Some("i-b"));
    let ja = h.join_request(&a.member_id, Some("i-a"));
    let (ra, rb) = (h.join_reply(ja).unwrap(), h.join_reply(jb).unwrap());
    assert_eq!(ra.leader, a.member_id);
    let s = h.sync_request(&a.member_id, 2, vec![(rb.member_id.clone(), b"B".to_vec())]);
    h.commit();
    assert!(h.sync_reply(s).is_some());
    assert_eq!(h.c.group_state("g"), Some(GroupState::Stable));

    // b restarts: a new member id for instance i-b, same generation, no rebalance.
    let jb2 = h.join_request("", Some("i-b"));
    let rb2 = h.join_reply(jb2).unwrap();
    assert_eq!((rb2.error, rb2.generation), (ErrorCode::None, 2));
    assert_ne!(rb2.member_id, rb.member_id);
    assert_eq!(h.c.group_state("g"), Some(GroupState::Stable));
    let request = h.next_request;
    h.c.sync(
        at(h.now),
        request,
        SyncRequest {
            group_id: "g".into(),
            member_id: rb2.member_id.clone(),
            instance_id: Some("i-b".into()),
            generation: 2,
            ..SyncRequest::default()
        },
    );
    h.drain();
    assert_eq!(
        h.sync_reply(request).unwrap().assignment,
        b"B",
        "it keeps its assignment"
    );
    assert_eq!(
        h.c.heartbeat(at(h.now), "g", &rb.member_id, Some("i-b"), 2),
        ErrorCode::FencedInstanceId,
        "the old incarnation is fenced"
    );
}

#[test]
fn groups_are_deleted_only_when_empty_and_offsets_only_when_unsubscribed() {
    let mut h = Harness::no_delay();
    let (leader, _) = h.stable_pair();
    let r = h.commit_request(&leader, 2, 3);
    h.commit();
    assert_eq!(h.commit_reply(r), Some(ErrorCode::None));
    h.c.delete_groups(500, &["g".into(), "nope".into()]);
    h.drain();
    assert_eq!(
        h.take_reply(500),
        Some(Reply::DeleteGroups(vec![
            ("g".into(), ErrorCode::NonEmptyGroup),
            ("nope".into(), ErrorCode::GroupIdNotFound)
        ]))
    );
    h.c.delete_offsets(501, "g", &[("t".into(), 0), ("u".into(), 0)]);
    h.drain();
    assert_eq!(
        h.take_reply(501),
        Some(Reply::DeleteOffsets(
            ErrorCode::None,
            vec![
                ("t".into(), 0, ErrorCode::GroupSubscribedToTopic),
                ("u".into(), 0, ErrorCode::None)
            ]
        ))
    );
    // Everyone leaves; then the group and its offsets go, once the tombstones commit.
    let members: Vec<(String, Option<String>)> =
        h.c.describe("g")
            .members
            .into_iter()
            .map(|m| (m.member_id, None))
            .collect();
    h.c.leave(at(h.now), "g", &members);
    h.drain();
    h.c.delete_groups(502, &["g".into()]);
    h.drain();
    assert_eq!(h.take_reply(502), None);
    h.commit();
    assert_eq!(
        h.take_reply(502),
        Some(Reply::DeleteGroups(vec![("g".into(), ErrorCode::None)]))
    );
    assert_eq!(h.c.describe("g").state, "Dead");
    let mut rebuilt = GroupCoordinator::new(CoordinatorConfig::default(), Rng::new(1), at(h.now));
    for (_, key, value) in &h.log {
        rebuilt.replay(
            OffsetsRecord::decode(key, value.as_deref()).unwrap(),
            at(h.now),
        );
    }
    assert_eq!(
        rebuilt.describe("g").state,
        "Dead",
        "the deletion survives a failover"
    );
    assert!(rebuilt.fetch_offsets("g", None).is_empty());
}

#[test]
fn offsets_of_an_empty_group_expire_after_the_retention() {
    let mut h = Harness::new(CoordinatorConfig {
        initial_rebalance_delay_ms: 0,
        offsets_retention_ms: 60_000,
        offsets_retention_check_interval_ms: 1_000,
        ..CoordinatorConfig::default()
    });
    let r = h.commit_request("", -1, 4);
    h.commit();
    assert_eq!(h.commit_reply(r), Some(ErrorCode::None));
    h.advance(59_000);
    assert_eq!(h.committed(), Some(4));
    h.advance(1_000);
    assert_eq!(h.committed(), None);
    assert_eq!(h.c.describe("g").state, "Dead");
    let (_, value) = h
        .log
        .last()
        .map(|(_, k, v)| (k.clone(), v.clone()))
        .unwrap();
    assert_eq!(value, None, "a tombstone");
}

// ---------------------------------------------------------------------------------------------
// Random walk: any sequence of client actions and timeouts keeps the invariants, and within one
// generation no two members are handed the same partition by the coordinator's bookkeeping
// (assignments are the leader's, so this checks that a reply never mixes generations).

#[derive(Clone, Debug)]
enum Step {
    Join(usize),
    Sync(usize),
    Heartbeat(usize),
    Leave(usize),
    Commit(usize, i64),
    Advance(u64),
    CommitLog,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..4usize).prop_map(Step::Join),
        (0..4usize).prop_map(Step::Sync),
        (0..4usize).prop_map(Step::Heartbeat),
        (0..4usize).prop_map(Step::Leave),
        (0..4usize, 0..100i64).prop_map(|(m, o)| Step::Commit(m, o)),
        (1..15_000u64).prop_map(Step::Advance),
        Just(Step::CommitLog),
    ]
}

proptest! {
    #[test]
    fn random_members_keep_the_invariants(steps in proptest::collection::vec(step(), 1..120)) {
        let mut h = Harness::new(CoordinatorConfig {
            initial_rebalance_delay_ms: 1_000,
            ..CoordinatorConfig::default()
        });
        // What each of 4 clients believes: member id and generation.
        let mut ids: Vec<String> = vec![String::new(); 4];
        let mut generations = [-1i32; 4];
        let mut joins: Vec<Option<RequestId>> = vec![None; 4];
        for s in steps {
            match s {
                Step::Join(m) => {
                    joins[m] = Some(h.join_request(&ids[m].clone(), None));
                }
                Step::Sync(m) => {
                    let assignments = (0..4)
                        .filter(|i| !ids[*i].is_empty())
                        .map(|i| (ids[i].clone(), vec![i as u8]))
                        .collect();
                    h.sync_request(&ids[m].clone(), generations[m], assignments);
                }
                Step::Heartbeat(m) => {
                    h.c.heartbeat(at(h.now), "g", &ids[m], None, generations[m]);
                }
                Step::Leave(m) => {
                    h.c.leave(at(h.now), "g", &[(ids[m].clone(), None)]);
                    h.drain();
                }
                Step::Commit(m, o) => {
                    h.commit_request(&ids[m].clone(), generations[m], o);
                }
                Step::Advance(ms) => h.advance(ms),
                Step::CommitLog => h.commit(),
            }
            for m in 0..4 {
                if let Some(r) = joins[m] {
                    if let Some(reply) = h.join_reply(r) {
                        joins[m] = None;
                        if reply.error == ErrorCode::None || reply.error == ErrorCode::MemberIdRequired {
                            ids[m] = reply.member_id.clone();
                            generations[m] = reply.generation;
                        } else if reply.error == ErrorCode::UnknownMemberId {
                            ids[m].clear();
                        }
                    }
                }
            }
            // Sync replies: within one generation, the assignments handed out are distinct.
            let mut seen: std::collections::BTreeMap<Vec<u8>, RequestId> = Default::default();
            let replies = std::mem::take(&mut h.replies);
            for (r, reply) in replies {
                match reply {
                    Reply::Sync(s) if s.error == ErrorCode::None && !s.assignment.is_empty() => {
                        prop_assert!(seen.insert(s.assignment.clone(), r).is_none(), "one assignment, two members");
                    }
                    Reply::Join(_) => h.replies.push((r, reply)),
                    _ => {}
                }
            }
            if let Some(g) = h.c.generation("g") {
                prop_assert!(g >= 0);
            }
        }
    }
}

/// The planted bug `group-double-assign` really hands one partition to two members (what the
/// simulator's group-double-owner checker catches):
///
/// `cargo test -p sluice-core --features planted-bugs --lib planted_group`
#[cfg(feature = "planted-bugs")]
#[test]
fn planted_group_double_assign_hands_a_partition_to_two_members() {
    use crate::planted::{Bug, Planted};
    let assignment = |partitions: &[i32]| {
        ConsumerAssignment {
            version: 0,
            topics: vec![("t".to_string(), partitions.to_vec())],
            user_data: None,
        }
        .encode()
    };
    let handed = |planted_bug: Option<Bug>| {
        let mut h = Harness::new(CoordinatorConfig {
            initial_rebalance_delay_ms: 0,
            planted: Planted::new(planted_bug),
            ..CoordinatorConfig::default()
        });
        let (a, ja) = h.join_new();
        let generation = h.join_reply(ja).expect("alone").generation;
        let (b, jb) = h.join_new();
        let ja = h.join_request(&a, None);
        let generation = generation + 1;
        assert_eq!(h.join_reply(ja).expect("all joined").generation, generation);
        assert!(h.join_reply(jb).is_some());
        let sb = h.sync_request(&b, generation, vec![]);
        let assignments = vec![(a.clone(), assignment(&[0])), (b.clone(), assignment(&[1]))];
        let sa = h.sync_request(&a, generation, assignments);
        h.commit();
        let decode = |s: Option<SyncResponse>| {
            ConsumerAssignment::decode(&s.expect("answered").assignment).expect("decodes")
        };
        let (ta, tb) = (decode(h.sync_reply(sa)), decode(h.sync_reply(sb)));
        (ta.topics[0].1.clone(), tb.topics[0].1.clone())
    };
    assert_eq!(handed(None), (vec![0], vec![1]));
    let (first, second) = handed(Some(Bug::GroupDoubleAssign));
    let both: Vec<i32> = first
        .iter()
        .filter(|p| second.contains(p))
        .copied()
        .collect();
    assert_eq!(
        both.len(),
        1,
        "one partition handed to both: {first:?} and {second:?}"
    );
}

/// The planted bug `stale-generation-commit` really takes a zombie's late commit (what the
/// simulator's group-late-commit checkers catch); without it the zombie is fenced:
///
/// `cargo test -p sluice-core --features planted-bugs --lib planted_group`
#[cfg(feature = "planted-bugs")]
#[test]
fn planted_group_stale_generation_commit_takes_a_zombies_commit() {
    use crate::planted::{Bug, Planted};
    let zombie_commit = |planted_bug: Option<Bug>| {
        let mut h = Harness::new(CoordinatorConfig {
            initial_rebalance_delay_ms: 0,
            planted: Planted::new(planted_bug),
            ..CoordinatorConfig::default()
        });
        let (leader, follower) = h.stable_pair();
        // The follower stalls; the leader keeps its session and rejoins without it.
        for _ in 0..4 {
            h.advance(3_000);
            h.c.heartbeat(at(h.now), "g", &leader, None, 2);
        }
        let jl = h.join_request(&leader, None);
        assert_eq!(h.join_reply(jl).expect("alone").generation, 3);
        let sl = h.sync_request(&leader, 3, vec![(leader.clone(), b"L".to_vec())]);
        h.commit();
        assert!(h.sync_reply(sl).is_some());
        let r = h.commit_request(&leader, 3, 10);
        h.commit();
        assert_eq!(h.commit_reply(r), Some(ErrorCode::None));
        // The zombie wakes up and commits with its old generation and member id.
        let r = h.commit_request(&follower, 2, 4);
        h.commit();
        (h.commit_reply(r), h.committed())
    };
    assert_eq!(
        zombie_commit(None),
        (Some(ErrorCode::UnknownMemberId), Some(10))
    );
    assert_eq!(
        zombie_commit(Some(Bug::StaleGenerationCommit)),
        (Some(ErrorCode::None), Some(4))
    );
}

//! Many groups per node: what an idle group costs in memory and per tick. A counting allocator
//! (this test binary's global allocator; counts per thread, so parallel tests do not mix)
//! measures heap use and allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;

use crate::raft::*;
use crate::rng::Rng;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static LIVE_BYTES: Cell<i64> = const { Cell::new(0) };
}

fn note(allocations: u64, bytes: i64) {
    let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + allocations));
    let _ = LIVE_BYTES.try_with(|b| b.set(b.get() + bytes));
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counters are plain
// thread-local cells that never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(1, layout.size() as i64);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(0, -(layout.size() as i64));
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(1, new_size as i64 - layout.size() as i64);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn live_bytes() -> i64 {
    LIVE_BYTES.with(Cell::get)
}

/// Idle groups never read storage: everything they hold is cached or nothing.
struct NoStorage;

impl EntrySource for NoStorage {
    fn entries(&self, _lo: u64, _hi: u64, _max_bytes: u64, _out: &mut Vec<Entry>) {}

    fn snapshot_data(&self, _index: u64) -> Option<Bytes> {
        None
    }
}

const ELECTION_TICKS: u32 = 10;
const HEARTBEAT_TICKS: u32 = 2;

/// One group of three replicas (ids 0, 1, 2) on one "node", storage syncing at once.
struct Group {
    replicas: Vec<Raft>,
}

#[derive(Default, Debug)]
struct Counts {
    messages: u64,
    writes: u64,
}

impl Group {
    fn new(seed: u64) -> Group {
        let replicas = (0..3)
            .map(|id| {
                let config = RaftConfig {
                    election_ticks: ELECTION_TICKS,
                    heartbeat_ticks: HEARTBEAT_TICKS,
                    ..RaftConfig::new(id)
                };
                let state = RaftState::bootstrap(Membership::new([0, 1, 2]));
                Raft::new(config, Rng::new(seed * 3 + id), state).unwrap()
            })
            .collect();
        Group { replicas }
    }

    /// Hands out and carries out everything until quiet.
    fn run(&mut self, counts: &mut Counts) {
        let mut queue = Vec::new();
        loop {
            for raft in &mut self.replicas {
                while raft.has_ready() {
                    let rd = raft.ready(&NoStorage);
                    if let Some(write) = rd.write {
                        counts.writes += 1;
                        raft.on_persisted(write.seq);
                    }
                    queue.extend(rd.messages);
                }
            }
            if queue.is_empty() {
                return;
            }
            for m in queue.drain(..) {
                counts.messages += 1;
                let to = m.to as usize;
                self.replicas[to].step(m);
            }
        }
    }

    fn elected(seed: u64) -> Group {
        let mut g = Group::new(seed);
        g.replicas[0].campaign(true);
        g.run(&mut Counts::default());
        assert!(g.replicas[0].is_leader());
        g
    }
}

/// 1,000 idle groups (3,000 replicas) ticked for a full election period: heartbeats only, no
/// elections, no writes, and a tick on a follower allocates nothing.
#[test]
fn a_thousand_idle_groups_only_heartbeat() {
    const GROUPS: u64 = 1000;
    let mut groups: Vec<Group> = (0..GROUPS).map(Group::elected).collect();
    // Settle into the steady state (commit index known everywhere).
    for g in &mut groups {
        for _ in 0..HEARTBEAT_TICKS {
            for r in &mut g.replicas {
                r.tick();
            }
        }
        g.run(&mut Counts::default());
    }
    let terms: Vec<u64> = groups.iter().map(|g| g.replicas[0].term()).collect();

    let mut counts = Counts::default();
    let mut follower_tick_allocations = 0;
    for _ in 0..ELECTION_TICKS {
        for g in &mut groups {
            g.replicas[0].tick();
            let before = allocations();
            g.replicas[1].tick();
            g.replicas[2].tick();
            follower_tick_allocations += allocations() - before;
            g.run(&mut counts);
        }
    }
    let heartbeat_rounds = u64::from(ELECTION_TICKS / HEARTBEAT_TICKS);
    // Per round: a heartbeat to each of two followers, and its answer.
    assert_eq!(counts.messages, GROUPS * heartbeat_rounds * 2 * 2);
    assert_eq!(counts.writes, 0, "idle groups write nothing");
    assert_eq!(
        follower_tick_allocations, 0,
        "a follower's tick is a counter increment"
    );
    for (g, term) in groups.iter().zip(terms) {
        assert!(g.replicas[0].is_leader());
        for r in &g.replicas {
            assert_eq!(r.term(), term);
            assert!(!r.has_ready());
        }
    }
}

/// The memory of an idle 3-voter group with an empty log, recorded in docs/raft.md.
#[test]
fn idle_group_memory() {
    let before = live_bytes();
    let follower = {
        let state = RaftState::bootstrap(Membership::new([0, 1, 2]));
        Raft::new(RaftConfig::new(1), Rng::new(1), state).unwrap()
    };
    let fresh_follower_heap = live_bytes() - before;
    drop(follower);

    let mut g = Group::elected(7);
    for _ in 0..3 * ELECTION_TICKS {
        for r in &mut g.replicas {
            r.tick();
        }
        g.run(&mut Counts::default());
    }
    // Each replica's heap: what dropping it frees.
    let mut heaps = Vec::new();
    while let Some(raft) = g.replicas.pop() {
        let role = raft.role();
        let before = live_bytes();
        drop(raft);
        heaps.push((role, before - live_bytes()));
    }
    let raft_bytes = std::mem::size_of::<Raft>() as i64;
    let group_heap: i64 = heaps.iter().map(|h| h.1).sum();
    eprintln!(
        "size_of::<Raft>() = {raft_bytes} B; fresh follower heap = {fresh_follower_heap} B; \
         idle heap by replica = {heaps:?}; idle 3-replica group = 3 x {raft_bytes} + \
         {group_heap} = {} B",
        raft_bytes * 3 + group_heap
    );
    // 560: repair mode's bound, the leader commit it waits for and whether an append was
    // accepted this term (protocol-aware recovery).
    assert!(raft_bytes <= 560, "Raft grew to {raft_bytes} bytes");
    assert!(fresh_follower_heap <= 64);
    assert!(
        group_heap <= 1024,
        "an idle group holds {group_heap} heap bytes"
    );
}

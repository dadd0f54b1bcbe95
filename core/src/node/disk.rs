//! The node's storage effects carried out against a [`Storage`]: the one executor the real
//! shell, the simulator and core's tests share, so all three run a node's I/O the same way.
//!
//! [`Disk::execute`] takes each [`StorageOp`] the node emits, in order. What only touches the
//! page cache (appends, segment creation, truncation, index and checkpoint files, removals) is
//! done on the spot. What blocks on the disk (group-commit fsyncs, hard-state writes, the
//! barrier after a truncation, a cleaned segment's swap, recovery, a topic's deletion) becomes
//! a [`Job`] for the caller to run off its event loop; [`Disk::finish`] takes the job's result
//! back. Every op that promises the node an answer gets exactly one [`StorageDone`], also when
//! it could not run (its log had failed, or was closed).
//!
//! **Order.** A log's ops run in the order given. A barrier ([`LogOp::SyncCut`]) holds every
//! later op of its log until its job finishes; other jobs (syncs, hard states, swaps) run
//! beside the ops after them, which is what they are designed for (a group commit covers what
//! was written before it started).
//!
//! **Reads** stay synchronous ([`LogReader`]): the node reads only synced data (the high
//! watermark never passes the synced end, Raft reads only the durable prefix, the cleaner only
//! sealed segments below the checkpoint), which every write before it has reached; reads come
//! from the page cache for the recent data consumers and followers ask for; and each is
//! bounded in bytes by the request. Making them asynchronous would park and resume every
//! fetch, Raft append and coordinator load for no gain while a read costs microseconds.
//!
//! **Directories.** The host runs jobs on a pool, in any order, so the executor orders what
//! touches one directory across logs: a log closed while jobs of its are still out (or while it
//! is still opening) is removed only once the last of them finished, and a log opening a
//! directory waits until every job of the logs closed over it before (their removal included)
//! has finished. A deleted topic's directory is gone once its jobs are done, and a topic
//! re-created under the same name starts from an empty one.
//!
//! **Failure.** An op that fails marks its log failed: later ops of that log are dropped (those
//! owed an answer get a failure), and the node hears [`StorageDone::WriteFailed`] once. It then
//! closes the log and opens a new one over the same directory, after a cut to what was durable.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::hard_state;
use crate::log::{
    CleanStep, LogConfig, LogOp, LogStore, PartitionLog, ReadError, ReadIo, SwapJob, SyncJob,
    SyncRequest,
};
use crate::metadata::TopicId;
use crate::raft::HardState;
use crate::storage::Storage;

/// One opened incarnation of a log (a partition's or the metadata log). A reopened log gets a
/// new id, so late answers about the old one are recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogId(pub u64);

impl std::fmt::Display for LogId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "log#{}", self.0)
    }
}

/// A storage effect of the node, for [`Disk::execute`].
#[derive(Clone, Debug, PartialEq)]
pub enum StorageOp {
    /// Recover the log in `dir` (after carrying out `cut`, a failed predecessor's
    /// [`PartitionLog::failure_cut`], and making it durable) and load its hard state; answered
    /// with [`StorageDone::Opened`].
    Open {
        log: LogId,
        dir: PathBuf,
        config: LogConfig,
        cut: Vec<LogOp>,
        /// The topic a partition's directory belongs to (`None` for the metadata log): a
        /// directory another topic of the same name left behind (deleted while this node did
        /// not see it) is emptied first, as Kafka's `partition.metadata` tells them apart.
        topic_id: Option<TopicId>,
        /// A read found a damaged batch the checkpoint vouched for: recovery distrusts the
        /// checkpoint ([`LogStore::distrust_checkpoint`]) and scans every segment, so the damage
        /// is cut and the replica repaired from its peers like damage recovery finds itself.
        rescan: bool,
    },
    /// One of the log's [`LogOp`]s. With `report: Some(seq)`, [`StorageDone::Written`] echoes
    /// `seq` once it (and everything before it) reached the OS.
    Write {
        log: LogId,
        op: LogOp,
        report: Option<u64>,
    },
    /// A group commit; answered with [`StorageDone::Synced`].
    Sync { log: LogId, request: SyncRequest },
    /// Replace the log's stored Raft hard state durably; answered with
    /// [`StorageDone::HardStateStored`].
    StoreHardState { log: LogId, state: HardState },
    /// A cleaning step that writes (`Begin`, `Write`, `Discard`), or the swap of a cleaned
    /// segment (`Swap`, answered with [`StorageDone::Swapped`]).
    Clean { log: LogId, step: CleanStep },
    /// Drop the log's files handles; with `delete`, remove its whole directory.
    Close { log: LogId, delete: bool },
}

impl StorageOp {
    pub fn log(&self) -> LogId {
        match self {
            StorageOp::Open { log, .. }
            | StorageOp::Write { log, .. }
            | StorageOp::Sync { log, .. }
            | StorageOp::StoreHardState { log, .. }
            | StorageOp::Clean { log, .. }
            | StorageOp::Close { log, .. } => *log,
        }
    }

    /// The answer this op is owed when it cannot run, if any.
    fn failed(&self, why: &str) -> Option<StorageDone> {
        let error = Err(why.to_string());
        match self {
            StorageOp::Open { log, .. } => Some(StorageDone::Opened {
                log: *log,
                result: Err(OpenFailure {
                    message: why.to_string(),
                    retryable: false,
                }),
            }),
            StorageOp::Sync { log, .. } => Some(StorageDone::Synced {
                log: *log,
                result: error,
            }),
            StorageOp::StoreHardState { log, .. } => Some(StorageDone::HardStateStored {
                log: *log,
                result: error,
            }),
            StorageOp::Clean {
                log,
                step: CleanStep::Swap { segment, .. },
            } => Some(StorageDone::Swapped {
                log: *log,
                segment: *segment,
                result: error,
            }),
            StorageOp::Write { .. } | StorageOp::Clean { .. } | StorageOp::Close { .. } => None,
        }
    }
}

/// Why a log could not be opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenFailure {
    /// What failed, naming the directory.
    pub message: String,
    /// An I/O error that may pass (a failed fsync): the node tries again later. Stored state
    /// that does not decode is not retried: reading it again gives the same answer.
    pub retryable: bool,
}

impl std::fmt::Display for OpenFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A recovered log and its stored hard state.
#[derive(Debug)]
pub struct OpenedLog {
    pub hard_state: HardState,
    pub log: PartitionLog,
    /// What recovery repaired, in words (the node logs them).
    pub repairs: Vec<String>,
}

/// What the disk tells the node.
#[derive(Debug)]
pub enum StorageDone {
    Opened {
        log: LogId,
        result: Result<OpenedLog, OpenFailure>,
    },
    /// Every op of the log up to the one written with `report: Some(seq)` reached the OS.
    Written { log: LogId, seq: u64 },
    /// An op of the log failed; nothing after it ran (or will).
    WriteFailed { log: LogId, error: String },
    Synced {
        log: LogId,
        result: Result<(), String>,
    },
    HardStateStored {
        log: LogId,
        result: Result<(), String>,
    },
    Swapped {
        log: LogId,
        segment: u64,
        result: Result<(), String>,
    },
}

impl StorageDone {
    pub fn log(&self) -> LogId {
        match self {
            StorageDone::Opened { log, .. }
            | StorageDone::Written { log, .. }
            | StorageDone::WriteFailed { log, .. }
            | StorageDone::Synced { log, .. }
            | StorageDone::HardStateStored { log, .. }
            | StorageDone::Swapped { log, .. } => *log,
        }
    }
}

/// Blocking work for the caller to run off its event loop ([`Job::run`]), then hand back to
/// [`Disk::finish`].
pub struct Job<S: Storage> {
    log: LogId,
    work: Work<S>,
}

enum Work<S: Storage> {
    Open {
        storage: S,
        dir: PathBuf,
        config: LogConfig,
        cut: Vec<LogOp>,
        topic_id: Option<TopicId>,
        rescan: bool,
    },
    Sync(SyncJob<S>),
    /// A [`LogOp::SyncCut`] barrier.
    Cut(SyncJob<S>),
    HardState {
        storage: S,
        dir: PathBuf,
        state: HardState,
    },
    Swap {
        segment: u64,
        job: SwapJob<S>,
    },
    Delete {
        storage: S,
        dir: PathBuf,
    },
}

/// A job's result.
pub struct Finished<S: Storage> {
    log: LogId,
    outcome: Outcome<S>,
}

enum Outcome<S: Storage> {
    Opened(Result<(OpenedLog, LogStore<S>), OpenFailure>),
    Synced(Result<(), String>),
    Cut(Result<(), String>),
    HardState(Result<(), String>),
    Swapped(u64, Result<(), String>),
    Deleted(PathBuf, Result<(), String>),
}

impl<S: Storage> Job<S> {
    pub fn log(&self) -> LogId {
        self.log
    }

    /// Whether the job waits on an fsync (all but recovery, which reads): a simulator's slow
    /// disk delays these.
    pub fn blocks_on_fsync(&self) -> bool {
        !matches!(self.work, Work::Open { .. })
    }

    /// Does the blocking work.
    pub fn run(self) -> Finished<S> {
        let text = |r: io::Result<()>| r.map_err(|e| e.to_string());
        let outcome = match self.work {
            Work::Open {
                storage,
                dir,
                config,
                cut,
                topic_id,
                rescan,
            } => Outcome::Opened(open(storage, dir, config, cut, topic_id, rescan)),
            Work::Sync(job) => Outcome::Synced(text(job.run())),
            Work::Cut(job) => Outcome::Cut(text(job.run())),
            Work::HardState {
                storage,
                dir,
                state,
            } => Outcome::HardState(text(hard_state::store(&storage, &dir, state))),
            Work::Swap { segment, job } => Outcome::Swapped(segment, text(job.run())),
            Work::Delete { storage, dir } => {
                let result = text(delete_dir(&storage, &dir));
                Outcome::Deleted(dir, result)
            }
        };
        Finished {
            log: self.log,
            outcome,
        }
    }
}

impl<S: Storage> std::fmt::Debug for Job<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.work {
            Work::Open { .. } => "open",
            Work::Sync(_) => "sync",
            Work::Cut(_) => "cut",
            Work::HardState { .. } => "hard-state",
            Work::Swap { .. } => "swap",
            Work::Delete { .. } => "delete",
        };
        write!(f, "Job({} {kind})", self.log)
    }
}

/// Carries out a failed predecessor's cut (best effort: its storage may still fail) and makes it
/// durable, then recovers the log and loads its hard state, bounded by the stored term: no batch
/// can be of a term the replica never durably adopted, so a higher epoch is damage. With
/// `rescan`, the recovery scans every segment, not only those from the checkpoint's recovery
/// point.
fn open<S: Storage>(
    storage: S,
    dir: PathBuf,
    config: LogConfig,
    cut: Vec<LogOp>,
    topic_id: Option<TopicId>,
    rescan: bool,
) -> Result<(OpenedLog, LogStore<S>), OpenFailure> {
    let context = |e: io::Error| OpenFailure {
        message: format!("{}: {e}", dir.display()),
        retryable: e.kind() != io::ErrorKind::InvalidData,
    };
    let mut repairs = Vec::new();
    if let Some(id) = topic_id {
        repairs.extend(claim_dir(&storage, &dir, id).map_err(context)?);
    }
    let mut hard_state = hard_state::load(&storage, &dir).map_err(context)?;
    let epoch_max = (hard_state != HardState::default())
        .then(|| i32::try_from(hard_state.term).unwrap_or(i32::MAX));
    // Damage recovery finds puts the replica in repair mode (see `raft`'s "Repair"): stored
    // before any cut, so a crash after the cut cannot forget it. Raft index = offset + 1: the
    // replica held entries up to index `damage.end` at least.
    // Offsets below the stored commit index were committed (Raft index c covers offsets < c).
    let commit_floor = hard_state.commit;
    let mark_repair = |hard_state: &mut HardState, damage: crate::log::Damage| {
        let end = hard_state.repair.unwrap_or(0).max(damage.end);
        hard_state.repair = Some(end);
        hard_state::store(&storage, &dir, *hard_state)
    };
    if !cut.is_empty() {
        // The failure cut runs over a recovered log, whose recovery may find damage too (found
        // by review: damage cut here, before the main recovery, escaped repair mode).
        let (_, mut old) = LogStore::open_bounded(
            storage.clone(),
            dir.clone(),
            config.clone(),
            epoch_max,
            commit_floor,
            |damage| mark_repair(&mut hard_state, damage),
        )
        .map_err(context)?;
        for op in cut {
            old.apply(op).map_err(context)?;
        }
        storage.sync_dir(&dir).map_err(context)?;
    }
    if rescan && LogStore::distrust_checkpoint(&storage, &dir).map_err(context)? {
        repairs.push(
            "a read found damage below the checkpoint's recovery point: every segment is scanned"
                .to_string(),
        );
    }
    let (log, store) = LogStore::open_bounded(
        storage.clone(),
        dir.clone(),
        config,
        epoch_max,
        commit_floor,
        |damage| mark_repair(&mut hard_state, damage),
    )
    .map_err(context)?;
    // Raft counts the whole recovered log as persisted from the start.
    store.sync_recovered().map_err(context)?;
    repairs.extend(store.repairs().iter().cloned());
    Ok((
        OpenedLog {
            hard_state,
            log,
            repairs,
        },
        store,
    ))
}

/// The file naming the topic a partition directory belongs to: the 16-byte topic id and its
/// CRC-32C (big-endian), written whole and renamed into place.
const TOPIC_ID_FILE: &str = "topic-id";
const TOPIC_ID_TMP_FILE: &str = "topic-id.tmp";

/// The topic id a `topic-id` file names, or `None` if the file is damaged.
fn decode_topic_id(bytes: &[u8]) -> Option<TopicId> {
    let (id, crc) = bytes.split_first_chunk::<16>()?;
    let crc: [u8; 4] = crc.try_into().ok()?;
    (crc32c::crc32c(id) == u32::from_be_bytes(crc)).then_some(*id)
}

/// Makes `dir` the directory of topic `id`: if it names another topic (one deleted under the same
/// name while this node did not see the deletion), it is emptied first; then the id is stored
/// durably if it was not. Returns what was repaired, if anything. A directory without the file
/// (from before it was written) is taken as it is; so is one whose file is damaged (the file is
/// rewritten): emptying a directory on a damaged marker could lose acknowledged records, and a
/// damaged marker is far likelier than a missed deletion as well.
fn claim_dir<S: Storage>(storage: &S, dir: &Path, id: TopicId) -> io::Result<Option<String>> {
    let path = dir.join(TOPIC_ID_FILE);
    let mut repair = None;
    if storage.exists(&path) {
        let stored = crate::storage::read_all(&storage.open(&path, false)?)?;
        match decode_topic_id(&stored) {
            Some(stored) if stored == id => return Ok(None),
            Some(_) => {
                delete_dir(storage, dir)?;
                repair = Some(format!(
                    "{} named a deleted topic of the same name; the directory was emptied",
                    path.display()
                ));
            }
            None => {
                repair = Some(format!(
                    "{} was damaged; the directory was kept and the file rewritten",
                    path.display()
                ));
            }
        }
    }
    storage.create_dir_all(dir)?;
    let mut marker = id.to_vec();
    marker.extend_from_slice(&crc32c::crc32c(&id).to_be_bytes());
    crate::storage::replace_durably(storage, &dir.join(TOPIC_ID_TMP_FILE), &path, &marker)?;
    Ok(repair)
}

/// Removes a whole log directory, durably.
fn delete_dir<S: Storage>(storage: &S, dir: &Path) -> io::Result<()> {
    let parent = dir.parent().map(Path::to_path_buf).unwrap_or_default();
    storage.remove_dir_all(dir)?;
    storage.sync_dir(&parent)
}

/// Synchronous reads of a log's stored bytes (see the module docs for why they stay so).
pub trait LogReader {
    fn read_at(&self, log: LogId, io: ReadIo) -> Result<Bytes, ReadError>;
}

/// One open log.
struct OpenLog<S: Storage> {
    /// Behind a `RefCell`: reads cache file handles, and come through `&self`.
    store: RefCell<LogStore<S>>,
    /// A barrier runs: later ops wait here, in order.
    held: Option<Held>,
    failed: bool,
}

/// What waits behind a barrier.
struct Held {
    ops: VecDeque<StorageOp>,
    /// The barrier was written with `report`: answer once it completes.
    report: Option<u64>,
}

/// A log closed while jobs of its were still out, or while it was opening.
struct Closing {
    dir: PathBuf,
    /// Remove the directory once the last job finished.
    delete: bool,
}

/// The executor (see the module docs).
pub struct Disk<S: Storage> {
    storage: S,
    logs: BTreeMap<LogId, OpenLog<S>>,
    /// Jobs handed out and not finished yet, per log (never zero).
    jobs_out: BTreeMap<LogId, usize>,
    /// Logs whose recovery job is out, and their directory.
    opening: BTreeMap<LogId, PathBuf>,
    /// Closed logs that still have jobs out: finished (and removed) after the last one.
    closing: BTreeMap<LogId, Closing>,
    /// Directories whose removal job is out.
    removing: BTreeSet<PathBuf>,
    /// Opens waiting for their directory to be free (see the module docs), in order.
    waiting: VecDeque<StorageOp>,
}

impl<S: Storage> Disk<S> {
    pub fn new(storage: S) -> Disk<S> {
        Disk {
            storage,
            logs: BTreeMap::new(),
            jobs_out: BTreeMap::new(),
            opening: BTreeMap::new(),
            closing: BTreeMap::new(),
            removing: BTreeSet::new(),
            waiting: VecDeque::new(),
        }
    }

    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Carries out `op` (or holds it behind its log's barrier, or an open until its directory
    /// is free). Answers for the node go to `done`, blocking work to `jobs`.
    pub fn execute(&mut self, op: StorageOp, done: &mut Vec<StorageDone>, jobs: &mut Vec<Job<S>>) {
        let first = jobs.len();
        self.execute_op(op, done, jobs);
        self.count_jobs(&jobs[first..]);
    }

    fn execute_op(&mut self, op: StorageOp, done: &mut Vec<StorageDone>, jobs: &mut Vec<Job<S>>) {
        let log = op.log();
        if let StorageOp::Open {
            dir,
            config,
            cut,
            topic_id,
            rescan,
            ..
        } = op
        {
            assert!(!self.logs.contains_key(&log), "{log} opened twice");
            assert!(!self.opening.contains_key(&log), "{log} opened twice");
            if self.dir_busy(&dir) {
                self.waiting.push_back(StorageOp::Open {
                    log,
                    dir,
                    config,
                    cut,
                    topic_id,
                    rescan,
                });
                return;
            }
            self.opening.insert(log, dir.clone());
            jobs.push(Job {
                log,
                work: Work::Open {
                    storage: self.storage.clone(),
                    dir,
                    config,
                    cut,
                    topic_id,
                    rescan,
                },
            });
            return;
        }
        let Some(state) = self.logs.get_mut(&log) else {
            if let StorageOp::Close { delete, .. } = op {
                if let Some(dir) = self.opening.get(&log) {
                    // Closed while its recovery runs: closed (and removed) once that finished.
                    let dir = dir.clone();
                    self.closing.insert(log, Closing { dir, delete });
                } else {
                    // Closed before its open left the queue: it never touched the directory.
                    self.waiting.retain(|w| w.log() != log);
                }
                return;
            }
            // Closed (or never opened): answer what is owed.
            done.extend(op.failed(&format!("{log} is not open")));
            return;
        };
        if let Some(held) = &mut state.held {
            if !matches!(op, StorageOp::Close { .. }) {
                held.ops.push_back(op);
                return;
            }
        }
        self.run(op, done, jobs);
    }

    /// Takes back a finished job: its answer, whatever its log held behind it, the removal of
    /// a closed log's directory once its last job is done, and the opens that waited for it.
    pub fn finish(
        &mut self,
        finished: Finished<S>,
        done: &mut Vec<StorageDone>,
        jobs: &mut Vec<Job<S>>,
    ) {
        let first = jobs.len();
        let log = finished.log;
        match self.jobs_out.get_mut(&log) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.jobs_out.remove(&log);
            }
            None => unreachable!("{log}: a job finished that was never handed out"),
        }
        self.finish_job(finished, done, jobs);
        self.count_jobs(&jobs[first..]);
        if !self.jobs_out.contains_key(&log) {
            if let Some(closing) = self.closing.remove(&log) {
                if closing.delete {
                    let at = jobs.len();
                    self.remove_dir(log, closing.dir, jobs);
                    self.count_jobs(&jobs[at..]);
                }
            }
        }
        // Opens whose directory became free.
        let waiting = std::mem::take(&mut self.waiting);
        for op in waiting {
            self.execute(op, done, jobs);
        }
    }

    fn finish_job(
        &mut self,
        finished: Finished<S>,
        done: &mut Vec<StorageDone>,
        jobs: &mut Vec<Job<S>>,
    ) {
        let log = finished.log;
        match finished.outcome {
            Outcome::Opened(result) => {
                self.opening.remove(&log);
                if self.closing.contains_key(&log) {
                    // Closed while it opened: its store goes now (nobody waits for it).
                    done.push(StorageDone::Opened {
                        log,
                        result: Err(OpenFailure {
                            message: format!("{log} was closed while it opened"),
                            retryable: false,
                        }),
                    });
                    return;
                }
                let result = result.map(|(opened, store)| {
                    let previous = self.logs.insert(
                        log,
                        OpenLog {
                            store: RefCell::new(store),
                            held: None,
                            failed: false,
                        },
                    );
                    assert!(previous.is_none(), "{log} opened twice");
                    opened
                });
                done.push(StorageDone::Opened { log, result });
            }
            Outcome::Synced(result) => done.push(StorageDone::Synced { log, result }),
            Outcome::HardState(result) => done.push(StorageDone::HardStateStored { log, result }),
            Outcome::Swapped(segment, result) => {
                let result = match (result, self.logs.get(&log)) {
                    (Ok(()), Some(state)) => state
                        .store
                        .borrow_mut()
                        .on_swapped(segment)
                        .map_err(|e| e.to_string()),
                    (result, _) => result,
                };
                done.push(StorageDone::Swapped {
                    log,
                    segment,
                    result,
                });
            }
            Outcome::Deleted(dir, result) => {
                self.removing.remove(&dir);
                if let Err(e) = result {
                    // The log is gone from the node either way; only its files are left over.
                    done.push(StorageDone::WriteFailed {
                        log,
                        error: format!("removing the log's directory: {e}"),
                    });
                }
            }
            Outcome::Cut(result) => {
                let Some(state) = self.logs.get_mut(&log) else {
                    return;
                };
                let held = state.held.take().expect("a barrier holds its log");
                match result {
                    Ok(()) => {
                        if let Some(seq) = held.report {
                            done.push(StorageDone::Written { log, seq });
                        }
                        for op in held.ops {
                            self.execute_op(op, done, jobs);
                        }
                    }
                    Err(e) => {
                        state.failed = true;
                        done.push(StorageDone::WriteFailed { log, error: e });
                        done.extend(held.ops.iter().filter_map(|op| op.failed("the log failed")));
                    }
                }
            }
        }
    }

    /// Runs `op` now (its log is open and not held).
    fn run(&mut self, op: StorageOp, done: &mut Vec<StorageDone>, jobs: &mut Vec<Job<S>>) {
        let log = op.log();
        let state = self.logs.get_mut(&log).expect("checked by execute");
        if state.failed {
            if let StorageOp::Close { delete, .. } = op {
                self.close(log, delete, jobs);
            } else {
                done.extend(op.failed("the log failed"));
            }
            return;
        }
        let store = state.store.get_mut();
        let result: io::Result<()> = match op {
            StorageOp::Open { .. } => unreachable!("handled by execute"),
            StorageOp::Write {
                op: LogOp::SyncCut { segment, dir },
                report,
                ..
            } => store.sync_cut_job(segment, dir).map(|job| {
                state.held = Some(Held {
                    ops: VecDeque::new(),
                    report,
                });
                jobs.push(Job {
                    log,
                    work: Work::Cut(job),
                });
            }),
            StorageOp::Write { op, report, .. } => {
                let result = store.apply(op);
                if let (Ok(()), Some(seq)) = (&result, report) {
                    done.push(StorageDone::Written { log, seq });
                }
                result
            }
            StorageOp::Sync { request, .. } => {
                match store.sync_job(&request) {
                    Ok(job) => jobs.push(Job {
                        log,
                        work: Work::Sync(job),
                    }),
                    Err(e) => done.push(StorageDone::Synced {
                        log,
                        result: Err(e.to_string()),
                    }),
                }
                Ok(())
            }
            StorageOp::StoreHardState { state: hs, .. } => {
                jobs.push(Job {
                    log,
                    work: Work::HardState {
                        storage: self.storage.clone(),
                        dir: store.dir().to_path_buf(),
                        state: hs,
                    },
                });
                Ok(())
            }
            StorageOp::Clean {
                step:
                    CleanStep::Swap {
                        segment,
                        offset_index,
                        time_index,
                    },
                ..
            } => {
                match store.swap_job(segment, offset_index, time_index) {
                    Ok(job) => jobs.push(Job {
                        log,
                        work: Work::Swap { segment, job },
                    }),
                    Err(e) => done.push(StorageDone::Swapped {
                        log,
                        segment,
                        result: Err(e.to_string()),
                    }),
                }
                Ok(())
            }
            StorageOp::Clean { step, .. } => store.clean_write(&step).map(|_| ()),
            StorageOp::Close { delete, .. } => {
                self.close(log, delete, jobs);
                Ok(())
            }
        };
        if let Err(e) = result {
            if let Some(state) = self.logs.get_mut(&log) {
                state.failed = true;
            }
            done.push(StorageDone::WriteFailed {
                log,
                error: e.to_string(),
            });
        }
    }

    fn close(&mut self, log: LogId, delete: bool, jobs: &mut Vec<Job<S>>) {
        let Some(state) = self.logs.remove(&log) else {
            return;
        };
        let dir = state.store.borrow().dir().to_path_buf();
        drop(state);
        if self.jobs_out.contains_key(&log) {
            // A job of the log still runs (a group commit, a hard state, a swap, a barrier):
            // the directory goes after it, or the job could bring it back.
            self.closing.insert(log, Closing { dir, delete });
        } else if delete {
            self.remove_dir(log, dir, jobs);
        }
    }

    fn remove_dir(&mut self, log: LogId, dir: PathBuf, jobs: &mut Vec<Job<S>>) {
        self.removing.insert(dir.clone());
        jobs.push(Job {
            log,
            work: Work::Delete {
                storage: self.storage.clone(),
                dir,
            },
        });
    }

    /// Whether jobs of a closed log over `dir` (or its removal) are still out.
    fn dir_busy(&self, dir: &Path) -> bool {
        self.removing.contains(dir) || self.closing.values().any(|c| c.dir == dir)
    }

    fn count_jobs(&mut self, new: &[Job<S>]) {
        for job in new {
            *self.jobs_out.entry(job.log).or_default() += 1;
        }
    }

    /// Whether `log` is open here.
    pub fn is_open(&self, log: LogId) -> bool {
        self.logs.contains_key(&log)
    }
}

impl<S: Storage> LogReader for Disk<S> {
    fn read_at(&self, log: LogId, io: ReadIo) -> Result<Bytes, ReadError> {
        match self.logs.get(&log) {
            Some(state) if !state.failed => state.store.borrow_mut().read_io(io),
            _ => Err(ReadError::StorageFailed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageFile;
    use crate::testing::MemStorage;

    fn write(storage: &MemStorage, path: &Path, bytes: &[u8]) {
        let file = storage.open(path, true).unwrap();
        file.append(bytes).unwrap();
        file.sync().unwrap();
    }

    #[test]
    fn a_directory_claims_its_topic_once_and_keeps_its_files() {
        let storage = MemStorage::new();
        let dir = Path::new("t-0");
        write(&storage, &dir.join("00000000000000000000.log"), b"batch");
        assert_eq!(claim_dir(&storage, dir, [7; 16]).unwrap(), None);
        assert_eq!(claim_dir(&storage, dir, [7; 16]).unwrap(), None);
        assert!(storage.exists(&dir.join("00000000000000000000.log")));
        let marker = storage.read_file(&dir.join(TOPIC_ID_FILE)).unwrap();
        assert_eq!(decode_topic_id(&marker), Some([7; 16]));
    }

    #[test]
    fn a_directory_of_another_topic_is_emptied() {
        let storage = MemStorage::new();
        let dir = Path::new("t-0");
        claim_dir(&storage, dir, [1; 16]).unwrap();
        write(&storage, &dir.join("00000000000000000000.log"), b"old");
        let repair = claim_dir(&storage, dir, [2; 16]).unwrap();
        assert!(repair.unwrap().contains("deleted topic"));
        assert!(!storage.exists(&dir.join("00000000000000000000.log")));
        let marker = storage.read_file(&dir.join(TOPIC_ID_FILE)).unwrap();
        assert_eq!(decode_topic_id(&marker), Some([2; 16]));
    }

    #[test]
    fn a_damaged_marker_keeps_the_directory_and_is_rewritten() {
        let storage = MemStorage::new();
        let dir = Path::new("t-0");
        claim_dir(&storage, dir, [1; 16]).unwrap();
        write(&storage, &dir.join("00000000000000000000.log"), b"acked");
        // A flipped bit in the id: without the CRC it would name another topic.
        assert!(storage.flip_bit(&dir.join(TOPIC_ID_FILE), 3));
        let repair = claim_dir(&storage, dir, [1; 16]).unwrap();
        assert!(repair.unwrap().contains("damaged"));
        assert!(storage.exists(&dir.join("00000000000000000000.log")));
        let marker = storage.read_file(&dir.join(TOPIC_ID_FILE)).unwrap();
        assert_eq!(decode_topic_id(&marker), Some([1; 16]));
        // A torn (short) marker is damage too.
        let file = storage.open(&dir.join(TOPIC_ID_FILE), false).unwrap();
        file.truncate(9).unwrap();
        assert!(claim_dir(&storage, dir, [1; 16])
            .unwrap()
            .unwrap()
            .contains("damaged"));
        assert!(storage.exists(&dir.join("00000000000000000000.log")));
    }
}

//! Executes a partition log's effects against a [`Storage`]: the one place that turns [`LogOp`]s,
//! [`SyncRequest`]s, read cursors and recovery reads into storage calls. The node runs it on the
//! real file store, tests and the simulator on [`MemStorage`](crate::testing::MemStorage).
//!
//! Layout of a partition directory:
//! `00000000000000000000.log` / `.index` / `.timeindex` per segment, and `checkpoint`.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::recovery::{Checkpoint, CHECKPOINT_FILE, CHECKPOINT_TMP_FILE};
use super::segment::parse_log_file_name;
use super::{
    index_file_name, log_file_name, time_index_file_name, CleanError, CleanReport, CleanStep,
    LogConfig, LogOp, PartitionLog, ReadCursor, ReadError, ReadIo, Recovery, RecoveryIo,
    SegmentReader, SyncRequest,
};
use crate::limits::CLEANER_IO_BYTES;
use crate::storage::{read_all, replace_durably, Storage, StorageFile};

/// Open segment files of one partition.
#[derive(Debug)]
pub struct LogStore<S: Storage> {
    storage: S,
    dir: PathBuf,
    segments: BTreeMap<u64, S::File>,
    /// What recovery had to repair when the partition was opened, in words, for the shell to log.
    repairs: Vec<String>,
}

/// The file syncs of one group commit, detached so the shell can run them off its event loop.
/// Suffix of a segment's cleaned copy while it is being written (see [`LogStore::clean`]).
pub const CLEANED_SUFFIX: &str = ".cleaned";

fn cleaned_file_name(base_offset: u64) -> String {
    format!("{}{CLEANED_SUFFIX}", log_file_name(base_offset))
}

/// What one call of [`LogStore::clean`] got done.
#[derive(Debug, Default)]
pub struct CleanProgress {
    /// A cleaning is still under way (call again).
    pub more: bool,
    /// A cleaning finished.
    pub finished: Option<CleanReport>,
    /// A cleaning stopped at damaged data (the partition should be reopened to recover it).
    pub halted: Option<CleanError>,
}

pub struct SyncJob<S: Storage> {
    files: Vec<S::File>,
    /// The checkpoint's temporary file, to fsync and rename over the checkpoint.
    checkpoint: Option<S::File>,
    dir: Option<(S, PathBuf)>,
}

impl<S: Storage> SyncJob<S> {
    /// Blocks until every file is durable, then the renamed checkpoint, then the directory.
    /// The order is what makes the checkpoint safe: it names segments whose data and indexes
    /// are synced before it, and it replaces the old one atomically (a crash leaves one or the
    /// other, never a torn mix: the rename is durable only with the directory).
    pub fn run(self) -> io::Result<()> {
        for file in &self.files {
            file.sync()?;
        }
        if let Some(tmp) = &self.checkpoint {
            tmp.sync()?;
            let (storage, dir) = self
                .dir
                .as_ref()
                .expect("a checkpoint sync syncs its directory");
            storage.rename(&dir.join(CHECKPOINT_TMP_FILE), &dir.join(CHECKPOINT_FILE))?;
        }
        if let Some((storage, dir)) = &self.dir {
            storage.sync_dir(dir)?;
        }
        Ok(())
    }
}

/// Replaces a segment with its cleaned copy, crash-safely, wherever it runs: the copy (its side
/// file) is fsynced; the old index files are removed and the directory synced, so no stale
/// index can describe the new file; the copy is renamed over the segment and the directory
/// synced; then the new index files are written and synced. A crash before the rename leaves
/// the old segment, after it the new one; recovery rebuilds missing index files from the
/// segment, and removes a leftover side file.
pub struct SwapJob<S: Storage> {
    storage: S,
    dir: PathBuf,
    segment: u64,
    offset_index: Vec<u8>,
    time_index: Vec<u8>,
}

impl<S: Storage> SwapJob<S> {
    /// Blocks on the fsyncs described above.
    pub fn run(self) -> io::Result<()> {
        let (storage, dir, segment) = (&self.storage, &self.dir, self.segment);
        let side_path = dir.join(cleaned_file_name(segment));
        storage.open(&side_path, false)?.sync()?;
        for name in [index_file_name(segment), time_index_file_name(segment)] {
            let path = dir.join(name);
            if storage.exists(&path) {
                storage.remove_file(&path)?;
            }
        }
        storage.sync_dir(dir)?;
        storage.rename(&side_path, &dir.join(log_file_name(segment)))?;
        storage.sync_dir(dir)?;
        for (name, bytes) in [
            (index_file_name(segment), &self.offset_index),
            (time_index_file_name(segment), &self.time_index),
        ] {
            let file = storage.open(&dir.join(name), true)?;
            file.truncate(0)?;
            file.append(bytes)?;
            file.sync()?;
            assert_eq!(
                file.len()?,
                bytes.len() as u64,
                "the index was written whole"
            );
        }
        storage.sync_dir(dir)
    }
}

impl<S: Storage> LogStore<S> {
    /// Opens (or creates) the partition in `dir`, recovering it as described in
    /// [`recovery`](super::recovery), and applies the repairs recovery decided on.
    pub fn open(
        storage: S,
        dir: PathBuf,
        config: LogConfig,
    ) -> io::Result<(PartitionLog, LogStore<S>)> {
        LogStore::open_bounded(storage, dir, config, None, 0, |_| Ok(()))
    }

    /// Before a recovery: makes the checkpoint in `dir` vouch for nothing
    /// ([`Checkpoint::distrusted`]), durably, so that this recovery, and every one after it
    /// until a group commit writes a fresh checkpoint, scans and replays every segment and cuts
    /// at the first damaged batch. For a log a read found damaged below its recovery point,
    /// which recovery otherwise trusts unread. Returns whether there was a checkpoint to
    /// distrust (a missing or damaged one means a full scan anyway).
    pub fn distrust_checkpoint(storage: &S, dir: &Path) -> io::Result<bool> {
        let path = dir.join(CHECKPOINT_FILE);
        if !storage.exists(&path) {
            return Ok(false);
        }
        let bytes = read_all(&storage.open(&path, false)?)?;
        let Some(checkpoint) = Checkpoint::decode(&bytes) else {
            return Ok(false);
        };
        let first_segment = storage
            .list(dir)?
            .iter()
            .filter_map(|name| parse_log_file_name(name))
            .filter(|base| *base >= checkpoint.offsets.start())
            .min();
        let Some(distrusted) = first_segment.and_then(|first| checkpoint.distrusted(first)) else {
            return Ok(false);
        };
        replace_durably(
            storage,
            &dir.join(CHECKPOINT_TMP_FILE),
            &path,
            &distrusted.encode(),
        )?;
        Ok(true)
    }

    /// [`LogStore::open`] for a Raft replica: a batch whose leader epoch is above `epoch_max`
    /// (the replica's stored term) is treated as damage, like a bad CRC. If recovery found
    /// damage ([`Recovery::damage`]), `on_damage` runs before any repair touches the files: a
    /// replica stores that it must repair, so a crash after the cut cannot make it forget.
    pub fn open_bounded(
        storage: S,
        dir: PathBuf,
        config: LogConfig,
        epoch_max: Option<i32>,
        commit_floor: u64,
        on_damage: impl FnOnce(super::Damage) -> io::Result<()>,
    ) -> io::Result<(PartitionLog, LogStore<S>)> {
        storage.create_dir_all(&dir)?;
        let mut listing = Vec::new();
        let mut checkpoint = None;
        for name in storage.list(&dir)? {
            let path = dir.join(&name);
            // The copy of an unfinished cleaning: the segment it was made from is still there.
            if name == CHECKPOINT_TMP_FILE || name.ends_with(CLEANED_SUFFIX) {
                storage.remove_file(&path)?;
                continue;
            }
            let file = storage.open(&path, false)?;
            if name == CHECKPOINT_FILE {
                checkpoint = Some(read_all(&file)?);
            }
            listing.push((name, file.len()?));
        }
        let mut store = LogStore {
            storage,
            dir,
            segments: BTreeMap::new(),
            repairs: Vec::new(),
        };
        let mut recovery = Recovery::new(config, &listing, checkpoint.as_deref());
        if let Some(max) = epoch_max {
            recovery = recovery.with_epoch_max(max);
        }
        recovery = recovery.with_commit_floor(commit_floor);
        while let Some(io) = recovery.next_io() {
            match io {
                RecoveryIo::ReadIndexes { segment } => {
                    let offsets = store.read_optional(&index_file_name(segment))?;
                    let times = store.read_optional(&time_index_file_name(segment))?;
                    recovery.feed_indexes(&offsets, &times);
                }
                RecoveryIo::ReadSegment(read) => {
                    let bytes = store
                        .segment(read.segment)?
                        .read_at(read.position, read.len as usize)?;
                    recovery.feed_segment(&bytes);
                }
            }
        }
        if let Some(why) = recovery.kafka_offsets_lost() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {why}", store.dir.display()),
            ));
        }
        if let Some(damage) = recovery.damage() {
            store.repairs.push(format!(
                "data that may have been synced is damaged from log offset {} (the log held at \
                 least up to {})",
                damage.first_lost, damage.end
            ));
            on_damage(damage)?;
        }
        let (mut log, repairs) = recovery.finish();
        for op in repairs {
            match &op {
                LogOp::TruncateSegment { segment, len } => store
                    .repairs
                    .push(format!("segment {segment}: torn or corrupt tail cut at byte {len}")),
                LogOp::DeleteSegment { base_offset } => store.repairs.push(format!(
                    "segment {base_offset} removed (it followed a cut tail or a gap, was empty, or its deletion was interrupted)"
                )),
                _ => {}
            }
            store.apply(op)?;
        }
        while let Some(op) = log.poll_op() {
            store.apply(op)?;
        }
        // Files of segments recovery removed were dropped with them: no read goes to one.
        debug_assert!(
            store
                .segments
                .keys()
                .all(|base| log.segments().any(|segment| segment.base_offset == *base)),
            "an open segment file the recovered log does not have"
        );
        Ok((log, store))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes the recovered log durable before anyone counts on it: fsyncs every segment file
    /// recovery read (the tail and any segment whose index it rebuilt) and the directory. After
    /// a process kill (not a power loss) the page cache can still hold writes that were never
    /// synced; recovery reads them like the rest, and a Raft replica would vote and acknowledge
    /// on them. Segments below the checkpoint's recovery point were synced when sealed and are
    /// not opened by recovery.
    pub fn sync_recovered(&self) -> io::Result<()> {
        for file in self.segments.values() {
            file.sync()?;
        }
        self.storage.sync_dir(&self.dir)
    }

    /// Repairs recovery made when this partition was opened (cut tails, removed segments).
    pub fn repairs(&self) -> &[String] {
        &self.repairs
    }

    fn read_optional(&self, name: &str) -> io::Result<Vec<u8>> {
        let path = self.dir.join(name);
        if !self.storage.exists(&path) {
            return Ok(Vec::new());
        }
        read_all(&self.storage.open(&path, false)?)
    }

    fn segment(&mut self, base: u64) -> io::Result<&S::File> {
        if !self.segments.contains_key(&base) {
            let file = self
                .storage
                .open(&self.dir.join(log_file_name(base)), false)?;
            self.segments.insert(base, file);
        }
        Ok(&self.segments[&base])
    }

    fn write_whole(&self, name: &str, bytes: &[u8]) -> io::Result<S::File> {
        let file = self.storage.open(&self.dir.join(name), true)?;
        file.truncate(0)?;
        file.append(bytes)?;
        Ok(file)
    }

    /// Carries out one effect. An error means the log's storage can no longer be trusted: the
    /// caller must call [`PartitionLog::on_storage_failed`] and reopen the partition.
    pub fn apply(&mut self, op: LogOp) -> io::Result<()> {
        match op {
            LogOp::CreateSegment { base_offset } => {
                let file = self
                    .storage
                    .open(&self.dir.join(log_file_name(base_offset)), true)?;
                self.segments.insert(base_offset, file);
            }
            LogOp::Append {
                segment,
                position,
                bytes,
            } => {
                let file = self.segment(segment)?;
                debug_assert_eq!(file.len()?, position, "append at the wrong position");
                file.append(&bytes)?;
                // Both stores append whole or fail: the file ends where the log's segment does.
                debug_assert_eq!(
                    file.len()?,
                    position + bytes.len() as u64,
                    "segment {segment} did not grow by the appended bytes"
                );
            }
            LogOp::WriteIndexes {
                segment,
                offset_index,
                time_index,
            } => {
                // Recovery validates these by length and CRC: each must hold exactly its bytes.
                let file = self.write_whole(&index_file_name(segment), &offset_index)?;
                assert_eq!(
                    file.len()?,
                    offset_index.len() as u64,
                    "the offset index of segment {segment} was not written whole"
                );
                let file = self.write_whole(&time_index_file_name(segment), &time_index)?;
                assert_eq!(
                    file.len()?,
                    time_index.len() as u64,
                    "the time index of segment {segment} was not written whole"
                );
            }
            LogOp::DeleteSegment { base_offset } => {
                self.segments.remove(&base_offset);
                for name in [
                    log_file_name(base_offset),
                    index_file_name(base_offset),
                    time_index_file_name(base_offset),
                ] {
                    let path = self.dir.join(name);
                    if self.storage.exists(&path) {
                        self.storage.remove_file(&path)?;
                    }
                }
                // Durable with the next group commit (the log marked the directory dirty).
            }
            LogOp::TruncateSegment { segment, len } => {
                let file = self.segment(segment)?;
                file.truncate(len)?;
                // Never longer after a cut (a file already shorter, as a failed write can leave
                // it, stays so on the simulated store; a real one pads it with zeros).
                assert!(
                    file.len()? <= len,
                    "segment {segment} cut to at most {len} bytes"
                );
            }
            LogOp::SyncCut { segment, dir } => self.sync_cut(segment, dir)?,
            LogOp::WriteCheckpoint { bytes } => {
                // Made durable and renamed into place by the next group commit's `SyncJob`.
                let tmp = self.write_whole(CHECKPOINT_TMP_FILE, &bytes)?;
                assert_eq!(
                    tmp.len()?,
                    bytes.len() as u64,
                    "the checkpoint was written whole"
                );
            }
        }
        Ok(())
    }

    /// A [`LogOp::SyncCut`] barrier, run wherever the caller likes (it blocks on fsyncs).
    pub fn sync_cut(&mut self, segment: u64, dir: bool) -> io::Result<()> {
        self.segment(segment)?.sync()?;
        if dir {
            self.storage.sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The barrier of [`LogOp::SyncCut`] detached from the store, to run off the event loop.
    pub fn sync_cut_job(&mut self, segment: u64, dir: bool) -> io::Result<SyncJob<S>> {
        let file = self.segment(segment)?.clone();
        Ok(SyncJob {
            files: vec![file],
            checkpoint: None,
            dir: dir.then(|| (self.storage.clone(), self.dir.clone())),
        })
    }

    /// Drains and applies every pending op of `log`. On error the log is marked failed.
    pub fn apply_all(&mut self, log: &mut PartitionLog) -> io::Result<()> {
        while let Some(op) = log.poll_op() {
            if let Err(e) = self.apply(op) {
                log.on_storage_failed();
                return Err(e);
            }
        }
        // Every deletion the log decided on has run, and with it the file was dropped.
        debug_assert!(
            self.segments
                .keys()
                .all(|base| log.segments().any(|segment| segment.base_offset == *base)),
            "an open file of a segment the log deleted"
        );
        Ok(())
    }

    /// The file syncs `request` needs, ready to run anywhere.
    pub fn sync_job(&mut self, request: &SyncRequest) -> io::Result<SyncJob<S>> {
        let mut files = Vec::with_capacity(request.segments.len() + 2 * request.indexes.len());
        // A truncation may have deleted a segment after the request was made: nothing to sync.
        let skip_deleted = |r: io::Result<S::File>| match r {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        };
        for base in &request.segments {
            files.extend(skip_deleted(self.segment(*base).cloned())?);
        }
        for base in &request.indexes {
            for name in [index_file_name(*base), time_index_file_name(*base)] {
                files.extend(skip_deleted(
                    self.storage.open(&self.dir.join(name), false),
                )?);
            }
        }
        let checkpoint = if request.checkpoint {
            Some(
                self.storage
                    .open(&self.dir.join(CHECKPOINT_TMP_FILE), false)?,
            )
        } else {
            None
        };
        assert!(
            checkpoint.is_none() || request.dir,
            "a checkpoint sync syncs its directory"
        );
        let dir = request
            .dir
            .then(|| (self.storage.clone(), self.dir.clone()));
        Ok(SyncJob {
            files,
            checkpoint,
            dir,
        })
    }

    /// Runs `request` inline and reports it to `log` (tests, recovery, the simulator's
    /// synchronous paths). A failure marks the log failed.
    pub fn sync_now(&mut self, log: &mut PartitionLog, request: SyncRequest) -> io::Result<()> {
        let result = self.sync_job(&request).and_then(SyncJob::run);
        match result {
            Ok(()) => {
                log.on_synced(request);
                self.apply_all(log)
            }
            Err(e) => {
                log.on_storage_failed();
                log.on_synced(request);
                Err(e)
            }
        }
    }

    /// Reads one range a cursor asked for.
    pub fn read_io(&mut self, io: ReadIo) -> Result<Bytes, ReadError> {
        let file = self
            .segment(io.segment)
            .map_err(|e| ReadError::Corrupt(e.to_string()))?;
        let bytes = file
            .read_at(io.position, io.len as usize)
            .map_err(|e| ReadError::Corrupt(e.to_string()))?;
        // Fewer bytes is damage the cursor reports; more would break the storage contract.
        debug_assert!(
            bytes.len() <= io.len as usize,
            "a read of {} bytes returned {}",
            io.len,
            bytes.len()
        );
        Ok(Bytes::from(bytes))
    }

    /// Runs a read cursor to completion.
    pub fn read(&mut self, cursor: &mut ReadCursor) -> Result<(), ReadError> {
        while let Some(io) = cursor.next_io() {
            let bytes = self.read_io(io)?;
            cursor.feed(bytes)?;
        }
        Ok(())
    }

    /// Runs compaction steps of `log` (see [`PartitionLog::next_clean_step`]) until about
    /// `budget` bytes were read or written, or nothing is left to do, every step inline (tests
    /// and tools; the node runs the swap off its event loop through [`LogStore::swap_job`]). A
    /// segment is replaced crash-safely, as [`SwapJob::run`] describes.
    /// An error means storage can no longer be trusted, as for [`LogStore::apply`].
    pub fn clean(
        &mut self,
        log: &mut PartitionLog,
        now_ms: u64,
        budget: u64,
    ) -> io::Result<CleanProgress> {
        let mut progress = CleanProgress::default();
        let mut spent = 0u64;
        while spent < budget {
            let Some(step) = log.next_clean_step(now_ms) else {
                progress.finished = log.take_clean_report();
                return Ok(progress);
            };
            match step {
                CleanStep::Read(io) => {
                    let bytes = self
                        .read_io(io)
                        .map_err(|e| io::Error::other(format!("{e:?}")))?;
                    spent += bytes.len() as u64;
                    if let Err(e) = log.feed_clean(&bytes) {
                        progress.halted = Some(e);
                    }
                }
                CleanStep::Swap {
                    segment,
                    offset_index,
                    time_index,
                } => {
                    self.swap_job(segment, offset_index, time_index)?.run()?;
                    self.on_swapped(segment)?;
                    log.on_clean_swapped(segment);
                }
                other => spent += self.clean_write(&other)?,
            }
        }
        progress.more = true;
        Ok(progress)
    }

    /// Carries out a cleaning step that only writes to the page cache (`Begin`, `Write`,
    /// `Discard`); returns the bytes it moved. `Read` and `Swap` are the caller's.
    pub fn clean_write(&mut self, step: &CleanStep) -> io::Result<u64> {
        match step {
            CleanStep::Begin { segment, copy } => {
                let (segment, copy) = (*segment, *copy);
                let side = self.write_whole(&cleaned_file_name(segment), &[])?;
                let source = self.segment(segment)?.clone();
                let mut at = 0;
                while at < copy {
                    let len = (copy - at).min(u64::from(CLEANER_IO_BYTES)) as usize;
                    let bytes = source.read_at(at, len)?;
                    if bytes.len() != len {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("segment {segment} is shorter than the log believes"),
                        ));
                    }
                    side.append(&bytes)?;
                    at += len as u64;
                }
                assert_eq!(
                    side.len()?,
                    copy,
                    "the side file holds the unchanged prefix"
                );
                Ok(copy)
            }
            CleanStep::Write { segment, bytes } => {
                let side = self
                    .storage
                    .open(&self.dir.join(cleaned_file_name(*segment)), false)?;
                let before = side.len()?;
                side.append(bytes)?;
                assert_eq!(side.len()?, before + bytes.len() as u64, "appended whole");
                Ok(bytes.len() as u64)
            }
            CleanStep::Discard { segment } => {
                let path = self.dir.join(cleaned_file_name(*segment));
                if self.storage.exists(&path) {
                    self.storage.remove_file(&path)?;
                }
                Ok(0)
            }
            CleanStep::Read(_) | CleanStep::Swap { .. } => {
                unreachable!("reads and swaps are the caller's: {step:?}")
            }
        }
    }

    /// The swap of a cleaned segment, detached to run off the event loop. Reads go on meanwhile
    /// through the handle of the old segment file, which this caches first (the rename leaves
    /// it pointing at the old data); [`LogStore::on_swapped`] then switches to the new file.
    pub fn swap_job(
        &mut self,
        segment: u64,
        offset_index: Vec<u8>,
        time_index: Vec<u8>,
    ) -> io::Result<SwapJob<S>> {
        self.segment(segment)?;
        Ok(SwapJob {
            storage: self.storage.clone(),
            dir: self.dir.clone(),
            segment,
            offset_index,
            time_index,
        })
    }

    /// The swap of `segment` completed: reads use the cleaned file from now on.
    pub fn on_swapped(&mut self, segment: u64) -> io::Result<()> {
        self.segments.remove(&segment);
        self.segment(segment)?;
        Ok(())
    }

    /// Removes the whole partition directory (topic deletion).
    pub fn delete(self) -> io::Result<()> {
        let parent = self.dir.parent().map(Path::to_path_buf).unwrap_or_default();
        self.storage.remove_dir_all(&self.dir)?;
        self.storage.sync_dir(&parent)
    }
}

/// A store behind a `RefCell` reads for a [`crate::replica::Replica`], which plans reads while the
/// host holds the store.
impl<S: Storage> SegmentReader for std::cell::RefCell<LogStore<S>> {
    fn read_at(&self, io: ReadIo) -> Result<Bytes, ReadError> {
        self.borrow_mut().read_io(io)
    }
}

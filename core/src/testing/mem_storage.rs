//! [`MemStorage`]: the simulated [`Storage`] of core's property tests and the simulator.
//!
//! It keeps, for every file, the image that has reached the disk (synced) and the image the page
//! cache holds, so a crash can drop exactly what was never synced.
//!
//! Durability model (stricter than most file systems, on purpose):
//! - file contents are durable only up to the last successful `sync` of that file, and so is a
//!   truncation: until the file is synced, a crash brings the cut bytes back (the durable image
//!   keeps its old length and bytes);
//! - creating, removing or renaming a file is durable only after `sync_dir` of its directory;
//! - a failed `sync` (an injected fault) loses the pages it covered, as Linux does after
//!   "fsyncgate": a later successful sync does not bring them back. The node must treat a failed
//!   fsync as fatal for the log and recover from disk;
//! - any changing operation can fail on an injected fault ([`Faults`]): a write, an fsync, a
//!   directory sync, a rename, a removal, an open; a write can also land at the wrong offset of
//!   its file (a misdirected write), leaving stale bytes where it was meant to go;
//! - a crash keeps, per [`CrashMode`], nothing unsynced, a part of the last unsynced write, or
//!   for every file independently a prefix of its unsynced operations whose last write may be
//!   torn.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::rng::Rng;
use crate::storage::{Storage, StorageFile};

/// A change to a file not yet covered by a sync, kept in order for [`CrashMode::TearEach`].
#[derive(Clone, Debug, PartialEq, Eq)]
enum Unsynced {
    Write { at: u64, bytes: Vec<u8> },
    Truncate { len: u64 },
}

#[derive(Clone, Debug, Default)]
struct MemFile {
    /// What the page cache holds: what reads see.
    current: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
    /// The changes that turned `durable` into `current`, oldest first (all of them, except the
    /// pages a failed fsync dropped: those are lost whatever happens).
    unsynced: Vec<Unsynced>,
}

/// Writes `bytes` into `image` at `at`, padding with zeros up to `at`.
fn write_into(image: &mut Vec<u8>, at: u64, bytes: &[u8]) {
    let at = at as usize;
    if image.len() < at {
        image.resize(at, 0);
    }
    let overlap = (image.len() - at).min(bytes.len());
    image[at..at + overlap].copy_from_slice(&bytes[..overlap]);
    image.extend_from_slice(&bytes[overlap..]);
}

#[derive(Debug, Default)]
struct MemState {
    /// Files by path: what reads see now. Each file is shared by its open handles.
    files: BTreeMap<PathBuf, Arc<Mutex<MemFile>>>,
    /// Directory entries as they would be found after a crash (path to file).
    durable_entries: BTreeMap<PathBuf, Arc<Mutex<MemFile>>>,
    dirs: std::collections::BTreeSet<PathBuf>,
    faults: Faults,
    sync_latency: std::time::Duration,
    /// Writes not yet synced, in order, for tearing on crash: (file, offset, length).
    unsynced_writes: Vec<(PathBuf, u64, u64)>,
    /// The last misdirected write, until [`MemStorage::persist_misdirected`] takes it.
    misdirected: Option<Misdirected>,
}

/// Where a misdirected write went: `bytes` meant for `at` of `path` landed at `wrong`.
#[derive(Clone, Debug)]
struct Misdirected {
    path: PathBuf,
    at: u64,
    wrong: u64,
    bytes: Vec<u8>,
}

/// Injected faults. Each fires once, on the next matching operation.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    pub fail_next_write: bool,
    pub fail_next_sync: bool,
    pub fail_next_read: bool,
    /// The next `sync_dir` fails (nothing about the directory becomes durable).
    pub fail_next_sync_dir: bool,
    /// The next `rename` fails (nothing is renamed).
    pub fail_next_rename: bool,
    /// The next `remove_file` fails (the file stays).
    pub fail_next_remove: bool,
    /// The next `open` fails (with or without `create`; nothing is created).
    pub fail_next_open: bool,
    /// The next append to a file that already holds bytes lands this many bytes (at least 1, at
    /// most the file's length) before where it was meant to go: it overwrites older bytes of the
    /// file, and its own range keeps zeros (stale bytes). The write reports success.
    pub misdirect_next_write: Option<u64>,
    /// Power is cut after this many more changing operations (file creations, writes,
    /// truncations, syncs, removals, renames, directory syncs): every later one fails, until
    /// [`MemStorage::crash`]. Lets a test stop a multi-step procedure at each point in turn.
    pub power_cut_after_ops: Option<u64>,
}

/// How a crash treats the last unsynced write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced byte is lost.
    Clean,
    /// The last unsynced write is partly persisted: its first `keep_bytes` bytes survive, the rest
    /// of the file's unsynced tail is lost. With `garbage`, the file keeps the whole length of that
    /// write but the bytes after `keep_bytes` are stale garbage (the size reached the disk, the
    /// data blocks did not): only a checksum can tell.
    TearLastWrite { keep_bytes: u64, garbage: bool },
    /// Every file independently keeps a prefix of its unsynced writes and truncations (in the
    /// order they were made, possibly none, possibly all); the first write not kept may survive
    /// in part: a prefix of it, the rest either missing or (the size reached the disk) stale
    /// garbage. The choices are drawn from an [`Rng`] seeded with `seed`, file by file in path
    /// order, so a crash is reproducible.
    /// Without `garbage`, a torn write only ever leaves a prefix of its bytes.
    TearEach { seed: u64, garbage: bool },
}

impl CrashMode {
    /// Whether the crash may leave stale garbage where a write was meant to go.
    pub fn garbage(self) -> bool {
        match self {
            CrashMode::Clean => false,
            CrashMode::TearLastWrite { garbage, .. } | CrashMode::TearEach { garbage, .. } => {
                garbage
            }
        }
    }

    /// The same crash, tearing writes into prefixes only.
    pub fn without_garbage(self) -> CrashMode {
        match self {
            CrashMode::Clean => CrashMode::Clean,
            CrashMode::TearLastWrite { keep_bytes, .. } => CrashMode::TearLastWrite {
                keep_bytes,
                garbage: false,
            },
            CrashMode::TearEach { seed, .. } => CrashMode::TearEach {
                seed,
                garbage: false,
            },
        }
    }
}

/// The simulated store. Cheap to clone; clones share state, so a "node" can be crashed and its
/// storage handed to the restarted instance.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    state: Arc<Mutex<MemState>>,
}

/// A handle on a [`MemStorage`] file.
#[derive(Clone, Debug)]
pub struct MemFileHandle {
    path: PathBuf,
    file: Arc<Mutex<MemFile>>,
    storage: MemStorage,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock is already a test failure; keep going to report it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} fault"))
}

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// Arms faults for the next operations.
    pub fn inject(&self, faults: Faults) {
        lock(&self.state).faults = faults;
    }

    /// Simulates power loss: every file reverts to its durable image and the directory tree to its
    /// durable entries. Open handles must be dropped by the caller (they refer to the old files).
    pub fn crash(&self, mode: CrashMode) {
        let mut state = lock(&self.state);
        let torn = match mode {
            CrashMode::Clean | CrashMode::TearEach { .. } => None,
            CrashMode::TearLastWrite {
                keep_bytes,
                garbage,
            } => state
                .unsynced_writes
                .last()
                .cloned()
                .map(|(path, at, len)| (path, at, len, keep_bytes.min(len), garbage)),
        };
        let mut rng = match mode {
            CrashMode::TearEach { seed, garbage } => Some((Rng::new(seed), garbage)),
            _ => None,
        };
        let mut files = BTreeMap::new();
        for (path, file) in &state.durable_entries {
            let f = lock(file);
            let mut image = f.durable.clone();
            if let Some((rng, garbage)) = &mut rng {
                tear_each(&mut image, &f.unsynced, rng, *garbage);
            }
            if let Some((torn_path, at, len, keep, garbage)) = &torn {
                if torn_path == path && *at as usize == image.len() {
                    let end = (*at + *keep).min(f.current.len() as u64) as usize;
                    image.extend_from_slice(&f.current[image.len()..end.max(image.len())]);
                    if *garbage {
                        image.extend(std::iter::repeat_n(0xA5, (*len - *keep) as usize));
                    }
                }
            }
            files.insert(
                path.clone(),
                Arc::new(Mutex::new(MemFile {
                    current: image.clone(),
                    durable: image,
                    unsynced: Vec::new(),
                })),
            );
        }
        state.durable_entries = files.clone();
        state.files = files;
        state.unsynced_writes.clear();
        state.faults.power_cut_after_ops = None;
    }

    /// Counts one changing operation against [`Faults::power_cut_after_ops`].
    fn power(&self) -> io::Result<()> {
        let mut state = lock(&self.state);
        match &mut state.faults.power_cut_after_ops {
            Some(0) => Err(injected("operation after the power cut")),
            Some(left) => {
                *left -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Flips one bit of a file in place, in both images (damage on the medium).
    pub fn flip_bit(&self, path: &Path, bit: u64) -> bool {
        let state = lock(&self.state);
        let Some(file) = state.files.get(path) else {
            return false;
        };
        let mut f = lock(file);
        let at = (bit / 8) as usize;
        if at >= f.current.len() {
            return false;
        }
        f.current[at] ^= 1 << (bit % 8);
        if at < f.durable.len() {
            f.durable[at] ^= 1 << (bit % 8);
        }
        true
    }

    /// How long an fsync should take in simulated time (a slow disk): a setting the simulator
    /// reads back ([`MemStorage::sync_latency`]) to delay the completion of each sync it runs.
    /// `MemStorage` itself never waits.
    pub fn set_sync_latency(&self, latency: std::time::Duration) {
        lock(&self.state).sync_latency = latency;
    }

    /// The latency set by [`MemStorage::set_sync_latency`].
    pub fn sync_latency(&self) -> std::time::Duration {
        lock(&self.state).sync_latency
    }

    /// Bytes of `path` that would survive a crash (0 if the file is not durably there).
    pub fn durable_len(&self, path: &Path) -> u64 {
        let state = lock(&self.state);
        state
            .durable_entries
            .get(path)
            .map_or(0, |f| lock(f).durable.len() as u64)
    }

    /// Reads a file's current bytes (triage and fault injection).
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let state = lock(&self.state);
        state.files.get(path).map(|f| lock(f).current.clone())
    }

    /// Total bytes written but not yet durable, over all files.
    pub fn unsynced_bytes(&self) -> u64 {
        let state = lock(&self.state);
        state
            .files
            .values()
            .map(|f| {
                let f = lock(f);
                (f.current.len() as u64).saturating_sub(f.durable.len() as u64)
            })
            .sum()
    }

    /// All file paths, for tests and triage.
    pub fn paths(&self) -> Vec<PathBuf> {
        lock(&self.state).files.keys().cloned().collect()
    }

    /// Makes the last misdirected write durable, as a disk may write any dirty page before it
    /// is asked to sync: the bytes it overwrote and the zeros left where it was meant to go
    /// reach the disk image too. Returns the file and what happened, or `None` if no write was
    /// misdirected since the last call (or its file is gone).
    pub fn persist_misdirected(&self) -> Option<String> {
        let mut state = lock(&self.state);
        let m = state.misdirected.take()?;
        let file = state.files.get(&m.path)?.clone();
        drop(state);
        let mut f = lock(&file);
        write_into(&mut f.durable, m.at, &vec![0u8; m.bytes.len()]);
        write_into(&mut f.durable, m.wrong, &m.bytes);
        Some(format!(
            "{}: {} bytes meant for byte {} landed at byte {}",
            m.path.display(),
            m.bytes.len(),
            m.at,
            m.wrong
        ))
    }

    /// The faults still armed (each is cleared when it fires).
    pub fn armed(&self) -> Faults {
        lock(&self.state).faults.clone()
    }

    fn take_fault(&self, pick: impl FnOnce(&mut Faults) -> &mut bool) -> bool {
        let mut state = lock(&self.state);
        std::mem::take(pick(&mut state.faults))
    }

    /// Counts a changing operation against a power cut, then fires the fault `pick` if armed.
    fn changing(&self, what: &str, pick: impl FnOnce(&mut Faults) -> &mut bool) -> io::Result<()> {
        self.power()?;
        if self.take_fault(pick) {
            return Err(injected(what));
        }
        Ok(())
    }
}

/// [`CrashMode::TearEach`] for one file: applies to its durable `image` a random prefix of its
/// `unsynced` changes, and perhaps a part of the first write left out.
fn tear_each(image: &mut Vec<u8>, unsynced: &[Unsynced], rng: &mut Rng, garbage: bool) {
    if unsynced.is_empty() {
        return;
    }
    let kept = rng.below(unsynced.len() as u64 + 1) as usize;
    for change in &unsynced[..kept] {
        match change {
            Unsynced::Write { at, bytes } => write_into(image, *at, bytes),
            Unsynced::Truncate { len } => image.truncate(*len as usize),
        }
    }
    if let Some(Unsynced::Write { at, bytes }) = unsynced.get(kept) {
        let keep = rng.below(bytes.len() as u64 + 1) as usize;
        let mut torn = bytes[..keep].to_vec();
        if garbage && rng.chance(500) {
            torn.resize(bytes.len(), 0xA5);
        }
        write_into(image, *at, &torn);
    }
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

impl Storage for MemStorage {
    type File = MemFileHandle;

    fn open(&self, path: &Path, create: bool) -> io::Result<MemFileHandle> {
        if create && !self.exists(path) {
            self.power()?;
        }
        if self.take_fault(|f| &mut f.fail_next_open) {
            return Err(injected("open"));
        }
        let mut state = lock(&self.state);
        let file = match state.files.get(path) {
            Some(file) => file.clone(),
            None if create => {
                let file = Arc::new(Mutex::new(MemFile::default()));
                state.files.insert(path.to_path_buf(), file.clone());
                let dir = parent(path);
                for d in dir.ancestors() {
                    state.dirs.insert(d.to_path_buf());
                }
                file
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{}", path.display()),
                ))
            }
        };
        Ok(MemFileHandle {
            path: path.to_path_buf(),
            file,
            storage: self.clone(),
        })
    }

    fn exists(&self, path: &Path) -> bool {
        let state = lock(&self.state);
        state.files.contains_key(path) || state.dirs.contains(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = lock(&self.state);
        let mut names = std::collections::BTreeSet::new();
        for path in state.files.keys().chain(state.dirs.iter()) {
            if let Ok(rest) = path.strip_prefix(dir) {
                if let Some(first) = rest.components().next() {
                    names.insert(first.as_os_str().to_string_lossy().into_owned());
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        for d in dir.ancestors() {
            state.dirs.insert(d.to_path_buf());
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.changing("remove", |f| &mut f.fail_next_remove)?;
        let mut state = lock(&self.state);
        state
            .files
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{}", path.display())))
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.files.retain(|p, _| !p.starts_with(dir));
        state.dirs.retain(|p| !p.starts_with(dir));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.changing("rename", |f| &mut f.fail_next_rename)?;
        let mut state = lock(&self.state);
        let file = state.files.remove(from).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{}", from.display()))
        })?;
        state.files.insert(to.to_path_buf(), file);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.changing("directory sync", |f| &mut f.fail_next_sync_dir)?;
        let mut state = lock(&self.state);
        let in_dir = |p: &PathBuf| parent(p) == dir;
        let current: Vec<_> = state
            .files
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, f)| (p.clone(), f.clone()))
            .collect();
        state.durable_entries.retain(|p, _| !in_dir(p));
        state.durable_entries.extend(current);
        // Files of subdirectories removed with remove_dir_all go with the parent's sync.
        let state = &mut *state;
        let dirs = &state.dirs;
        state
            .durable_entries
            .retain(|p, _| !p.starts_with(dir) || dirs.contains(&parent(p)));
        Ok(())
    }
}

impl StorageFile for MemFileHandle {
    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.file).current.len() as u64)
    }

    fn read_at(&self, position: u64, len: usize) -> io::Result<Vec<u8>> {
        if self.storage.take_fault(|f| &mut f.fail_next_read) {
            return Err(injected("read"));
        }
        let f = lock(&self.file);
        let start = (position as usize).min(f.current.len());
        let end = start.saturating_add(len).min(f.current.len());
        Ok(f.current[start..end].to_vec())
    }

    fn append(&self, bytes: &[u8]) -> io::Result<()> {
        self.storage.changing("write", |f| &mut f.fail_next_write)?;
        let at = {
            let mut f = lock(&self.file);
            let at = f.current.len() as u64;
            let misdirect = if at > 0 && !bytes.is_empty() {
                lock(&self.storage.state).faults.misdirect_next_write.take()
            } else {
                None
            };
            match misdirect {
                Some(back) => {
                    // The file grows as asked, but its new range keeps zeros, and the data
                    // overwrites bytes before it.
                    let wrong = at - back.clamp(1, at);
                    let zeros = vec![0u8; bytes.len()];
                    f.current.extend_from_slice(&zeros);
                    write_into(&mut f.current, wrong, bytes);
                    f.unsynced.push(Unsynced::Write { at, bytes: zeros });
                    f.unsynced.push(Unsynced::Write {
                        at: wrong,
                        bytes: bytes.to_vec(),
                    });
                    lock(&self.storage.state).misdirected = Some(Misdirected {
                        path: self.path.clone(),
                        at,
                        wrong,
                        bytes: bytes.to_vec(),
                    });
                }
                None => {
                    f.current.extend_from_slice(bytes);
                    f.unsynced.push(Unsynced::Write {
                        at,
                        bytes: bytes.to_vec(),
                    });
                }
            }
            at
        };
        lock(&self.storage.state)
            .unsynced_writes
            .push((self.path.clone(), at, bytes.len() as u64));
        Ok(())
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        self.storage.power()?;
        let mut f = lock(&self.file);
        f.current.truncate(len as usize);
        // Durable only with the next sync of this file: until then a crash brings the cut
        // bytes back.
        f.unsynced.push(Unsynced::Truncate { len });
        drop(f);
        // A torn last write never brings back bytes past the cut.
        let mut state = lock(&self.storage.state);
        state
            .unsynced_writes
            .retain(|(p, at, _)| *p != self.path || *at < len);
        for (p, at, n) in &mut state.unsynced_writes {
            if *p == self.path {
                *n = (*n).min(len - *at);
            }
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.storage.power()?;
        let failed = self.storage.take_fault(|f| &mut f.fail_next_sync);
        let mut f = lock(&self.file);
        if failed {
            // fsyncgate: the dirty pages are dropped and the error is reported once. The file
            // keeps its size (the lost pages read as zeros, and are lost on a crash too); a cut
            // stays a cut that is not yet durable.
            let len = f.current.len();
            let mut image = f.durable.clone();
            image.resize(len, 0);
            let cut = (len < f.durable.len()).then_some(Unsynced::Truncate { len: len as u64 });
            f.current = image;
            f.unsynced = cut.into_iter().collect();
            drop(f);
            lock(&self.storage.state)
                .unsynced_writes
                .retain(|(p, _, _)| *p != self.path);
            return Err(injected("fsync"));
        }
        f.durable = f.current.clone();
        f.unsynced.clear();
        drop(f);
        lock(&self.storage.state)
            .unsynced_writes
            .retain(|(p, _, _)| *p != self.path);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::read_all;

    #[test]
    fn a_crash_keeps_only_synced_bytes_of_durably_created_files() {
        let s = MemStorage::new();
        let dir = Path::new("t-0");
        let a = s.open(&dir.join("a"), true).unwrap();
        a.append(b"hello").unwrap();
        a.sync().unwrap();
        s.sync_dir(dir).unwrap();
        a.append(b" world").unwrap();
        let b = s.open(&dir.join("b"), true).unwrap();
        b.append(b"never").unwrap();
        b.sync().unwrap(); // Synced data, but the directory entry was never synced.
        assert_eq!(s.unsynced_bytes(), 6);
        s.crash(CrashMode::Clean);
        assert_eq!(s.list(dir).unwrap(), vec!["a".to_string()]);
        let a = s.open(&dir.join("a"), false).unwrap();
        assert_eq!(read_all(&a).unwrap(), b"hello");
    }

    #[test]
    fn a_torn_write_keeps_a_prefix_of_the_last_write() {
        let s = MemStorage::new();
        let a = s.open(Path::new("a"), true).unwrap();
        s.sync_dir(Path::new("")).unwrap();
        a.append(b"0123").unwrap();
        a.sync().unwrap();
        a.append(b"4567").unwrap();
        s.crash(CrashMode::TearLastWrite {
            keep_bytes: 2,
            garbage: false,
        });
        let a = s.open(Path::new("a"), false).unwrap();
        assert_eq!(read_all(&a).unwrap(), b"012345");
        a.append(b"67").unwrap();
        s.crash(CrashMode::TearLastWrite {
            keep_bytes: 1,
            garbage: true,
        });
        let a = s.open(Path::new("a"), false).unwrap();
        assert_eq!(read_all(&a).unwrap(), b"0123456\xA5");
    }

    #[test]
    fn a_failed_fsync_loses_the_dirty_pages_for_good() {
        let s = MemStorage::new();
        let a = s.open(Path::new("a"), true).unwrap();
        s.sync_dir(Path::new("")).unwrap();
        a.append(b"abc").unwrap();
        s.inject(Faults {
            fail_next_sync: true,
            ..Faults::default()
        });
        assert!(a.sync().is_err());
        a.sync().unwrap();
        s.crash(CrashMode::Clean);
        let a = s.open(Path::new("a"), false).unwrap();
        assert_eq!(read_all(&a).unwrap(), vec![0, 0, 0]);
    }

    #[test]
    fn removal_and_rename_become_durable_with_the_directory() {
        let s = MemStorage::new();
        let d = Path::new("d");
        s.open(&d.join("x"), true).unwrap().sync().unwrap();
        s.sync_dir(d).unwrap();
        s.remove_file(&d.join("x")).unwrap();
        s.crash(CrashMode::Clean);
        assert!(
            s.exists(&d.join("x")),
            "an unsynced removal must not survive a crash"
        );
        s.rename(&d.join("x"), &d.join("y")).unwrap();
        s.sync_dir(d).unwrap();
        s.crash(CrashMode::Clean);
        assert_eq!(s.list(d).unwrap(), vec!["y".to_string()]);
    }

    /// A synced file "0123456789" in a durable directory entry.
    fn synced_file(s: &MemStorage) -> MemFileHandle {
        let a = s.open(Path::new("a"), true).unwrap();
        s.sync_dir(Path::new("")).unwrap();
        a.append(b"0123456789").unwrap();
        a.sync().unwrap();
        a
    }

    fn reopen_all(s: &MemStorage) -> Vec<u8> {
        read_all(&s.open(Path::new("a"), false).unwrap()).unwrap()
    }

    #[test]
    fn a_truncation_is_durable_only_after_a_sync_of_the_file() {
        let s = MemStorage::new();
        let a = synced_file(&s);
        a.truncate(4).unwrap();
        assert_eq!(read_all(&a).unwrap(), b"0123");
        s.crash(CrashMode::Clean);
        assert_eq!(reopen_all(&s), b"0123456789", "an unsynced cut comes back");
        let a = s.open(Path::new("a"), false).unwrap();
        a.truncate(4).unwrap();
        a.append(b"ab").unwrap();
        s.crash(CrashMode::TearLastWrite {
            keep_bytes: 2,
            garbage: false,
        });
        assert_eq!(
            reopen_all(&s),
            b"0123456789",
            "a write after an unsynced cut is not torn onto the old bytes"
        );
        let a = s.open(Path::new("a"), false).unwrap();
        a.truncate(4).unwrap();
        a.sync().unwrap();
        s.crash(CrashMode::Clean);
        assert_eq!(reopen_all(&s), b"0123");
    }

    #[test]
    fn a_failed_fsync_after_a_truncation_leaves_the_cut_undone_on_disk() {
        let s = MemStorage::new();
        let a = synced_file(&s);
        a.truncate(6).unwrap();
        s.inject(Faults {
            fail_next_sync: true,
            ..Faults::default()
        });
        assert!(a.sync().is_err());
        assert_eq!(
            read_all(&a).unwrap(),
            b"012345",
            "the cut stays in the page cache"
        );
        s.crash(CrashMode::TearEach {
            seed: 7,
            garbage: true,
        });
        assert!(
            [&b"012345"[..], b"0123456789"].contains(&reopen_all(&s).as_slice()),
            "the cut happened or not"
        );
    }

    #[test]
    fn directory_sync_rename_remove_and_open_fail_once_when_injected() {
        let s = MemStorage::new();
        let d = Path::new("d");
        s.open(&d.join("x"), true).unwrap();
        s.inject(Faults {
            fail_next_sync_dir: true,
            ..Faults::default()
        });
        assert!(s.sync_dir(d).is_err());
        s.crash(CrashMode::Clean);
        assert!(
            !s.exists(&d.join("x")),
            "a failed directory sync made nothing durable"
        );

        s.open(&d.join("x"), true).unwrap();
        s.sync_dir(d).unwrap();
        s.inject(Faults {
            fail_next_rename: true,
            ..Faults::default()
        });
        assert!(s.rename(&d.join("x"), &d.join("y")).is_err());
        assert_eq!(s.list(d).unwrap(), vec!["x".to_string()]);
        s.rename(&d.join("x"), &d.join("y")).unwrap();

        s.inject(Faults {
            fail_next_remove: true,
            ..Faults::default()
        });
        assert!(s.remove_file(&d.join("y")).is_err());
        assert!(s.exists(&d.join("y")));
        s.remove_file(&d.join("y")).unwrap();

        s.inject(Faults {
            fail_next_open: true,
            ..Faults::default()
        });
        assert!(s.open(&d.join("z"), true).is_err());
        assert!(!s.exists(&d.join("z")), "a failed open creates nothing");
        s.open(&d.join("z"), true).unwrap();
    }

    #[test]
    fn tearing_each_file_keeps_a_prefix_of_its_own_unsynced_writes() {
        // Every outcome is the synced bytes, then a prefix of the writes in order, the first
        // write left out possibly in part and possibly padded with garbage; files are torn
        // independently, and the same seed always tears the same way.
        let writes: [&[u8]; 3] = [b"AAAA", b"BBBB", b"CCCC"];
        let mut lengths_a = std::collections::BTreeSet::new();
        let mut independent = false;
        let mut garbage = false;
        for seed in 0..200 {
            let run = || {
                let s = MemStorage::new();
                let a = s.open(Path::new("a"), true).unwrap();
                let b = s.open(Path::new("b"), true).unwrap();
                s.sync_dir(Path::new("")).unwrap();
                for w in writes {
                    a.append(w).unwrap();
                    b.append(w).unwrap();
                }
                s.crash(CrashMode::TearEach {
                    seed,
                    garbage: true,
                });
                let read = |p: &str| read_all(&s.open(Path::new(p), false).unwrap()).unwrap();
                (read("a"), read("b"))
            };
            let (a, b) = run();
            assert_eq!(
                (a.clone(), b.clone()),
                run(),
                "seed {seed} tears the same way"
            );
            for image in [&a, &b] {
                let good = image
                    .iter()
                    .zip(b"AAAABBBBCCCC")
                    .take_while(|(x, y)| x == y)
                    .count();
                assert!(
                    image[good..].iter().all(|x| *x == 0xA5),
                    "seed {seed}: {image:?} is not a prefix followed by garbage"
                );
                assert!(image.len() <= 12 && (image.len() == good || image.len() % 4 == 0));
                garbage |= image.len() > good;
            }
            lengths_a.insert(a.len());
            independent |= a != b;
        }
        assert!(lengths_a.contains(&0) && lengths_a.contains(&12) && lengths_a.len() > 6);
        assert!(independent, "two files were always torn alike");
        assert!(garbage, "no seed tore a write into garbage");
    }

    #[test]
    fn tearing_each_file_replays_truncations_in_order() {
        for seed in 0..100 {
            let s = MemStorage::new();
            let a = synced_file(&s);
            a.truncate(4).unwrap();
            a.append(b"xy").unwrap();
            s.crash(CrashMode::TearEach {
                seed,
                garbage: true,
            });
            let image = reopen_all(&s);
            assert!(
                [
                    &b"0123456789"[..],
                    b"0123",
                    b"0123x",
                    b"0123xy",
                    b"0123\xA5\xA5",
                    b"0123x\xA5"
                ]
                .contains(&image.as_slice()),
                "seed {seed}: {image:?}"
            );
        }
    }

    #[test]
    fn a_misdirected_write_lands_before_its_place_and_leaves_zeros_there() {
        let s = MemStorage::new();
        let a = synced_file(&s);
        let empty = s.open(Path::new("e"), true).unwrap();
        s.inject(Faults {
            misdirect_next_write: Some(4),
            ..Faults::default()
        });
        empty.append(b"first").unwrap();
        assert_eq!(
            read_all(&empty).unwrap(),
            b"first",
            "a write to an empty file has nowhere else to land"
        );
        a.append(b"abcd").unwrap();
        assert_eq!(read_all(&a).unwrap(), b"012345abcd\0\0\0\0");
        assert_eq!(s.armed().misdirect_next_write, None, "the fault fired once");
        a.append(b"ef").unwrap();
        a.sync().unwrap();
        s.crash(CrashMode::Clean);
        assert_eq!(reopen_all(&s), b"012345abcd\0\0\0\0ef");
    }

    #[test]
    fn a_persisted_misdirected_write_survives_a_crash_without_a_sync() {
        let s = MemStorage::new();
        let a = synced_file(&s);
        assert_eq!(s.persist_misdirected(), None, "nothing was misdirected");
        s.inject(Faults {
            misdirect_next_write: Some(20),
            ..Faults::default()
        });
        a.append(b"abc").unwrap();
        assert!(s.persist_misdirected().is_some());
        assert_eq!(s.persist_misdirected(), None, "taken once");
        s.crash(CrashMode::Clean);
        assert_eq!(
            reopen_all(&s),
            b"abc3456789\0\0\0",
            "clamped to the file's start, the synced bytes it hit are damaged"
        );
    }
}

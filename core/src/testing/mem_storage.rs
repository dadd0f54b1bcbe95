//! [`MemStorage`]: the simulated [`Storage`] of core's property tests and the simulator.
//!
//! It keeps, for every file, the image that has reached the disk (synced) and the image the page
//! cache holds, so a crash can drop exactly what was never synced.
//!
//! Durability model (stricter than most file systems, on purpose):
//! - file contents are durable only up to the last successful `sync` of that file;
//! - creating, removing or renaming a file is durable only after `sync_dir` of its directory;
//! - a failed `sync` (an injected fault) loses the pages it covered, as Linux does after
//!   "fsyncgate": a later successful sync does not bring them back. The node must treat a failed
//!   fsync as fatal for the log and recover from disk.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::storage::{Storage, StorageFile};

#[derive(Clone, Debug, Default)]
struct MemFile {
    /// What the page cache holds: what reads see.
    current: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
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
}

/// Injected faults. Each fires once, on the next matching operation.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    pub fail_next_write: bool,
    pub fail_next_sync: bool,
    pub fail_next_read: bool,
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
            CrashMode::Clean => None,
            CrashMode::TearLastWrite {
                keep_bytes,
                garbage,
            } => state
                .unsynced_writes
                .last()
                .cloned()
                .map(|(path, at, len)| (path, at, len, keep_bytes.min(len), garbage)),
        };
        let mut files = BTreeMap::new();
        for (path, file) in &state.durable_entries {
            let f = lock(file);
            let mut image = f.durable.clone();
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

    fn take_fault(&self, pick: impl FnOnce(&mut Faults) -> &mut bool) -> bool {
        let mut state = lock(&self.state);
        std::mem::take(pick(&mut state.faults))
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
        self.power()?;
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
        self.power()?;
        let mut state = lock(&self.state);
        let file = state.files.remove(from).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{}", from.display()))
        })?;
        state.files.insert(to.to_path_buf(), file);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.power()?;
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
        let dirs = state.dirs.clone();
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
        self.storage.power()?;
        if self.storage.take_fault(|f| &mut f.fail_next_write) {
            return Err(injected("write"));
        }
        let at = {
            let mut f = lock(&self.file);
            let at = f.current.len() as u64;
            f.current.extend_from_slice(bytes);
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
        let len = len as usize;
        f.current.truncate(len);
        // Shrinking is treated as immediately durable: it only ever removes bytes the log has
        // decided it will never serve.
        f.durable.truncate(len);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.storage.power()?;
        let failed = self.storage.take_fault(|f| &mut f.fail_next_sync);
        let mut f = lock(&self.file);
        if failed {
            // fsyncgate: the dirty pages are dropped and the error is reported once.
            let durable = f.durable.clone();
            let lost = f.current.len().saturating_sub(durable.len());
            f.current = durable;
            f.current.extend(std::iter::repeat_n(0u8, lost));
            drop(f);
            return Err(injected("fsync"));
        }
        f.durable = f.current.clone();
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
}

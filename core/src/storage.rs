//! The storage interface the node runs on.
//!
//! Core never performs I/O: the partition log emits [`LogOp`](crate::log::LogOp)s and the shell
//! executes them against a [`Storage`]. The node provides the real, file-backed implementation;
//! the simulated one, [`MemStorage`](crate::testing::MemStorage), is test scaffolding behind the
//! `testing` feature (core's own tests and the simulator).

use std::io;
use std::path::Path;

/// A file-system-like store. Paths are relative to the store's root.
pub trait Storage: Clone + Send + Sync + 'static {
    type File: StorageFile;

    /// Opens a file, creating it (and its directory, durably, as [`Storage::create_dir_all`])
    /// when `create` is set. The new file's own entry is durable after [`Storage::sync_dir`].
    fn open(&self, path: &Path, create: bool) -> io::Result<Self::File>;
    /// Whether a file or directory exists.
    fn exists(&self, path: &Path) -> bool;
    /// Names of the entries directly in `dir`, sorted; an empty list when `dir` does not exist.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates `dir` and its missing ancestors, durably: each new directory's entry in its
    /// parent is synced before this returns (the files in it still need [`Storage::sync_dir`]
    /// of `dir`).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything below it.
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Atomically replaces `to` with `from`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes creations, removals and renames in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file. Clones refer to the same file.
pub trait StorageFile: Clone + Send + Sync + 'static {
    fn len(&self) -> io::Result<u64>;
    /// Reads up to `len` bytes at `position`; fewer only at the end of the file.
    fn read_at(&self, position: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Appends at the end of the file. The bytes reach the OS (not yet the disk).
    fn append(&self, bytes: &[u8]) -> io::Result<()>;
    /// Cuts the file to `len` bytes.
    fn truncate(&self, len: u64) -> io::Result<()>;
    /// Makes everything written so far durable (fdatasync). May block; the shell runs it off the
    /// event loop.
    fn sync(&self) -> io::Result<()>;
}

/// Reads a whole (small) file.
pub fn read_all<F: StorageFile>(file: &F) -> io::Result<Vec<u8>> {
    let len = usize::try_from(file.len()?).map_err(|_| io::Error::other("file too large"))?;
    file.read_at(0, len)
}

/// Durably replaces the small file `path` with `bytes`: written whole to `tmp` (in the same
/// directory), fsynced, renamed over `path`, and the directory fsynced. A crash at any point
/// leaves either the old file or the new one at `path`, never a part of either. Blocks on two
/// fsyncs.
pub fn replace_durably<S: Storage>(
    storage: &S,
    tmp: &Path,
    path: &Path,
    bytes: &[u8],
) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new(""));
    assert_eq!(
        tmp.parent(),
        path.parent(),
        "a rename stays in one directory"
    );
    let file = storage.open(tmp, true)?;
    file.truncate(0)?;
    file.append(bytes)?;
    assert_eq!(
        file.len()?,
        bytes.len() as u64,
        "the file was written whole"
    );
    file.sync()?;
    storage.rename(tmp, path)?;
    storage.sync_dir(dir)
}

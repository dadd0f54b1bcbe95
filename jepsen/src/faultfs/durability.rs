//! What a power cut would lose: undo records for file data and snapshots of directories.
//!
//! The backing directory always holds the newest state (it plays the page cache and the disk at
//! once); this module keeps what is needed to go back to the last synced state. Files and
//! directories are known by their backing inode number (`st_ino`), which a rename keeps, so an
//! undo record follows its file wherever it is moved.

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{
    DropReport, DIRTY_DIRS_MAX, DIRTY_FILES_MAX, DIR_ENTRIES_MAX, TRASH_DIR, UNDO_BYTES_MAX,
    WALK_ENTRIES_MAX,
};

/// The synced state of one file that has unsynced changes.
#[derive(Debug)]
struct FileUndo {
    /// A descriptor of its own on the backing file: the undo works wherever the file was moved
    /// or unlinked to, and holding the inode keeps its number from being reused meanwhile.
    file: File,
    /// The file's length at its last sync.
    synced_len: u64,
    /// Synced bytes saved before their first unsynced change, by offset. The ranges never
    /// overlap and lie below `synced_len`; bytes at or past it need no saving, since restoring
    /// the length cuts them off.
    saved: BTreeMap<u64, Vec<u8>>,
    /// Bytes written or cut off since the last sync (what a power cut drops, for reports).
    unsynced_bytes: u64,
}

impl FileUndo {
    fn saved_bytes(&self) -> u64 {
        self.saved.values().map(|b| b.len() as u64).sum()
    }

    fn check_invariants(&self) {
        let mut end_previous = 0;
        for (&offset, bytes) in &self.saved {
            assert!(offset >= end_previous, "saved ranges overlap at {offset}");
            assert!(!bytes.is_empty());
            end_previous = offset + bytes.len() as u64;
            assert!(
                end_previous <= self.synced_len,
                "saved past the synced length"
            );
        }
    }
}

/// Everything not yet synced, and the means to undo it.
#[derive(Debug)]
pub(super) struct Durability {
    /// The backing directory (canonical, absolute).
    backing: PathBuf,
    /// Files with unsynced data or length, by backing inode.
    files: BTreeMap<u64, FileUndo>,
    /// Directories with unsynced entries, by backing inode: their entries at their last sync
    /// (name to backing inode).
    dirs: BTreeMap<u64, BTreeMap<OsString, u64>>,
    /// Sum of the saved bytes of all `files` (bounded by `UNDO_BYTES_MAX`).
    saved_bytes: u64,
}

/// Statistics of what is unsynced now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Unsynced {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    pub saved_bytes: u64,
}

fn os_error(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn c_name(name: &std::ffi::OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| os_error(libc::EINVAL))
}

/// `renameat(2)` between two open directories.
fn rename_at(
    from_dir: &File,
    from: &std::ffi::OsStr,
    to_dir: &File,
    to: &std::ffi::OsStr,
) -> io::Result<()> {
    let (from, to) = (c_name(from)?, c_name(to)?);
    // SAFETY: both names are NUL-terminated and both descriptors are open directories.
    let rc = unsafe {
        libc::renameat(
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The backing inode of `name` in the open directory `dir`, if it exists.
fn inode_at(dir: &File, name: &std::ffi::OsStr) -> io::Result<Option<u64>> {
    let name = c_name(name)?;
    // SAFETY: `stat` is plain data that fstatat fills in; the name is NUL-terminated.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut stat,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        return Ok(Some(stat.st_ino));
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::ENOENT) {
        Ok(None)
    } else {
        Err(error)
    }
}

/// The entries of an open directory (name, backing inode), read through its descriptor so that
/// it works wherever the directory has been moved.
fn entries_of(dir: &File) -> io::Result<Vec<(OsString, u64)>> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))? {
        let entry = entry?;
        if entries.len() >= DIR_ENTRIES_MAX {
            return Err(os_error(libc::ENOSPC));
        }
        // The inode from stat, not readdir's d_ino: on some file systems (overlayfs) the two
        // differ, and every other inode here comes from stat.
        entries.push((entry.file_name(), entry.metadata()?.ino()));
    }
    Ok(entries)
}

/// Removes a path whatever it is (a file, or a directory with all it holds).
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl Durability {
    /// Everything in `backing` counts as synced at the start. Leftovers in the trash (from a
    /// process that died without a power cut) are garbage then, and removed.
    pub fn new(backing: PathBuf) -> io::Result<Durability> {
        assert!(backing.is_absolute());
        let trash = backing.join(TRASH_DIR);
        fs::create_dir_all(&trash)?;
        for entry in fs::read_dir(&trash)? {
            remove_any(&entry?.path())?;
        }
        Ok(Durability {
            backing,
            files: BTreeMap::new(),
            dirs: BTreeMap::new(),
            saved_bytes: 0,
        })
    }

    pub fn trash_dir(&self) -> PathBuf {
        self.backing.join(TRASH_DIR)
    }

    pub fn unsynced(&self) -> Unsynced {
        Unsynced {
            files: self.files.len() as u64,
            dirs: self.dirs.len() as u64,
            bytes: self.files.values().map(|u| u.unsynced_bytes).sum(),
            saved_bytes: self.saved_bytes,
        }
    }

    pub fn check_invariants(&self) {
        let mut saved = 0;
        for undo in self.files.values() {
            undo.check_invariants();
            saved += undo.saved_bytes();
        }
        assert_eq!(saved, self.saved_bytes, "the saved byte count drifted");
        assert!(self.saved_bytes <= UNDO_BYTES_MAX);
        assert!(self.files.len() <= DIRTY_FILES_MAX);
        assert!(self.dirs.len() <= DIRTY_DIRS_MAX);
    }

    /// The undo record of the file open as `file` (backing inode `ino`), made now if it has
    /// none: its state now is its synced state.
    fn undo_of(&mut self, ino: u64, file: &File) -> io::Result<&mut FileUndo> {
        if !self.files.contains_key(&ino) {
            if self.files.len() >= DIRTY_FILES_MAX {
                eprintln!(
                    "faultfs: {DIRTY_FILES_MAX} files have unsynced changes already; \
                     failing a write with ENOSPC"
                );
                return Err(os_error(libc::ENOSPC));
            }
            let synced_len = file.metadata()?.len();
            let undo = FileUndo {
                file: file.try_clone()?,
                synced_len,
                saved: BTreeMap::new(),
                unsynced_bytes: 0,
            };
            self.files.insert(ino, undo);
        }
        Ok(self.files.get_mut(&ino).expect("inserted above"))
    }

    /// Saves the synced bytes of `[start, end)` not saved yet, before they change.
    fn save(&mut self, ino: u64, file: &File, start: u64, end: u64) -> io::Result<()> {
        let saved_bytes_now = self.saved_bytes;
        let undo = self.undo_of(ino, file)?;
        let end = end.min(undo.synced_len);
        if start >= end {
            return Ok(());
        }
        // The saved ranges overlapping [start, end), in order; they are disjoint and sorted, so
        // walking back from `end` can stop at the first one that ends at or before `start`.
        let mut covered: Vec<(u64, u64)> = Vec::new();
        for (&offset, bytes) in undo.saved.range(..end).rev() {
            let range_end = offset + bytes.len() as u64;
            if range_end <= start {
                break;
            }
            covered.push((offset, range_end));
        }
        covered.reverse();
        let mut gaps = Vec::new();
        let mut cursor = start;
        for (offset, range_end) in covered {
            if offset > cursor {
                gaps.push((cursor, offset));
            }
            cursor = cursor.max(range_end);
        }
        if cursor < end {
            gaps.push((cursor, end));
        }
        let gap_bytes: u64 = gaps.iter().map(|(a, b)| b - a).sum();
        if saved_bytes_now + gap_bytes > UNDO_BYTES_MAX {
            eprintln!(
                "faultfs: the undo log would pass {UNDO_BYTES_MAX} bytes (UNDO_BYTES_MAX); \
                 failing a write with ENOSPC"
            );
            return Err(os_error(libc::ENOSPC));
        }
        for (gap_start, gap_end) in gaps {
            // An unsaved byte below the synced length is unchanged since the sync, and still in
            // the file: a cut below the synced length saved what it cut.
            let mut bytes = vec![0u8; (gap_end - gap_start) as usize];
            undo.file.read_exact_at(&mut bytes, gap_start)?;
            undo.saved.insert(gap_start, bytes);
        }
        self.saved_bytes = saved_bytes_now + gap_bytes;
        Ok(())
    }

    /// Called before `len` bytes are written at `offset` of the file (backing inode `ino`).
    pub fn before_write(&mut self, ino: u64, file: &File, offset: u64, len: u64) -> io::Result<()> {
        self.save(ino, file, offset, offset.saturating_add(len))?;
        let undo = self.files.get_mut(&ino).expect("save made it");
        undo.unsynced_bytes += len;
        Ok(())
    }

    /// Called before the file's length is set to `len_new`.
    pub fn before_set_len(&mut self, ino: u64, file: &File, len_new: u64) -> io::Result<()> {
        let len_now = file.metadata()?.len();
        if len_new < len_now {
            self.save(ino, file, len_new, len_now)?;
        }
        let undo = self.undo_of(ino, file)?;
        undo.unsynced_bytes += len_now.abs_diff(len_new);
        Ok(())
    }

    /// The file's data and length are durable now.
    pub fn file_synced(&mut self, ino: u64) {
        if let Some(undo) = self.files.remove(&ino) {
            self.saved_bytes -= undo.saved_bytes();
        }
    }

    /// The synced range of a file for a bit flip: its synced length, its length now and its
    /// saved ranges (bytes changed since the sync), or `None` if all of it is synced.
    pub fn synced_view(&self, ino: u64) -> Option<(u64, Vec<(u64, u64)>)> {
        self.files.get(&ino).map(|undo| {
            let changed = undo
                .saved
                .iter()
                .map(|(&o, b)| (o, o + b.len() as u64))
                .collect();
            (undo.synced_len, changed)
        })
    }

    /// Called before an entry of the directory `dir` (an absolute backing path) is added,
    /// removed or renamed: the first change since its last sync snapshots its entries.
    pub fn before_dir_change(&mut self, dir: &Path) -> io::Result<()> {
        let ino = fs::metadata(dir)?.ino();
        if self.dirs.contains_key(&ino) {
            return Ok(());
        }
        if self.dirs.len() >= DIRTY_DIRS_MAX {
            eprintln!(
                "faultfs: {DIRTY_DIRS_MAX} directories have unsynced entries already; \
                 failing a change with ENOSPC"
            );
            return Err(os_error(libc::ENOSPC));
        }
        let is_root = dir == self.backing;
        let mut entries = BTreeMap::new();
        for (name, entry_ino) in entries_of(&File::open(dir)?)? {
            if is_root && name == TRASH_DIR {
                continue;
            }
            entries.insert(name, entry_ino);
        }
        self.dirs.insert(ino, entries);
        Ok(())
    }

    /// The directory's entries are durable now. Trashed files no snapshot names any more are
    /// garbage then, and removed.
    pub fn dir_synced(&mut self, ino: u64) -> io::Result<()> {
        if self.dirs.remove(&ino).is_some() {
            self.collect_trash()?;
        }
        Ok(())
    }

    /// Moves `path` (absolute, in the backing directory) to the trash instead of removing it, so
    /// that a power cut before its directory is synced can bring it back.
    pub fn trash(&mut self, path: &Path) -> io::Result<()> {
        let ino = fs::symlink_metadata(path)?.ino();
        fs::rename(path, self.trash_dir().join(ino.to_string()))?;
        if self.dirs.is_empty() {
            // No snapshot can name it (its parent was changed by this unlink, so this happens
            // only if the caller did not say so first): gone for good.
            self.collect_trash()?;
        }
        Ok(())
    }

    /// Removes every trashed entry that no directory snapshot names.
    fn collect_trash(&mut self) -> io::Result<()> {
        let named: std::collections::BTreeSet<u64> = self
            .dirs
            .values()
            .flat_map(|e| e.values().copied())
            .collect();
        for entry in fs::read_dir(self.trash_dir())? {
            let entry = entry?;
            let ino = entry.metadata()?.ino();
            if named.contains(&ino) {
                continue;
            }
            remove_any(&entry.path())?;
            self.file_synced(ino);
            self.dirs.remove(&ino);
        }
        Ok(())
    }

    /// Backing inode to absolute path, for the whole backing directory (the trash included).
    fn walk(&self) -> io::Result<BTreeMap<u64, PathBuf>> {
        let mut found = BTreeMap::new();
        let root_ino = fs::metadata(&self.backing)?.ino();
        found.insert(root_ino, self.backing.clone());
        let mut pending = vec![self.backing.clone()];
        while let Some(dir) = pending.pop() {
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                if found.len() >= WALK_ENTRIES_MAX {
                    return Err(os_error(libc::ENOSPC));
                }
                if entry.file_type()?.is_dir() {
                    pending.push(entry.path());
                }
                found.insert(entry.metadata()?.ino(), entry.path());
            }
        }
        Ok(found)
    }

    /// A power cut: every file and directory goes back to its last synced state.
    pub fn power_cut(&mut self) -> io::Result<DropReport> {
        let mut report = DropReport::default();
        // Data first: the undo records hold their own descriptors, so this works wherever the
        // files are now.
        for (_, undo) in std::mem::take(&mut self.files) {
            undo.file.set_len(undo.synced_len)?;
            for (&offset, bytes) in &undo.saved {
                undo.file.write_all_at(bytes, offset)?;
            }
            report.files_restored += 1;
            report.bytes_dropped += undo.unsynced_bytes;
        }
        self.saved_bytes = 0;

        if !self.dirs.is_empty() {
            self.restore_dirs(&mut report)?;
        }
        self.dirs.clear();
        for entry in fs::read_dir(self.trash_dir())? {
            remove_any(&entry?.path())?;
        }
        self.check_invariants();
        Ok(report)
    }

    /// Gives every directory with a snapshot exactly the entries of its snapshot.
    fn restore_dirs(&mut self, report: &mut DropReport) -> io::Result<()> {
        let places = self.walk()?;
        let trash = File::open(self.trash_dir())?;
        let root_ino = fs::metadata(&self.backing)?.ino();
        // Each directory is opened before anything moves: later steps work on descriptors, so
        // moving a directory (into the trash, say) does not lose the others inside it.
        let mut opened = Vec::new();
        for (&ino, snapshot) in &self.dirs {
            match places.get(&ino) {
                Some(path) => opened.push((ino, File::open(path)?, snapshot)),
                // A directory whose own snapshot outlived it (removed for good): nothing to do.
                None => continue,
            }
        }
        // Out with every entry the snapshot does not name (or names for another inode).
        for (ino, dir, snapshot) in &opened {
            for (name, entry_ino) in entries_of(dir)? {
                if *ino == root_ino && name == TRASH_DIR {
                    continue;
                }
                if snapshot.get(&name) != Some(&entry_ino) {
                    rename_at(dir, &name, &trash, entry_ino.to_string().as_ref())?;
                    report.entries_removed += 1;
                }
            }
        }
        // In with every entry the snapshot names that is missing: from the trash (unlinked,
        // replaced or just moved out), or linked from where it was renamed to in a synced
        // directory (so it has both names, as a real disk could after such a cut).
        for (_, dir, snapshot) in &opened {
            for (name, &entry_ino) in snapshot.iter() {
                if inode_at(dir, name)?.is_some() {
                    continue;
                }
                let trashed = entry_ino.to_string();
                if inode_at(&trash, trashed.as_ref())?.is_some() {
                    rename_at(&trash, trashed.as_ref(), dir, name)?;
                    report.entries_restored += 1;
                    continue;
                }
                let linked = match places.get(&entry_ino) {
                    Some(from) if from.is_file() => {
                        let to =
                            PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
                        fs::hard_link(from, to).is_ok()
                    }
                    _ => false,
                };
                if linked {
                    report.entries_restored += 1;
                } else {
                    eprintln!(
                        "faultfs: cannot restore {name:?} (inode {entry_ino}) at a power cut: \
                         it is nowhere to be found, or a directory moved to a synced one"
                    );
                    report.entries_lost += 1;
                }
            }
        }
        Ok(())
    }
}

//! A fault-injecting FUSE file system for a broker's data directory: a passthrough to a backing
//! directory that can lose, at a simulated power cut, every change that was not synced (as
//! Jepsen's LazyFS does), flip a bit of synced data, and fail syncs.
//!
//! # Use
//!
//! The harness mounts each node's data directory with [`mount`] (a background FUSE session in
//! the harness's own process), runs `sluice serve --data-dir <mountpoint>`, and at a fault kills
//! the broker first and then calls [`Control::drop_unsynced`]. [`unmount_stale`] clears mounts a
//! killed harness left behind. Needs `/dev/fuse` and root (or `fusermount3`, Debian's `fuse3`).
//!
//! # What a power cut does (the model)
//!
//! The backing directory always holds the newest state; undo records keep the last synced one.
//!
//! * **File data and length.** Before the first unsynced change of a byte below the file's
//!   synced length, the old bytes are saved (each byte once); the synced length is kept. A cut
//!   writes the saved bytes back and sets the synced length: unsynced writes, appends and
//!   truncations (`set_len`, `O_TRUNC`) are undone exactly. `fsync` and `fdatasync` of a file
//!   make its data and length durable (they drop its undo record).
//! * **Directory entries.** As POSIX promises and no more: a created file or directory, a
//!   rename and an unlink are durable only once their directory is synced (`fsync` on the
//!   directory, i.e. FUSE `fsyncdir`); a rename between two directories needs each synced for
//!   its own side. Before the first unsynced change of a directory its entries (name to
//!   inode) are snapshotted; unlinked and replaced entries go to a hidden trash directory
//!   (`.faultfs-trash` in the backing directory, invisible in the mount) until no snapshot names
//!   them. A cut gives every such directory exactly its snapshot's entries back: new entries go,
//!   removed and renamed-away ones come back (a file renamed into a directory that *was* synced
//!   keeps that name too, as a hard link, as a real disk could show after such a cut).
//!   Note this is stricter than ext4 in practice, where `fsync` of a new file usually commits
//!   its directory entry too (one journal transaction); a broker correct here is correct there.
//! * **Not modelled:** metadata other than length and names (mode, owner, times are kept as
//!   set); torn or reordered writes within a file (a cut keeps each file's synced prefix and
//!   nothing after, never a part of a write); `fsync` failures that lose data (a failed sync
//!   here loses nothing yet, it keeps the data unsynced, so the next cut drops it). Not
//!   supported at all: hard links and symlinks (`EPERM`), special files, xattrs and `fallocate`
//!   (`ENOSYS`), rename flags such as `RENAME_EXCHANGE` (`EINVAL`), shared writable `mmap`
//!   (every file is direct I/O; Sluice maps none). Locks: `flock` and POSIX locks are the kernel's own (this file
//!   system does not ask for lock requests), which is right for one mount in one kernel.
//!
//! # Bounds
//!
//! Saved bytes are capped at [`UNDO_BYTES_MAX`]; a write past it fails with `ENOSPC` (and a line
//! on stderr says why). Likewise [`DIRTY_FILES_MAX`], [`DIRTY_DIRS_MAX`], [`DIR_ENTRIES_MAX`].

mod durability;
mod fs;

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use sluice_core::rng::Rng;

use self::fs::{FaultFs, State};

/// The file system's name in `/proc/self/mounts`: how [`unmount_stale`] knows its mounts.
pub const FS_NAME: &str = "sluice-faultfs";

/// Synced bytes saved for undo at most, across all files. Sluice appends (nothing to save) and
/// rewrites small files whole, so this is far above what a run needs.
pub const UNDO_BYTES_MAX: u64 = 1 << 30;

/// Files with unsynced changes at most (each holds a descriptor of the backing file).
pub const DIRTY_FILES_MAX: usize = 4096;

/// Directories with unsynced entries at most.
pub const DIRTY_DIRS_MAX: usize = 4096;

/// Entries of one directory at most (in a listing or a snapshot).
pub const DIR_ENTRIES_MAX: usize = 1 << 16;

/// Inode numbers the kernel may hold at once.
pub const INODES_MAX: usize = 1 << 20;

/// Open files and directories at once.
pub const HANDLES_MAX: usize = 1 << 16;

/// Entries of the whole backing tree walked at a power cut, at most.
pub const WALK_ENTRIES_MAX: usize = 1 << 20;

/// Bit flips give up finding an offset outside changed ranges after this many draws.
const FLIP_DRAWS_MAX: u32 = 64;

/// The hidden trash in the backing directory (see the module docs).
const TRASH_DIR: &str = ".faultfs-trash";

const _: () = assert!(DIR_ENTRIES_MAX <= WALK_ENTRIES_MAX);
const _: () = assert!(DIRTY_FILES_MAX <= HANDLES_MAX);

/// What a power cut dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropReport {
    /// Files whose data or length went back to their last synced state.
    pub files_restored: u64,
    /// Bytes written or cut off since the last sync of those files.
    pub bytes_dropped: u64,
    /// Directory entries removed (created, or renamed in, since the directory's last sync).
    pub entries_removed: u64,
    /// Directory entries brought back (unlinked, or renamed away, since the last sync).
    pub entries_restored: u64,
    /// Entries a snapshot named that could not be brought back (logged; not expected).
    pub entries_lost: u64,
}

/// A flipped bit: where (relative to the mount), at which byte, which bit (0 = least
/// significant).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flip {
    pub path: PathBuf,
    pub offset: u64,
    pub bit: u8,
}

/// Counters since the mount, and what is unsynced now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// FUSE requests served.
    pub ops: u64,
    pub writes: u64,
    pub bytes_written: u64,
    /// Successful file syncs (`fsync`, `fdatasync`).
    pub fsyncs: u64,
    /// Successful directory syncs.
    pub dir_fsyncs: u64,
    /// Syncs of either kind failed on purpose ([`Control::set_fail_fsync`]).
    pub fsyncs_failed: u64,
    pub power_cuts: u64,
    pub bit_flips: u64,
    /// Files with unsynced data or length now.
    pub unsynced_files: u64,
    /// Directories with unsynced entries now.
    pub unsynced_dirs: u64,
    /// Bytes written or cut off and not synced now.
    pub unsynced_bytes: u64,
    /// Bytes held for undo now.
    pub undo_bytes: u64,
}

/// A mounted fault file system; unmounts when dropped (lazily, then waits for the session to
/// end, which is when the last process using the mount has closed its files: kill them first).
#[derive(Debug)]
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    control: Control,
    mountpoint: PathBuf,
}

/// Faults for one mount: a cheap handle, usable from any thread.
#[derive(Clone, Debug)]
pub struct Control {
    state: Arc<Mutex<State>>,
}

/// Mounts the fault file system over `backing` (an existing directory) at `mountpoint` (an
/// existing, empty directory). Everything in `backing` counts as synced. A dead mount left at
/// `mountpoint` by a killed run fails this (`ENOTCONN`): call [`unmount_stale`] first.
pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<Mounted> {
    let backing = backing.canonicalize()?;
    let mountpoint = mountpoint.canonicalize()?;
    if !backing.is_dir() || !mountpoint.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "faultfs needs two directories, got {} and {}",
                backing.display(),
                mountpoint.display()
            ),
        ));
    }
    assert!(
        !backing.starts_with(&mountpoint),
        "the backing directory cannot be inside its own mount"
    );
    let state = Arc::new(Mutex::new(State::new(backing)?));
    let mut config = fuser::Config::default();
    // No writeback cache and no caching of attributes (see fs.rs): the kernel holds nothing the
    // undo log has not seen. The name marks the mount as ours in /proc/self/mounts.
    config.mount_options = vec![
        fuser::MountOption::FSName(FS_NAME.to_string()),
        fuser::MountOption::NoAtime,
    ];
    let filesystem = FaultFs {
        state: state.clone(),
    };
    let session = fuser::spawn_mount(filesystem, &mountpoint, &config)?;
    Ok(Mounted {
        session: Some(session),
        control: Control { state },
        mountpoint,
    })
}

impl Mounted {
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts and waits for the session to end. Fails (`EBUSY`) while a process still has a
    /// file open in the mount; the session then stays mounted until dropped.
    pub fn unmount(mut self) -> io::Result<()> {
        let session = self.session.take().expect("taken only here and in drop");
        session.umount_and_join()
    }

    /// Detaches the mount lazily and leaves its session to end on its own, without waiting.
    /// For a harness whose nodes ran under `ip netns exec`: each such process got a private
    /// copy of the mount table, so another run's live nodes can hold this mount (unused) until
    /// they end, and waiting would tie this run's end to theirs. The session's thread ends when
    /// the last copy goes, or with the process.
    pub fn detach(mut self) -> io::Result<()> {
        let session = self.session.take().expect("taken only here and in drop");
        let result = lazy_unmount(&self.mountpoint);
        std::mem::forget(session);
        result
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            // A busy mount cannot be unmounted normally; detach it lazily so that a drop never
            // leaves it behind (the session ends once its last user is gone).
            if let Err(e) = lazy_unmount(&self.mountpoint) {
                eprintln!("faultfs: cannot unmount {}: {e}", self.mountpoint.display());
            }
            if let Err(e) = session.join() {
                eprintln!(
                    "faultfs: session at {} ended: {e}",
                    self.mountpoint.display()
                );
            }
        }
    }
}

impl Control {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A power cut: every change not synced is lost (see the module docs). Kill the processes
    /// using the mount and reap them first: then none of their writes is in flight (a dying
    /// task waits for a FUSE request the server has read, and one not read yet is dropped),
    /// while a write racing the cut could land on either side of it.
    pub fn drop_unsynced(&self) -> io::Result<DropReport> {
        let mut state = self.state();
        let report = state.durability.power_cut()?;
        let backing = state.backing.clone();
        state.inodes.forget_missing(&backing);
        state.stats.power_cuts += 1;
        state.inodes.check_invariants();
        let unsynced = state.durability.unsynced();
        assert_eq!(unsynced.files + unsynced.dirs + unsynced.saved_bytes, 0);
        Ok(report)
    }

    /// Flips one bit of synced data, on disk (in the backing file), of a file `pick` accepts
    /// (given its path relative to the mount), both chosen from `seed`. Bytes changed since the
    /// file's last sync are never chosen. `None` if no file has synced data.
    pub fn flip_bit(&self, seed: u64, pick: &dyn Fn(&Path) -> bool) -> io::Result<Option<Flip>> {
        let mut state = self.state();
        let mut rng = Rng::new(seed);
        // Candidates in path order, so that one seed picks one file on one tree.
        let mut candidates = Vec::new();
        let mut pending = vec![state.backing.clone()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let path = entry.path();
                let relative = path.strip_prefix(&state.backing).expect("under backing");
                if relative == Path::new(TRASH_DIR) {
                    continue;
                }
                let meta = entry.metadata()?;
                if meta.is_dir() {
                    pending.push(path);
                    continue;
                }
                if !meta.is_file() || !pick(relative) || candidates.len() >= WALK_ENTRIES_MAX {
                    continue;
                }
                let (synced_len, changed) = state
                    .durability
                    .synced_view(meta.ino())
                    .unwrap_or((meta.len(), Vec::new()));
                let len = synced_len.min(meta.len());
                if len > 0 {
                    candidates.push((relative.to_path_buf(), len, changed));
                }
            }
        }
        candidates.sort();
        if candidates.is_empty() {
            return Ok(None);
        }
        let (path, len, changed) = rng.pick(&candidates).clone();
        for _ in 0..FLIP_DRAWS_MAX {
            let offset = rng.below(len);
            if changed.iter().any(|&(a, b)| a <= offset && offset < b) {
                continue;
            }
            let bit = rng.below(8) as u8;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(state.backing.join(&path))?;
            let mut byte = [0u8; 1];
            file.read_exact_at(&mut byte, offset)?;
            let flipped = byte[0] ^ (1 << bit);
            file.write_all_at(&[flipped], offset)?;
            let mut check = [0u8; 1];
            file.read_exact_at(&mut check, offset)?;
            assert_eq!(check[0], flipped, "the flip is on disk");
            state.stats.bit_flips += 1;
            return Ok(Some(Flip { path, offset, bit }));
        }
        Ok(None)
    }

    /// While on, every `fsync`, `fdatasync` and directory sync fails with `EIO` and changes
    /// nothing: the data stays unsynced, and the next power cut drops it.
    pub fn set_fail_fsync(&self, on: bool) {
        self.state().fail_fsync = on;
    }

    pub fn stats(&self) -> Stats {
        let state = self.state();
        let unsynced = state.durability.unsynced();
        Stats {
            unsynced_files: unsynced.files,
            unsynced_dirs: unsynced.dirs,
            unsynced_bytes: unsynced.bytes,
            undo_bytes: unsynced.saved_bytes,
            ..state.stats
        }
    }

    /// Checks the undo log's and the inode table's invariants (tests call it; it panics).
    pub fn check_invariants(&self) {
        let state = self.state();
        state.durability.check_invariants();
        state.inodes.check_invariants();
    }
}

/// `umount2(MNT_DETACH)` as root, else (`EPERM`) `fusermount3 -u -z`.
fn lazy_unmount(mountpoint: &Path) -> io::Result<()> {
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the path is NUL-terminated.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EINVAL) {
        // Not a mount point (any more): unmounted already, by `unmount_stale` say.
        return Ok(());
    }
    if error.raw_os_error() != Some(libc::EPERM) {
        return Err(error);
    }
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(mountpoint)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "fusermount3 -u -z {} failed: {status}",
            mountpoint.display()
        )))
    }
}

/// A mount point as `/proc/self/mounts` writes it: space, tab, newline and backslash as octal
/// escapes (`\040`).
fn unescape_mount_path(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(<std::ffi::OsStr as OsStrExt>::from_bytes(&out))
}

/// Lazily unmounts every mount of this file system under `root` (a leftover of a killed run),
/// deepest first; returns the mount points it unmounted.
pub fn unmount_stale(root: &Path) -> io::Result<Vec<PathBuf>> {
    let root = match root.canonicalize() {
        Ok(root) => root,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let mut stale: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let (name, point, kind) = (fields.first()?, fields.get(1)?, fields.get(2)?);
            let ours = *name == FS_NAME && kind.starts_with("fuse");
            let point = unescape_mount_path(point);
            (ours && point.starts_with(&root)).then_some(point)
        })
        .collect();
    stale.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    stale.dedup();
    for point in &stale {
        lazy_unmount(point)?;
    }
    Ok(stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(
            unescape_mount_path("/tmp/a\\040b\\134c"),
            PathBuf::from("/tmp/a b\\c")
        );
        assert_eq!(unescape_mount_path("/plain"), PathBuf::from("/plain"));
    }
}

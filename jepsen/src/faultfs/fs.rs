//! The FUSE side: a passthrough to the backing directory that tells [`Durability`] before every
//! change, and fails syncs on request.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::durability::Durability;
use super::{Stats, DIR_ENTRIES_MAX, HANDLES_MAX, INODES_MAX, TRASH_DIR};

/// How long the kernel may cache entries and attributes: not at all, so that a power cut's
/// restored names and lengths are seen at once.
const TTL: Duration = Duration::ZERO;

/// Every open file is direct I/O: each read and write reaches this file system (the kernel keeps
/// no page cache of its own that could hide a write from the undo log or outlive a cut).
const OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_DIRECT_IO;

/// Inode numbers the kernel knows, and the path (relative to the backing directory) of each.
#[derive(Debug)]
pub(super) struct Inodes {
    by_ino: BTreeMap<u64, (PathBuf, u64)>,
    by_path: BTreeMap<PathBuf, u64>,
    /// Numbers are never reused, so a number the kernel holds from before a cut fails cleanly.
    ino_next: u64,
}

impl Inodes {
    fn new() -> Inodes {
        let mut inodes = Inodes {
            by_ino: BTreeMap::new(),
            by_path: BTreeMap::new(),
            ino_next: INodeNo::ROOT.0 + 1,
        };
        inodes.by_ino.insert(INodeNo::ROOT.0, (PathBuf::new(), 1));
        inodes.by_path.insert(PathBuf::new(), INodeNo::ROOT.0);
        inodes
    }

    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.by_ino
            .get(&ino.0)
            .map(|(path, _)| path.clone())
            .ok_or(Errno::ESTALE)
    }

    /// The number of `path`, counting one more lookup the kernel will forget.
    fn looked_up(&mut self, path: &Path) -> Result<u64, Errno> {
        if let Some(&ino) = self.by_path.get(path) {
            self.by_ino.get_mut(&ino).expect("maps agree").1 += 1;
            return Ok(ino);
        }
        if self.by_ino.len() >= INODES_MAX {
            return Err(Errno::ENFILE);
        }
        let ino = self.ino_next;
        self.ino_next += 1;
        self.by_ino.insert(ino, (path.to_path_buf(), 1));
        self.by_path.insert(path.to_path_buf(), ino);
        Ok(ino)
    }

    fn forget(&mut self, ino: u64, lookups: u64) {
        if ino == INodeNo::ROOT.0 {
            return;
        }
        let Some((path, count)) = self.by_ino.get_mut(&ino) else {
            return; // Known before a power cut, or forgotten already.
        };
        *count = count.saturating_sub(lookups);
        if *count == 0 {
            let path = path.clone();
            self.by_ino.remove(&ino);
            if self.by_path.get(&path) == Some(&ino) {
                self.by_path.remove(&path);
            }
        }
    }

    /// The paths under `path` (itself included), in order: a component-wise order puts a
    /// directory's descendants right after it.
    fn subtree(&self, path: &Path) -> Vec<(PathBuf, u64)> {
        self.by_path
            .range(path.to_path_buf()..)
            .take_while(|(p, _)| p.starts_with(path))
            .map(|(p, &i)| (p.clone(), i))
            .collect()
    }

    /// `path` and everything under it have no name any more (the inodes live on until
    /// forgotten, without a path).
    fn removed(&mut self, path: &Path) {
        for (p, ino) in self.subtree(path) {
            self.by_path.remove(&p);
            self.by_ino.remove(&ino);
        }
    }

    fn renamed(&mut self, from: &Path, to: &Path) {
        self.removed(to);
        for (p, ino) in self.subtree(from) {
            // Joining an empty rest would add a trailing slash, which only a directory takes.
            let rest = p.strip_prefix(from).expect("in the subtree");
            let moved = if rest.as_os_str().is_empty() {
                to.to_path_buf()
            } else {
                to.join(rest)
            };
            self.by_path.remove(&p);
            self.by_path.insert(moved.clone(), ino);
            self.by_ino.get_mut(&ino).expect("maps agree").0 = moved;
        }
    }

    /// After a power cut: paths that exist no more lose their inode (the kernel gets `ESTALE`
    /// for it, and looks the name up afresh). A path that exists keeps its number even if it
    /// names another file now: every operation goes by path, so the kernel sees the new file.
    pub(super) fn forget_missing(&mut self, backing: &Path) {
        let missing: Vec<PathBuf> = self
            .by_path
            .keys()
            .filter(|p| fs::symlink_metadata(backing.join(p)).is_err())
            .cloned()
            .collect();
        for path in missing {
            let ino = self.by_path.remove(&path).expect("listed above");
            self.by_ino.remove(&ino);
        }
    }

    pub(super) fn check_invariants(&self) {
        assert_eq!(
            self.by_ino.len(),
            self.by_path.len(),
            "the inode maps disagree"
        );
        for (path, ino) in &self.by_path {
            assert_eq!(&self.by_ino[ino].0, path);
            assert!(*ino < self.ino_next);
        }
    }
}

/// What a `setattr` changes (each `None` is left alone).
#[derive(Debug)]
struct AttrChange {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
}

/// An open file: a descriptor on the backing file, read and write whatever the caller asked
/// (the kernel has checked the access mode already), and never `O_APPEND` (appends are placed
/// here, at the backing length, so the undo log knows where they land).
#[derive(Debug)]
struct Handle {
    file: File,
    append: bool,
    /// The backing inode, which identifies the file to the undo log.
    backing_ino: u64,
}

/// The entries of a directory read at `opendir`, served by `readdir` from an offset.
#[derive(Debug)]
struct DirListing {
    entries: Vec<(OsString, FileType, u64)>,
}

/// Everything behind the lock: the file system's tables, the undo log and the counters.
#[derive(Debug)]
pub(super) struct State {
    pub backing: PathBuf,
    pub inodes: Inodes,
    handles: BTreeMap<u64, Handle>,
    /// The open handles of each inode the kernel knows: an unlinked file has no path, and its
    /// `fstat` (which the kernel sends without a handle) is served from one of them.
    handles_by_ino: BTreeMap<u64, BTreeSet<u64>>,
    listings: BTreeMap<u64, DirListing>,
    handle_next: u64,
    pub durability: Durability,
    pub fail_fsync: bool,
    pub stats: Stats,
}

impl State {
    pub fn new(backing: PathBuf) -> io::Result<State> {
        Ok(State {
            durability: Durability::new(backing.clone())?,
            backing,
            inodes: Inodes::new(),
            handles: BTreeMap::new(),
            handles_by_ino: BTreeMap::new(),
            listings: BTreeMap::new(),
            handle_next: 1,
            fail_fsync: false,
            stats: Stats::default(),
        })
    }

    fn full(&self, path: &Path) -> PathBuf {
        self.backing.join(path)
    }

    fn handle_new(&mut self) -> Result<u64, Errno> {
        if self.handles.len() + self.listings.len() >= HANDLES_MAX {
            return Err(Errno::EMFILE);
        }
        let fh = self.handle_next;
        self.handle_next += 1;
        Ok(fh)
    }

    /// In debug builds, the invariants after each change (`check_invariants` costs a pass over
    /// the undo log, too much for release runs).
    fn debug_check(&self) {
        if cfg!(debug_assertions) {
            self.durability.check_invariants();
            self.inodes.check_invariants();
        }
    }

    fn handle_insert(&mut self, fh: u64, ino: u64, handle: Handle) {
        assert!(
            !self.handles.contains_key(&fh),
            "handle numbers are never reused"
        );
        self.handles.insert(fh, handle);
        self.handles_by_ino.entry(ino).or_default().insert(fh);
    }

    fn handle_release(&mut self, fh: u64, ino: u64) {
        self.handles.remove(&fh);
        if let Some(fhs) = self.handles_by_ino.get_mut(&ino) {
            fhs.remove(&fh);
            if fhs.is_empty() {
                self.handles_by_ino.remove(&ino);
            }
        }
    }

    fn getattr(&self, ino: INodeNo) -> Result<FileAttr, Errno> {
        let by_path = self
            .inodes
            .path(ino)
            .and_then(|path| fs::symlink_metadata(self.full(&path)).map_err(io));
        let meta = match by_path {
            Ok(meta) => meta,
            Err(e) => {
                let open = self.handles_by_ino.get(&ino.0).and_then(|fhs| fhs.first());
                let handle = open.and_then(|fh| self.handles.get(fh)).ok_or(e)?;
                handle.file.metadata()?
            }
        };
        Ok(attr(ino.0, &meta))
    }

    /// The path of `name` in the directory `parent`; the trash is not there to be seen.
    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        let dir = self.inodes.path(parent)?;
        if dir.as_os_str().is_empty() && name == TRASH_DIR {
            return Err(Errno::EACCES);
        }
        Ok(dir.join(name))
    }

    fn entry(&mut self, path: &Path) -> Result<FileAttr, Errno> {
        let meta = fs::symlink_metadata(self.full(path))?;
        let ino = self.inodes.looked_up(path)?;
        Ok(attr(ino, &meta))
    }

    fn set_len(&mut self, file: &File, len: u64) -> io::Result<()> {
        let ino = file.metadata()?.ino();
        self.durability.before_set_len(ino, file, len)?;
        file.set_len(len)
    }

    fn setattr(
        &mut self,
        ino: INodeNo,
        change: AttrChange,
        fh: Option<FileHandle>,
    ) -> Result<FileAttr, Errno> {
        let path = self.inodes.path(ino)?;
        let full = self.full(&path);
        let AttrChange {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        } = change;
        if let Some(len) = size {
            let own;
            let file = match fh.and_then(|fh| self.handles.get(&fh.0)) {
                Some(handle) => handle.file.try_clone()?,
                None => {
                    own = OpenOptions::new().write(true).open(&full)?;
                    own
                }
            };
            self.set_len(&file, len)?;
        }
        if let Some(mode) = mode {
            fs::set_permissions(&full, fs::Permissions::from_mode(mode & 0o7777))?;
        }
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(&full, uid, gid)?;
        }
        if atime.is_some() || mtime.is_some() {
            let when = |t: TimeOrNow| match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => SystemTime::now(),
            };
            let mut times = fs::FileTimes::new();
            if let Some(t) = atime {
                times = times.set_accessed(when(t));
            }
            if let Some(t) = mtime {
                times = times.set_modified(when(t));
            }
            File::open(&full)?.set_times(times)?;
        }
        Ok(attr(ino.0, &fs::symlink_metadata(&full)?))
    }

    fn create(
        &mut self,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<(FileAttr, u64), Errno> {
        let path = self.child(parent, name)?;
        let full = self.full(&path);
        let fh = self.handle_new()?;
        self.durability
            .before_dir_change(full.parent().expect("a child has a parent"))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .create_new(flags & libc::O_EXCL != 0)
            .mode(mode & !umask & 0o7777)
            .open(&full)?;
        let handle = self.handle_of(file, flags)?;
        let attr = self.entry(&path)?;
        self.handle_insert(fh, attr.ino.0, handle);
        Ok((attr, fh))
    }

    /// The handle of a backing file just opened for the caller's `open(2)` flags: truncated
    /// (undoably) for `O_TRUNC`, appending for `O_APPEND`.
    fn handle_of(&mut self, file: File, flags: i32) -> Result<Handle, Errno> {
        if flags & libc::O_TRUNC != 0 {
            self.set_len(&file, 0)?;
        }
        let backing_ino = file.metadata()?.ino();
        Ok(Handle {
            file,
            append: flags & libc::O_APPEND != 0,
            backing_ino,
        })
    }

    fn open(&mut self, ino: INodeNo, flags: i32) -> Result<u64, Errno> {
        let full = self.full(&self.inodes.path(ino)?);
        let fh = self.handle_new()?;
        let file = OpenOptions::new().read(true).write(true).open(&full)?;
        let handle = self.handle_of(file, flags)?;
        self.handle_insert(fh, ino.0, handle);
        Ok(fh)
    }

    fn write(&mut self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let handle = self.handles.get(&fh).ok_or(Errno::EBADF)?;
        let offset = if handle.append {
            handle.file.metadata()?.len()
        } else {
            offset
        };
        self.durability.before_write(
            handle.backing_ino,
            &handle.file,
            offset,
            data.len() as u64,
        )?;
        handle.file.write_all_at(data, offset)?;
        self.stats.writes += 1;
        self.stats.bytes_written += data.len() as u64;
        self.debug_check();
        Ok(u32::try_from(data.len()).expect("a FUSE write is far below 4 GiB"))
    }

    fn read(&mut self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let handle = self.handles.get(&fh).ok_or(Errno::EBADF)?;
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match handle
                .file
                .read_at(&mut buf[filled..], offset + filled as u64)
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }

    fn fsync(&mut self, fh: u64, datasync: bool) -> Result<(), Errno> {
        if self.fail_fsync {
            self.stats.fsyncs_failed += 1;
            return Err(Errno::EIO);
        }
        let handle = self.handles.get(&fh).ok_or(Errno::EBADF)?;
        if datasync {
            handle.file.sync_data()?;
        } else {
            handle.file.sync_all()?;
        }
        let backing_ino = handle.backing_ino;
        self.durability.file_synced(backing_ino);
        self.stats.fsyncs += 1;
        self.debug_check();
        Ok(())
    }

    fn opendir(&mut self, ino: INodeNo) -> Result<u64, Errno> {
        let path = self.inodes.path(ino)?;
        let full = self.full(&path);
        let meta = fs::metadata(&full)?;
        let mut entries = vec![
            (OsString::from("."), FileType::Directory, meta.ino()),
            (OsString::from(".."), FileType::Directory, meta.ino()),
        ];
        for entry in fs::read_dir(&full)? {
            let entry = entry?;
            if path.as_os_str().is_empty() && entry.file_name() == TRASH_DIR {
                continue;
            }
            if entries.len() >= DIR_ENTRIES_MAX {
                return Err(Errno::ENOSPC);
            }
            let kind = FileType::from_std(entry.file_type()?).unwrap_or(FileType::RegularFile);
            entries.push((
                entry.file_name(),
                kind,
                std::os::unix::fs::DirEntryExt::ino(&entry),
            ));
        }
        let fh = self.handle_new()?;
        self.listings.insert(fh, DirListing { entries });
        Ok(fh)
    }

    fn fsyncdir(&mut self, ino: INodeNo) -> Result<(), Errno> {
        if self.fail_fsync {
            self.stats.fsyncs_failed += 1;
            return Err(Errno::EIO);
        }
        let full = self.full(&self.inodes.path(ino)?);
        let dir = File::open(&full)?;
        dir.sync_all()?;
        self.durability.dir_synced(dir.metadata()?.ino())?;
        self.stats.dir_fsyncs += 1;
        self.debug_check();
        Ok(())
    }

    fn mkdir(
        &mut self,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> Result<FileAttr, Errno> {
        let path = self.child(parent, name)?;
        let full = self.full(&path);
        self.durability
            .before_dir_change(full.parent().expect("a child has a parent"))?;
        fs::DirBuilder::new()
            .mode(mode & !umask & 0o7777)
            .create(&full)?;
        self.entry(&path)
    }

    fn unlink(&mut self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let path = self.child(parent, name)?;
        let full = self.full(&path);
        let meta = fs::symlink_metadata(&full)?;
        if dir {
            if !meta.is_dir() {
                return Err(Errno::ENOTDIR);
            }
            if fs::read_dir(&full)?.next().is_some() {
                return Err(Errno::ENOTEMPTY);
            }
        } else if meta.is_dir() {
            return Err(Errno::EISDIR);
        }
        self.durability
            .before_dir_change(full.parent().expect("a child has a parent"))?;
        self.durability.trash(&full)?;
        self.inodes.removed(&path);
        self.debug_check();
        Ok(())
    }

    fn rename(
        &mut self,
        parent: INodeNo,
        name: &OsStr,
        parent_new: INodeNo,
        name_new: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        if !flags.is_empty() {
            return Err(Errno::EINVAL);
        }
        let (from, to) = (self.child(parent, name)?, self.child(parent_new, name_new)?);
        let (from_full, to_full) = (self.full(&from), self.full(&to));
        let from_meta = fs::symlink_metadata(&from_full)?;
        match fs::symlink_metadata(&to_full) {
            Ok(to_meta) => {
                if to_meta.ino() == from_meta.ino() {
                    return Ok(());
                }
                if from_meta.is_dir() && !to_meta.is_dir() {
                    return Err(Errno::ENOTDIR);
                }
                if !from_meta.is_dir() && to_meta.is_dir() {
                    return Err(Errno::EISDIR);
                }
                if to_meta.is_dir() && fs::read_dir(&to_full)?.next().is_some() {
                    return Err(Errno::ENOTEMPTY);
                }
                if to.starts_with(&from) {
                    return Err(Errno::EINVAL);
                }
                self.durability
                    .before_dir_change(from_full.parent().expect("a child"))?;
                self.durability
                    .before_dir_change(to_full.parent().expect("a child"))?;
                self.durability.trash(&to_full)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.durability
                    .before_dir_change(from_full.parent().expect("a child"))?;
                self.durability
                    .before_dir_change(to_full.parent().expect("a child"))?;
            }
            Err(e) => return Err(e.into()),
        }
        fs::rename(&from_full, &to_full)?;
        self.inodes.renamed(&from, &to);
        self.debug_check();
        Ok(())
    }
}

/// The attributes the kernel sees: the backing file's, under this file system's inode number.
fn attr(ino: u64, meta: &fs::Metadata) -> FileAttr {
    let time = |secs: i64, nanos: i64| {
        let secs = u64::try_from(secs).unwrap_or(0);
        let nanos = u32::try_from(nanos).unwrap_or(0);
        UNIX_EPOCH + Duration::new(secs, nanos)
    };
    FileAttr {
        ino: INodeNo(ino),
        size: meta.len(),
        blocks: meta.blocks(),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: FileType::from_std(meta.file_type()).unwrap_or(FileType::RegularFile),
        perm: (meta.mode() & 0o7777) as u16,
        nlink: u32::try_from(meta.nlink()).unwrap_or(u32::MAX),
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: u32::try_from(meta.rdev()).unwrap_or(0),
        blksize: u32::try_from(meta.blksize()).unwrap_or(4096),
        flags: 0,
    }
}

/// The file system the kernel talks to; [`super::Control`] shares its state.
#[derive(Debug)]
pub(super) struct FaultFs {
    pub state: Arc<Mutex<State>>,
}

impl FaultFs {
    /// The state, counting one operation. A panic in another holder is a bug here already
    /// reported; the state is still used rather than failing every later operation.
    fn state(&self) -> MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.stats.ops += 1;
        state
    }
}

fn done(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn io(e: io::Error) -> Errno {
    Errno::from(e)
}

impl Filesystem for FaultFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut state = self.state();
        let result = state
            .child(parent, name)
            .and_then(|path| state.entry(&path));
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) if e == Errno::EACCES => reply.error(Errno::ENOENT),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.state().inodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().getattr(ino) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = AttrChange {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        match self.state().setattr(ino, change, fh) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match self.state().mkdir(parent, name, mode, umask) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        done(reply, self.state().unlink(parent, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        done(reply, self.state().unlink(parent, name, true));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        done(
            reply,
            self.state().rename(parent, name, newparent, newname, flags),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.state().open(ino, flags.0) {
            Ok(fh) => reply.opened(FileHandle(fh), OPEN_FLAGS),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.state().read(fh.0, offset, size) {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.state().write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Every write went through already (direct I/O): nothing is buffered here to flush.
        drop(self.state());
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state().handle_release(fh.0, ino.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        done(reply, self.state().fsync(fh.0, datasync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().opendir(ino) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let state = self.state();
        let Some(listing) = state.listings.get(&fh.0) else {
            reply.error(Errno::EBADF);
            return;
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (name, kind, ino)) in listing.entries.iter().enumerate().skip(skip) {
            // The offset given with an entry is where the next readdir goes on from.
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.state().listings.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        done(reply, self.state().fsyncdir(ino));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let backing = self.state().backing.clone();
        match statvfs(&backing) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                u32::try_from(s.f_bsize).unwrap_or(4096),
                u32::try_from(s.f_namemax).unwrap_or(255),
                u32::try_from(s.f_frsize).unwrap_or(4096),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.state().create(parent, name, mode, umask, flags) {
            Ok((attr, fh)) => reply.created(&TTL, &attr, Generation(0), FileHandle(fh), OPEN_FLAGS),
            Err(e) => reply.error(e),
        }
    }
}

fn statvfs(path: &Path) -> Result<libc::statvfs, Errno> {
    let path =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `stat` is plain data that statvfs fills in; the path is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } == 0 {
        Ok(stat)
    } else {
        Err(io(io::Error::last_os_error()))
    }
}

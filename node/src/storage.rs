//! The real, file-backed [`Storage`]: one directory per partition under the data directory.
//!
//! Reads and appends use positional I/O on a shared `File`; `sync` is `fdatasync` (the shell calls
//! it on a blocking thread, never on the event loop). An error from the file system names the full
//! path it is about (core adds only the path relative to the data directory).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sluice_core::storage::{Storage, StorageFile};

/// Files under `root`.
#[derive(Clone, Debug)]
pub struct FileStorage {
    root: Arc<PathBuf>,
}

impl FileStorage {
    /// The store rooted at the data directory `root`, created if it does not exist.
    pub fn new(root: impl Into<PathBuf>) -> io::Result<FileStorage> {
        let root = root.into();
        create_dirs_durably(&root).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create the data directory {}: {e}", root.display()),
            )
        })?;
        Ok(FileStorage {
            root: Arc::new(root),
        })
    }

    fn path(&self, path: &Path) -> PathBuf {
        self.root.join(path)
    }
}

/// Creates `dir` and its missing ancestors, then syncs the parent of each directory it created,
/// top down. A new directory's entry is durable only once its parent is synced (POSIX), and a
/// power cut that takes a partition's directory takes every record in it, synced or not: the
/// Jepsen power-cut test found exactly that (docs/jepsen.md), on a file system that keeps the
/// rule strictly, as the simulator's `MemStorage` does not model directories.
fn create_dirs_durably(dir: &Path) -> io::Result<()> {
    // The common case (a segment in an existing partition directory): one stat.
    if fs::metadata(dir).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut next = Some(dir);
    while let Some(d) = next {
        if d.as_os_str().is_empty() || fs::symlink_metadata(d).is_ok() {
            break;
        }
        missing.push(d.to_path_buf());
        next = d.parent();
    }
    // Also when nothing is missing: it refuses a file where the directory should be.
    fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        let parent = match created.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        File::open(&parent)
            .and_then(|d| d.sync_all())
            .map_err(about(&parent))?;
    }
    Ok(())
}

/// Adds the path an error is about, keeping its kind (callers match on `NotFound`).
fn about(path: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// An open file; clones share the descriptor.
#[derive(Clone, Debug)]
pub struct FileHandle {
    file: Arc<File>,
}

impl Storage for FileStorage {
    type File = FileHandle;

    fn open(&self, path: &Path, create: bool) -> io::Result<FileHandle> {
        let full = self.path(path);
        if create {
            if let Some(parent) = full.parent() {
                create_dirs_durably(parent).map_err(about(parent))?;
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(create)
            .open(&full)
            .map_err(about(&full))?;
        Ok(FileHandle {
            file: Arc::new(file),
        })
    }

    fn exists(&self, path: &Path) -> bool {
        self.path(path).exists()
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let full = self.path(dir);
        if !full.exists() {
            return Ok(Vec::new());
        }
        let mut names = Vec::new();
        for entry in fs::read_dir(&full).map_err(about(&full))? {
            names.push(
                entry
                    .map_err(about(&full))?
                    .file_name()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        names.sort();
        Ok(names)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let full = self.path(dir);
        create_dirs_durably(&full).map_err(about(&full))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let full = self.path(path);
        fs::remove_file(&full).map_err(about(&full))
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        let full = self.path(dir);
        match fs::remove_dir_all(&full) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other.map_err(about(&full)),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from, to) = (self.path(from), self.path(to));
        fs::rename(&from, &to).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("renaming {} to {}: {e}", from.display(), to.display()),
            )
        })
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let full = self.path(dir);
        File::open(&full)
            .and_then(|d| d.sync_all())
            .map_err(about(&full))
    }
}

impl StorageFile for FileHandle {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&self, position: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            match self
                .file
                .read_at(&mut buf[filled..], position + filled as u64)
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }

    fn append(&self, bytes: &[u8]) -> io::Result<()> {
        // Opened with O_APPEND: every write lands at the end, and write_all loops on short writes.
        io::Write::write_all(&mut &*self.file, bytes)
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::storage::read_all;

    fn temp_root(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-fs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn files_append_read_truncate_rename_and_list() {
        let root = temp_root("basic");
        let s = FileStorage::new(&root).unwrap();
        let f = s.open(Path::new("t-0/a.log"), true).unwrap();
        f.append(b"hello ").unwrap();
        f.append(b"world").unwrap();
        f.sync().unwrap();
        assert_eq!(f.len().unwrap(), 11);
        assert_eq!(f.read_at(6, 100).unwrap(), b"world");
        f.truncate(5).unwrap();
        assert_eq!(read_all(&f).unwrap(), b"hello");
        s.rename(Path::new("t-0/a.log"), Path::new("t-0/b.log"))
            .unwrap();
        s.sync_dir(Path::new("t-0")).unwrap();
        assert_eq!(s.list(Path::new("t-0")).unwrap(), vec!["b.log".to_string()]);
        assert!(s.open(Path::new("t-0/a.log"), false).is_err());
        s.remove_dir_all(Path::new("t-0")).unwrap();
        assert!(!s.exists(Path::new("t-0")));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn errors_name_the_full_path() {
        let root = temp_root("named");
        let s = FileStorage::new(&root).unwrap();
        let missing = s.open(Path::new("t-0/none.log"), false).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        assert!(missing
            .to_string()
            .starts_with(&format!("{}: ", root.join("t-0/none.log").display())));
        // A data directory that is a file: "File exists" says which.
        let file = root.join("a-file");
        fs::write(&file, b"x").unwrap();
        let error = FileStorage::new(&file).unwrap_err();
        assert!(
            error.to_string().starts_with(&format!(
                "cannot create the data directory {}: ",
                file.display()
            )),
            "{error}"
        );
        fs::remove_dir_all(root).unwrap();
    }
}

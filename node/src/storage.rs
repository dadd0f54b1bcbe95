//! The real, file-backed [`Storage`]: one directory per partition under the data directory.
//!
//! Reads and appends use positional I/O on a shared `File`; `sync` is `fdatasync` (the shell calls
//! it on a blocking thread, never on the event loop).

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
    pub fn new(root: impl Into<PathBuf>) -> io::Result<FileStorage> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        Ok(FileStorage {
            root: Arc::new(root),
        })
    }

    fn path(&self, path: &Path) -> PathBuf {
        self.root.join(path)
    }
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
                fs::create_dir_all(parent)?;
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(create)
            .open(full)?;
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
        for entry in fs::read_dir(full)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(self.path(dir))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(self.path(path))
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        match fs::remove_dir_all(self.path(dir)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(self.path(from), self.path(to))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(self.path(dir))?.sync_all()
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
}

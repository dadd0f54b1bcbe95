//! One broker per data directory: an exclusive lock on `<data_dir>/.lock`, as Kafka's, held for
//! the life of the process.
//!
//! The lock is `flock(2)`'s (std's [`File::try_lock`]): the kernel drops it when the process
//! ends however it ends, so a crashed broker never leaves a stale lock behind, and the next start
//! needs no clean-up. The holder writes its pid into the file so that a second broker can say who
//! holds the directory. The file is never removed: a broker that removed it on exit could let a
//! third one lock a new file while a second still holds the old one.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The lock file, at the root of the data directory.
pub const LOCK_FILE: &str = ".lock";

/// Bytes of the lock file read for the holder's pid (a pid and a newline fit many times over).
const PID_BYTES_MAX: usize = 32;

/// The exclusive lock of a data directory; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DataDirLock {
    /// Holding the open file holds the lock.
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Locks `data_dir` (which must exist) for this process, or says which process holds it.
    pub fn acquire(data_dir: &Path) -> io::Result<DataDirLock> {
        let path = data_dir.join(LOCK_FILE);
        let named = |what: &str| {
            let path = path.display().to_string();
            let what = what.to_string();
            move |e: io::Error| io::Error::new(e.kind(), format!("cannot {what} {path}: {e}"))
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(named("open the lock file"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = match holder_pid(&file) {
                    Some(pid) => format!("pid {pid}"),
                    None => "pid unknown".to_string(),
                };
                return Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!(
                        "data directory {} is in use by another broker ({holder}, lock {})",
                        data_dir.display(),
                        path.display()
                    ),
                ));
            }
            Err(TryLockError::Error(e)) => return Err(named("lock")(e)),
        }
        // Ours now: replace whatever pid an earlier holder left.
        let pid = format!("{}\n", std::process::id());
        file.set_len(0).map_err(named("write the pid into"))?;
        file.write_all_at(pid.as_bytes(), 0)
            .map_err(named("write the pid into"))?;
        Ok(DataDirLock { _file: file, path })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The pid a holder wrote into the lock file, if it has (it writes it just after locking).
fn holder_pid(file: &File) -> Option<u32> {
    let mut buf = [0u8; PID_BYTES_MAX];
    let n = file.read_at(&mut buf, 0).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_directory_names_the_holder_and_a_dropped_one_is_free_again() {
        let dir = std::env::temp_dir().join(format!("sluice-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let first = DataDirLock::acquire(&dir).unwrap();
        assert_eq!(first.path(), dir.join(LOCK_FILE));
        let pid = std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert_eq!(pid, format!("{}\n", std::process::id()));
        // flock locks belong to an open file description: a second open in this process
        // conflicts as a second process would.
        let second = DataDirLock::acquire(&dir).unwrap_err();
        assert_eq!(second.kind(), io::ErrorKind::ResourceBusy);
        assert_eq!(
            second.to_string(),
            format!(
                "data directory {} is in use by another broker (pid {}, lock {})",
                dir.display(),
                std::process::id(),
                dir.join(LOCK_FILE).display()
            )
        );
        drop(first);
        let again = DataDirLock::acquire(&dir).unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_directory_is_named() {
        let dir = std::env::temp_dir().join(format!("sluice-lock-missing-{}", std::process::id()));
        let error = DataDirLock::acquire(&dir).unwrap_err();
        assert!(
            error.to_string().starts_with(&format!(
                "cannot open the lock file {}: ",
                dir.join(LOCK_FILE).display()
            )),
            "{error}"
        );
    }
}

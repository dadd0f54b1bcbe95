//! The fault file system, mounted for real: each test mounts it in a directory of its own under
//! /tmp. They need /dev/fuse and root; without /dev/fuse each says so and returns.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_jepsen::faultfs::{self, Control, Mounted};

/// A test still running after this long is hung (a FUSE deadlock, say): the watchdog aborts the
/// whole test process rather than let it hang CI. The next run's `unmount_stale` clears the mount.
const TEST_SECONDS_MAX: u64 = 120;

/// A mount in a fresh directory (`backing/` and `mnt/`), unmounted and removed when dropped,
/// whether the test passed or not.
struct Fixture {
    dir: PathBuf,
    mounted: Option<Mounted>,
    done: Arc<AtomicBool>,
}

impl Fixture {
    /// `None` (having said why) where FUSE cannot run.
    fn new(name: &str) -> Option<Fixture> {
        if !Path::new("/dev/fuse").exists() {
            eprintln!("skipping {name}: /dev/fuse is missing, so nothing can be mounted");
            return None;
        }
        let dir = PathBuf::from(format!("/tmp/sluice-faultfs-{name}-{}", std::process::id()));
        faultfs::unmount_stale(&dir).unwrap();
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("backing")).unwrap();
        fs::create_dir_all(dir.join("mnt")).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let watched = done.clone();
        let test = name.to_string();
        std::thread::spawn(move || {
            let start = Instant::now();
            while !watched.load(Ordering::SeqCst) {
                if start.elapsed() > Duration::from_secs(TEST_SECONDS_MAX) {
                    eprintln!("{test} ran past {TEST_SECONDS_MAX} s: aborting the tests");
                    std::process::abort();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let mounted = faultfs::mount(&dir.join("backing"), &dir.join("mnt")).unwrap();
        Some(Fixture {
            dir,
            mounted: Some(mounted),
            done,
        })
    }

    fn mnt(&self) -> PathBuf {
        self.dir.join("mnt")
    }

    fn backing(&self) -> PathBuf {
        self.dir.join("backing")
    }

    fn control(&self) -> Control {
        self.mounted.as_ref().unwrap().control()
    }

    /// A power cut, checked for consistency after.
    fn cut(&self) -> faultfs::DropReport {
        let control = self.control();
        let report = control.drop_unsynced().unwrap();
        control.check_invariants();
        let stats = control.stats();
        assert_eq!(
            (stats.unsynced_files, stats.unsynced_dirs, stats.undo_bytes),
            (0, 0, 0)
        );
        report
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mounted) = self.mounted.take() {
            drop(mounted);
        }
        let _ = faultfs::unmount_stale(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
        self.done.store(true, Ordering::SeqCst);
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Opened as sluice opens its files: read and append, created if missing.
fn open_append(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .unwrap()
}

/// A file with `bytes`, its data and its directory entry synced.
fn write_synced(path: &Path, bytes: &[u8]) {
    let mut file = open_append(path);
    file.write_all(bytes).unwrap();
    file.sync_data().unwrap();
    sync_dir(path.parent().unwrap()).unwrap();
}

#[test]
fn passthrough_reads_writes_renames_lists_and_locks() {
    let Some(f) = Fixture::new("passthrough") else {
        return;
    };
    let dir = f.mnt().join("t-0");
    fs::create_dir_all(&dir).unwrap();
    let mut file = open_append(&dir.join("a.log"));
    file.write_all(b"hello ").unwrap();
    file.write_all(b"world").unwrap();
    assert_eq!(file.metadata().unwrap().len(), 11);
    let mut buf = [0u8; 5];
    file.read_exact_at(&mut buf, 6).unwrap();
    assert_eq!(&buf, b"world");
    file.set_len(5).unwrap();
    file.write_all(b"!").unwrap();
    assert_eq!(fs::read(dir.join("a.log")).unwrap(), b"hello!");
    assert_eq!(fs::read(f.backing().join("t-0/a.log")).unwrap(), b"hello!");
    drop(file);

    fs::write(dir.join("b.tmp"), b"b").unwrap();
    fs::rename(dir.join("b.tmp"), dir.join("b.log")).unwrap();
    fs::rename(dir.join("b.log"), dir.join("a.log")).unwrap();
    assert_eq!(fs::read(dir.join("a.log")).unwrap(), b"b");
    fs::create_dir(dir.join("sub")).unwrap();
    fs::write(dir.join("sub/c"), b"c").unwrap();
    fs::rename(dir.join("sub"), f.mnt().join("moved")).unwrap();
    assert_eq!(fs::read(f.mnt().join("moved/c")).unwrap(), b"c");
    let mut names: Vec<String> = fs::read_dir(f.mnt())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["moved", "t-0"], "the trash is hidden");
    assert!(fs::metadata(f.mnt().join(".faultfs-trash")).is_err());
    let open = open_append(&dir.join("a.log"));
    fs::remove_file(dir.join("a.log")).unwrap();
    assert!(fs::read_dir(&dir).unwrap().next().is_none());
    // An unlinked file stays usable through a descriptor opened before (sluice may still read
    // a segment it has just deleted).
    assert_eq!(open.metadata().unwrap().len(), 1);
    let mut byte = [0u8; 1];
    open.read_exact_at(&mut byte, 0).unwrap();
    assert_eq!(&byte, b"b");
    drop(open);
    fs::remove_dir_all(f.mnt().join("moved")).unwrap();
    fs::remove_dir(&dir).unwrap();
    assert!(fs::read_dir(f.mnt()).unwrap().next().is_none());

    // flock locks belong to an open file description: a second one conflicts, as sluice's
    // data directory lock needs, and a dropped lock is free again.
    let lock = f.mnt().join(".lock");
    let first = open_append(&lock);
    first.try_lock().unwrap();
    let second = open_append(&lock);
    assert!(matches!(second.try_lock(), Err(TryLockError::WouldBlock)));
    drop(first);
    second.try_lock().unwrap();
    assert!(f.control().stats().ops > 0);
}

#[test]
fn a_synced_write_survives_a_power_cut() {
    let Some(mut f) = Fixture::new("synced") else {
        return;
    };
    write_synced(&f.mnt().join("a.log"), b"durable");
    let report = f.cut();
    assert_eq!(report, faultfs::DropReport::default());
    assert_eq!(fs::read(f.mnt().join("a.log")).unwrap(), b"durable");
    // An explicit unmount leaves the backing directory as it was, with its trash (empty).
    f.mounted.take().unwrap().unmount().unwrap();
    assert!(!f.mnt().join("a.log").exists());
    assert_eq!(fs::read(f.backing().join("a.log")).unwrap(), b"durable");
}

#[test]
fn unsynced_writes_appends_and_truncates_are_undone_exactly() {
    let Some(f) = Fixture::new("undo") else {
        return;
    };
    let (a, b) = (f.mnt().join("a.log"), f.mnt().join("b.log"));
    write_synced(&a, b"hello world");
    write_synced(&b, b"0123456789");
    let file = OpenOptions::new().read(true).write(true).open(&a).unwrap();
    file.write_all_at(b"HELLO", 0).unwrap();
    file.write_all_at(b" more", 11).unwrap();
    file.set_len(3).unwrap();
    file.set_len(20).unwrap();
    file.write_all_at(b"xyz", 15).unwrap();
    file.write_all_at(b"Q", 1).unwrap();
    assert_eq!(&fs::read(&a).unwrap()[..5], b"HQL\0\0");
    let mut appended = open_append(&b);
    appended.write_all(b"lost").unwrap();
    let stats = f.control().stats();
    assert_eq!(stats.unsynced_files, 2);
    assert_eq!(
        stats.undo_bytes, 11,
        "each synced byte of a.log saved once, none of b.log"
    );

    let report = f.cut();
    assert_eq!(report.files_restored, 2);
    assert!(report.bytes_dropped >= 4 + 5 + 5, "{report:?}");
    assert_eq!(fs::read(&a).unwrap(), b"hello world");
    assert_eq!(
        fs::metadata(&a).unwrap().len(),
        11,
        "a fresh stat sees the length"
    );
    assert_eq!(fs::read(&b).unwrap(), b"0123456789");
    // The descriptors of before the cut still work (the broker is killed first in real use).
    assert_eq!(file.metadata().unwrap().len(), 11);
}

#[test]
fn a_created_file_is_durable_only_once_its_directory_is_synced() {
    let Some(f) = Fixture::new("create") else {
        return;
    };
    let dir = f.mnt().join("t-0");
    fs::create_dir(&dir).unwrap();
    sync_dir(&f.mnt()).unwrap();
    // Both synced: there, whole.
    write_synced(&dir.join("c.log"), b"c");
    // Entry synced, data not: there, empty.
    let mut b = open_append(&dir.join("b.log"));
    sync_dir(&dir).unwrap();
    b.write_all(b"b").unwrap();
    // Data synced, entry not: gone.
    let mut a = open_append(&dir.join("a.log"));
    a.write_all(b"a").unwrap();
    a.sync_all().unwrap();
    // A directory created and not synced in its parent: gone with what it holds.
    fs::create_dir(f.mnt().join("t-1")).unwrap();
    write_synced(&f.mnt().join("t-1/d.log"), b"d");

    let report = f.cut();
    assert_eq!(report.entries_removed, 1 + 1, "{report:?}");
    assert_eq!(
        report.files_restored, 1,
        "b.log's unsynced byte: {report:?}"
    );
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["b.log", "c.log"]);
    assert_eq!(fs::read(dir.join("b.log")).unwrap(), b"");
    assert_eq!(fs::read(dir.join("c.log")).unwrap(), b"c");
    assert!(!f.mnt().join("t-1").exists());
    let trash: Vec<_> = fs::read_dir(f.backing().join(".faultfs-trash"))
        .unwrap()
        .collect();
    assert!(trash.is_empty(), "a cut empties the trash");
}

#[test]
fn renames_and_unlinks_are_undone_until_the_directory_is_synced() {
    let Some(f) = Fixture::new("rename") else {
        return;
    };
    let (tmp, target, gone) = (
        f.mnt().join("state.tmp"),
        f.mnt().join("state"),
        f.mnt().join("gone.log"),
    );
    write_synced(&target, b"old");
    write_synced(&gone, b"still here");
    // Sluice's replace: write a temporary file, sync it, rename it over the target.
    write_synced(&tmp, b"new");
    fs::remove_file(f.mnt().join("state.tmp")).unwrap();
    let mut file = open_append(&tmp);
    file.write_all(b"new").unwrap();
    file.sync_data().unwrap();
    fs::rename(&tmp, &target).unwrap();
    fs::remove_file(&gone).unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"new");

    let report = f.cut();
    assert_eq!(
        (report.entries_removed, report.entries_restored),
        (1, 3),
        "the new state goes; the old state, the synced tmp and gone.log come back: {report:?}"
    );
    assert_eq!(fs::read(&target).unwrap(), b"old");
    assert_eq!(
        fs::read(&tmp).unwrap(),
        b"new",
        "it was synced before its unlink"
    );
    assert_eq!(fs::read(&gone).unwrap(), b"still here");

    // The same with the directory synced after the rename: kept.
    fs::remove_file(&tmp).unwrap();
    write_synced(&tmp, b"newer");
    fs::rename(&tmp, &target).unwrap();
    sync_dir(&f.mnt()).unwrap();
    assert_eq!(f.cut(), faultfs::DropReport::default());
    assert_eq!(fs::read(&target).unwrap(), b"newer");
    assert!(!tmp.exists());
    // Into another directory: each side needs its own sync; here only the target's.
    fs::create_dir(f.mnt().join("d")).unwrap();
    sync_dir(&f.mnt()).unwrap();
    fs::rename(&target, f.mnt().join("d/moved")).unwrap();
    sync_dir(&f.mnt().join("d")).unwrap();
    f.cut();
    assert_eq!(fs::read(f.mnt().join("d/moved")).unwrap(), b"newer");
    assert_eq!(
        fs::read(&target).unwrap(),
        b"newer",
        "the old name is back too"
    );
}

#[test]
fn failing_syncs_return_eio_and_keep_the_data_unsynced() {
    let Some(f) = Fixture::new("failsync") else {
        return;
    };
    let path = f.mnt().join("a.log");
    write_synced(&path, b"kept");
    let control = f.control();
    control.set_fail_fsync(true);
    let mut file = open_append(&path);
    file.write_all(b" lost").unwrap();
    assert_eq!(
        file.sync_data().unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    assert_eq!(file.sync_all().unwrap_err().raw_os_error(), Some(libc::EIO));
    fs::write(f.mnt().join("new.log"), b"x").unwrap();
    assert_eq!(
        sync_dir(&f.mnt()).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    let stats = control.stats();
    assert_eq!(stats.fsyncs_failed, 3);
    assert_eq!((stats.unsynced_files, stats.unsynced_dirs), (2, 1));
    control.set_fail_fsync(false);
    let report = f.cut();
    assert_eq!(report.files_restored, 2);
    assert_eq!(fs::read(&path).unwrap(), b"kept");
    assert!(!f.mnt().join("new.log").exists());
}

#[test]
fn a_bit_flip_changes_one_bit_of_synced_data_only() {
    let Some(f) = Fixture::new("flip") else {
        return;
    };
    let synced: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    fs::create_dir(f.mnt().join("t-0")).unwrap();
    sync_dir(&f.mnt()).unwrap();
    let log = f.mnt().join("t-0/a.log");
    write_synced(&log, &synced);
    write_synced(&f.mnt().join("t-0/a.index"), b"not picked");
    let mut file = open_append(&log);
    file.write_all(&[0xAA; 100]).unwrap();
    let is_log = |p: &Path| p.extension().is_some_and(|e| e == "log");
    for seed in 0..20 {
        let before = fs::read(&log).unwrap();
        let flip = f.control().flip_bit(seed, &is_log).unwrap().unwrap();
        assert_eq!(flip.path, Path::new("t-0/a.log"));
        assert!(flip.offset < 4096, "only synced bytes: {flip:?}");
        let after = fs::read(&log).unwrap();
        let differing: Vec<usize> = (0..after.len())
            .filter(|&i| before[i] != after[i])
            .collect();
        assert_eq!(differing, [flip.offset as usize]);
        assert_eq!(
            before[flip.offset as usize] ^ after[flip.offset as usize],
            1 << flip.bit
        );
    }
    assert_eq!(f.control().flip_bit(1, &|_: &Path| false).unwrap(), None);
    assert_eq!(f.control().stats().bit_flips, 20);
    // Flips are on disk: a cut keeps them (and drops the unsynced tail).
    let before_cut = fs::read(&log).unwrap();
    f.cut();
    assert_eq!(fs::read(&log).unwrap(), before_cut[..4096]);
}

#[test]
fn unmount_stale_clears_a_forgotten_mount() {
    let Some(f) = Fixture::new("stale") else {
        return;
    };
    let (backing, mnt) = (f.dir.join("backing2"), f.dir.join("mnt2"));
    fs::create_dir_all(&backing).unwrap();
    fs::create_dir_all(&mnt).unwrap();
    let forgotten = faultfs::mount(&backing, &mnt).unwrap();
    fs::write(mnt.join("x"), b"x").unwrap();
    std::mem::forget(forgotten);
    let mounted = |p: &Path| {
        fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(p.to_str().unwrap()))
    };
    assert!(mounted(&mnt));
    let cleared = faultfs::unmount_stale(&f.dir).unwrap();
    // The fixture's own mount is under the same directory, and cleared with it.
    assert_eq!(cleared.len(), 2, "{cleared:?}");
    assert!(cleared.contains(&mnt));
    assert!(!mounted(&mnt));
    assert!(!mounted(&f.mnt()));
    assert_eq!(fs::read(backing.join("x")).unwrap(), b"x");
    assert!(faultfs::unmount_stale(&f.dir).unwrap().is_empty());
}

/// The real broker on the mount: it starts (creating, locking and syncing its files), refuses a
/// second broker on the same directory, stops cleanly, and starts again after a power cut.
#[test]
fn the_broker_runs_on_the_mount() {
    let Some(f) = Fixture::new("broker") else {
        return;
    };
    let binary = std::env::var_os("SLUICE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/sluice"));
    if !binary.exists() {
        eprintln!(
            "skipping the_broker_runs_on_the_mount: no broker at {} \
             (cargo build --release -p sluice-node, or set SLUICE_BIN)",
            binary.display()
        );
        return;
    }
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let start = || {
        std::process::Command::new(&binary)
            .arg("serve")
            .arg("--data-dir")
            .arg(f.mnt())
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let wait_listening = |child: &mut std::process::Child| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the broker exited at start: {status}");
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the broker did not listen in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let stop = |mut child: std::process::Child, signal: i32| {
        let rc = unsafe { libc::kill(child.id() as i32, signal) };
        assert_eq!(rc, 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the broker did not stop in 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    let mut broker = start();
    wait_listening(&mut broker);
    let pid = fs::read_to_string(f.mnt().join(".lock")).unwrap();
    assert_eq!(pid.trim(), broker.id().to_string());
    let second = std::process::Command::new(&binary)
        .arg("serve")
        .arg("--data-dir")
        .arg(f.mnt())
        .arg("--listen")
        .arg("127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!second.status.success());
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("in use by another broker"), "{said}");
    assert!(stop(broker, libc::SIGTERM).success());
    let stats = f.control().stats();
    eprintln!("after a clean stop: {stats:?}");

    // Killed, then a power cut; it starts again on what survived.
    let mut broker = start();
    wait_listening(&mut broker);
    let status = stop(broker, libc::SIGKILL);
    assert!(!status.success());
    let report = f.cut();
    eprintln!("the cut dropped {report:?}");
    let mut broker = start();
    wait_listening(&mut broker);
    assert!(stop(broker, libc::SIGTERM).success());
}

/// Set in the environment of the child process `unmount_stale_clears_the_mount_of_a_killed_process`
/// starts: the directory the child mounts in.
const CHILD_DIR_ENV: &str = "SLUICE_FAULTFS_CHILD_DIR";

/// In the child: mounts and waits to be killed (bounded, in case the parent died first).
fn serve_as_the_killed_child(dir: &Path) {
    let _mounted = faultfs::mount(&dir.join("backing2"), &dir.join("mnt2")).unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

/// A harness killed with its mount up leaves a mount no process serves (`ENOTCONN`), which
/// `unmount_stale` clears.
#[test]
fn unmount_stale_clears_the_mount_of_a_killed_process() {
    if let Some(dir) = std::env::var_os(CHILD_DIR_ENV) {
        serve_as_the_killed_child(Path::new(&dir));
        return;
    }
    let Some(f) = Fixture::new("killed") else {
        return;
    };
    let mnt = f.dir.join("mnt2");
    fs::create_dir_all(f.dir.join("backing2")).unwrap();
    fs::create_dir_all(&mnt).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "unmount_stale_clears_the_mount_of_a_killed_process",
            "--nocapture",
        ])
        .env(CHILD_DIR_ENV, &f.dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mounted = |p: &Path| {
        fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(p.to_str().unwrap()))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !mounted(&mnt) {
        assert!(child.try_wait().unwrap().is_none(), "the child exited");
        assert!(Instant::now() < deadline, "the child did not mount in 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let error = fs::metadata(mnt.join("x")).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::ENOTCONN), "{error}");
    let cleared = faultfs::unmount_stale(&f.dir).unwrap();
    assert!(cleared.contains(&mnt), "{cleared:?}");
    assert!(!mounted(&mnt));
    assert!(fs::read_dir(&mnt).unwrap().next().is_none());
}

/// Regression (the Jepsen power-cut run, `scripts/jepsen --nemesis power-cut --seed 4`): the
/// broker's file storage created a partition's directory without syncing the data directory,
/// so every power cut took all of that node's partitions, synced records included, and after a
/// power cut of every node offsets were reused (inconsistent-offsets).
#[test]
fn the_brokers_new_partition_directory_survives_a_power_cut() {
    use sluice_core::storage::{Storage, StorageFile};
    let Some(f) = Fixture::new("partition-dir") else {
        return;
    };
    let storage = sluice_node::storage::FileStorage::new(f.mnt().join("data")).unwrap();
    let dir = Path::new("topic-0");
    storage.create_dir_all(dir).unwrap();
    let file = storage
        .open(&dir.join("00000000000000000000.log"), true)
        .unwrap();
    file.append(b"record").unwrap();
    file.sync().unwrap();
    storage.sync_dir(dir).unwrap();
    let report = f.cut();
    assert_eq!(report.entries_removed, 0, "{report:?}");
    assert_eq!(
        fs::read(f.mnt().join("data/topic-0/00000000000000000000.log")).unwrap(),
        b"record"
    );
}

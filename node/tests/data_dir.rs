//! `sluice serve`, the built binary, on its data directory and addresses: one broker per data
//! directory (a second exits non-zero naming the directory and the holder's pid), start-up
//! failures that name the address or path they are about, and data directories of another
//! format refused with exit status 2 and nothing changed. Loopback addresses and temporary
//! directories only; every process is started here and killed by its own pid.
#![cfg(not(madsim))]

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use sluice_core::format::{encode, FORMAT_FILE, FORMAT_VERSION};

/// How long a broker may take to serve, or a refused one to exit (the build machine is shared).
const WAIT_MAX: Duration = Duration::from_secs(60);

/// A temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "sluice-data-dir-test-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn data(&self) -> PathBuf {
        self.0.join("data")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn serve(data_dir: &Path, listen: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .arg("serve")
        .args(["--listen", listen])
        .arg("--data-dir")
        .arg(data_dir)
        .env("SLUICE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Runs `command` to its exit, at most [`WAIT_MAX`]: its status and what it wrote to stderr.
fn run_to_exit(mut command: Command) -> (ExitStatus, String) {
    let mut child = command.spawn().expect("spawn sluice");
    let pid = child.id();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        let _ = tx.send((child.wait().expect("wait for sluice"), text));
    });
    match rx.recv_timeout(WAIT_MAX) {
        Ok(exited) => exited,
        Err(_) => {
            // Ours, started above: kill it by its pid so the waiting thread ends too.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("sluice (pid {pid}) did not exit within {WAIT_MAX:?}");
        }
    }
}

/// A broker serving on a loopback port; killed (by its pid) when dropped.
struct Running {
    child: Child,
    log: Vec<String>,
}

impl Running {
    /// Starts a broker and waits until it says it serves.
    fn start(data_dir: &Path) -> Running {
        let mut child = serve(data_dir, "127.0.0.1:0")
            .spawn()
            .expect("spawn sluice");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Keeps draining stderr after the wait below so the broker never blocks on the pipe.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
        let mut running = Running {
            child,
            log: Vec::new(),
        };
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let serving = line.contains("sluice is serving Kafka clients");
                    running.log.push(line);
                    if serving {
                        return running;
                    }
                }
                Err(_) => panic!(
                    "sluice did not serve within {WAIT_MAX:?} (or exited); its log:\n{}",
                    running.log.join("\n")
                ),
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the process ends without any clean-up of its own.
    fn kill(mut self) {
        self.child.kill().expect("kill sluice");
        self.child.wait().expect("wait for sluice");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_second_broker_on_one_data_directory_exits_naming_the_directory_and_the_holder() {
    let dir = TempDir::new("lock");
    let data = dir.data();
    let first = Running::start(&data);

    let (status, stderr) = run_to_exit(serve(&data, "127.0.0.1:0"));
    assert!(!status.success(), "the second broker exited with {status}");
    let expected = format!(
        "data directory {} is in use by another broker (pid {}, lock {})",
        data.display(),
        first.pid(),
        data.join(".lock").display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(
        !stderr.contains("serving"),
        "the second broker must not serve: {stderr}"
    );

    // The kernel drops the lock of a killed broker: the next one starts on the same directory
    // (and opens the format file the first one wrote).
    first.kill();
    let again = Running::start(&data);
    assert!(
        !again.log.iter().any(|l| l.contains("new data directory")),
        "the directory is not new the second time: {:?}",
        again.log
    );
    assert_eq!(
        std::fs::read_to_string(data.join(".lock")).unwrap(),
        format!("{}\n", again.pid())
    );
}

#[test]
fn a_kafka_listen_address_in_use_is_named() {
    let dir = TempDir::new("listen");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, stderr) = run_to_exit(serve(&dir.data(), &addr));
    assert!(!status.success(), "{status}");
    assert!(
        stderr.contains(&format!("cannot listen for Kafka clients on {addr}: ")),
        "{stderr}"
    );
    assert!(stderr.contains("in use"), "{stderr}");
}

#[test]
fn a_peer_rpc_address_in_use_is_named() {
    let dir = TempDir::new("rpc");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let rpc = taken.local_addr().unwrap().to_string();
    let peers = format!("1@{rpc},2@{}", other.local_addr().unwrap());
    let mut command = serve(&dir.data(), "127.0.0.1:0");
    command.args(["--node-id", "1", "--peers", &peers]);
    let (status, stderr) = run_to_exit(command);
    assert!(!status.success(), "{status}");
    assert!(
        stderr.contains(&format!("cannot listen for peers (rpc_listen) on {rpc}: ")),
        "{stderr}"
    );
}

#[test]
fn a_data_directory_that_is_a_file_is_named() {
    let dir = TempDir::new("file");
    let data = dir.data();
    std::fs::write(&data, b"not a directory").unwrap();
    let (status, stderr) = run_to_exit(serve(&data, "127.0.0.1:0"));
    assert!(!status.success(), "{status}");
    assert!(
        stderr.contains(&format!(
            "cannot create the data directory {}: ",
            data.display()
        )),
        "{stderr}"
    );
}

#[test]
fn a_format_1_data_directory_is_refused_with_status_2_and_left_as_it_was() {
    let dir = TempDir::new("format1");
    let data = dir.data();
    // What a Sluice before the format file left: partition directories, no `sluice-format`.
    std::fs::create_dir_all(data.join("orders-0")).unwrap();
    std::fs::write(data.join("orders-0/00000000000000000000.log"), b"").unwrap();
    let (status, stderr) = run_to_exit(serve(&data, "127.0.0.1:0"));
    assert_eq!(status.code(), Some(2), "{stderr}");
    let expected = format!("data directory {} holds Sluice format 1 (", data.display());
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(
        stderr.contains("it has orders-0 and no sluice-format"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("this sluice reads formats 2 to {FORMAT_VERSION}")),
        "{stderr}"
    );
    assert!(
        !data.join(FORMAT_FILE).exists(),
        "a refused directory gets no format file"
    );
    assert!(!data.join("__cluster_metadata-0").exists());
}

#[test]
fn a_data_directory_of_a_newer_format_is_refused_with_status_2() {
    let dir = TempDir::new("newer");
    let data = dir.data();
    std::fs::create_dir_all(&data).unwrap();
    let newer = encode(FORMAT_VERSION + 1);
    std::fs::write(data.join(FORMAT_FILE), &newer).unwrap();
    let (status, stderr) = run_to_exit(serve(&data, "127.0.0.1:0"));
    assert_eq!(status.code(), Some(2), "{stderr}");
    let expected = format!(
        "data directory {} was written by a newer Sluice (format {}",
        data.display(),
        FORMAT_VERSION + 1
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert_eq!(std::fs::read(data.join(FORMAT_FILE)).unwrap(), newer);
}

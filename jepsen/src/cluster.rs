//! The real `sluice serve` processes of one run: node `i` (1..=N) runs in its network namespace
//! with its data directory on its own fault file system. Every process is started here and
//! signalled only by its own pid; dropping the cluster kills whatever still runs and unmounts
//! the file systems.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use crate::faultfs::{self, Control, Mounted};
use crate::net::Net;

/// The Kafka and RPC ports every node listens on (each node has its own address).
pub const KAFKA_PORT: u16 = 9092;
pub const RPC_PORT: u16 = 19092;

/// How the nodes are started.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    /// The `sluice` binary.
    pub binary: PathBuf,
    /// `SLUICE_PLANTED_BUG` for a planted-bug build, if any.
    pub planted_bug: Option<String>,
    /// Further `sluice serve` flags.
    pub serve_args: Vec<String>,
}

/// One node's process state.
#[derive(Debug)]
struct Node {
    child: Option<Child>,
    paused: bool,
    /// The fault file system's mountpoint: the node's data directory.
    data_dir: PathBuf,
    /// What the node's disk holds (the file system's backing directory).
    backing: PathBuf,
    fs: Option<Mounted>,
    log_path: PathBuf,
}

/// What [`Cluster::check_alive`] found: a node whose process ended without being killed.
#[derive(Debug)]
pub struct Exited {
    pub node: usize,
    pub status: String,
    pub log_tail: String,
}

pub struct Cluster {
    /// Present until [`Cluster::shutdown`] takes it.
    net: Option<Net>,
    settings: NodeSettings,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Mounts each node's file system under `dir` (`dir/n<i>/backing` is what the disk holds,
    /// `dir/n<i>/data` the mount) and starts every node.
    pub fn start(
        net: Net,
        nodes: usize,
        dir: &Path,
        settings: NodeSettings,
    ) -> io::Result<Cluster> {
        let mut cluster = Cluster {
            net: Some(net),
            settings,
            nodes: Vec::new(),
        };
        for i in 1..=nodes {
            let root = dir.join(format!("n{i}"));
            let backing = root.join("backing");
            let data_dir = root.join("data");
            std::fs::create_dir_all(&backing)?;
            std::fs::create_dir_all(&data_dir)?;
            let fs = faultfs::mount(&backing, &data_dir).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot mount the fault file system on {}: {e}",
                        data_dir.display()
                    ),
                )
            })?;
            cluster.nodes.push(Node {
                child: None,
                paused: false,
                data_dir,
                backing,
                fs: Some(fs),
                log_path: root.join("sluice.log"),
            });
        }
        for i in 1..=nodes {
            cluster.start_node(i)?;
        }
        Ok(cluster)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn net(&self) -> &Net {
        self.net
            .as_ref()
            .expect("the network lives as long as the cluster")
    }

    /// Every node's Kafka address, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        (1..=self.nodes.len())
            .map(|i| format!("{}:{KAFKA_PORT}", self.net().node_addr(i)))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn node(&mut self, i: usize) -> &mut Node {
        assert!((1..=self.nodes.len()).contains(&i), "node {i} exists");
        &mut self.nodes[i - 1]
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i - 1].child.is_some()
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i - 1].child.as_ref().map(Child::id)
    }

    /// Starts node `i` (it must not be running).
    pub fn start_node(&mut self, i: usize) -> io::Result<()> {
        let peers = (1..=self.nodes.len())
            .map(|j| format!("{j}@{}:{RPC_PORT}", self.net().node_addr(j)))
            .collect::<Vec<_>>()
            .join(",");
        let addr = self.net().node_addr(i);
        let binary = self.settings.binary.clone();
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--node-id".into(),
            i.to_string(),
            "--listen".into(),
            format!("{addr}:{KAFKA_PORT}"),
            "--rpc-listen".into(),
            format!("{addr}:{RPC_PORT}"),
            "--peers".into(),
            peers,
            "--data-dir".into(),
        ];
        let node = &self.nodes[i - 1];
        assert!(node.child.is_none(), "node {i} is not running");
        args.push(node.data_dir.display().to_string());
        args.extend(self.settings.serve_args.iter().cloned());
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)?;
        let mut command = self.net().exec_command(i, &binary, &args);
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("SLUICE_LOG", "info");
        match &self.settings.planted_bug {
            Some(bug) => command.env("SLUICE_PLANTED_BUG", bug),
            None => command.env_remove("SLUICE_PLANTED_BUG"),
        };
        let child = command.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start {} for node {i}: {e}", binary.display()),
            )
        })?;
        let node = self.node(i);
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    fn signal(&mut self, i: usize, signal: libc::c_int) {
        if let Some(child) = &self.node(i).child {
            let pid = child.id() as libc::pid_t;
            // Ours, started by start_node and not yet reaped: the pid cannot have been reused.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// kill -9 node `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        self.signal(i, libc::SIGKILL);
        let node = self.node(i);
        if let Some(mut child) = node.child.take() {
            let _ = child.wait();
        }
        node.paused = false;
    }

    /// SIGSTOP node `i`.
    pub fn pause(&mut self, i: usize) {
        if self.node(i).child.is_some() {
            self.signal(i, libc::SIGSTOP);
            self.node(i).paused = true;
        }
    }

    /// SIGCONT node `i`.
    pub fn resume(&mut self, i: usize) {
        if self.node(i).paused {
            self.signal(i, libc::SIGCONT);
            self.node(i).paused = false;
        }
    }

    /// The fault file system of node `i`.
    pub fn fs(&self, i: usize) -> Control {
        self.nodes[i - 1]
            .fs
            .as_ref()
            .expect("mounted while the cluster lives")
            .control()
    }

    /// A node whose process ended on its own (a crash), if any; it is reaped.
    pub fn check_alive(&mut self) -> Option<Exited> {
        for i in 1..=self.nodes.len() {
            let node = self.node(i);
            let Some(child) = node.child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                node.child = None;
                let log_tail = tail(&node.log_path, 4096);
                return Some(Exited {
                    node: i,
                    status: status.to_string(),
                    log_tail,
                });
            }
        }
        None
    }

    /// Restarts every node that is down and resumes every paused one.
    pub fn revive_all(&mut self) -> io::Result<()> {
        for i in 1..=self.nodes.len() {
            self.resume(i);
            if !self.is_running(i) {
                self.start_node(i)?;
            }
        }
        Ok(())
    }

    /// What node `i`'s disk holds: read it to see what the node stored.
    pub fn backing_dir(&self, i: usize) -> &Path {
        &self.nodes[i - 1].backing
    }

    /// Kills every node, unmounts every file system and removes the network.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.stop_all();
        let mut first_error = None;
        for node in &mut self.nodes {
            if let Some(fs) = node.fs.take() {
                if let Err(e) = fs.detach() {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(net) = self.net.take() {
            if let Err(e) = net.destroy() {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn stop_all(&mut self) {
        for i in 1..=self.nodes.len() {
            self.resume(i);
            self.kill(i);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Processes first: a mount cannot go while a process holds files in it.
        self.stop_all();
        for node in &mut self.nodes {
            if let Some(fs) = node.fs.take() {
                let _ = fs.detach();
            }
        }
    }
}

/// The last `bytes` of a file, as text.
pub fn tail(path: &Path, bytes: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(bytes)));
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    text
}

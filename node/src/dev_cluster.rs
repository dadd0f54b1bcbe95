//! `sluice cluster --nodes N`: a local cluster for development. Starts N `sluice serve` child
//! processes of this same binary on 127.0.0.1 (Kafka ports from `--base-port`, RPC ports from
//! `--rpc-base-port`, data in `<data-dir>/node-<id>`), prints the bootstrap address, forwards
//! SIGINT/SIGTERM to the children and waits for them. If a child exits on its own, the others
//! are stopped too and the exit status says so: a development cluster with a dead node should
//! not look healthy.

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode};
use std::time::Duration;

/// Largest local cluster: every node is a metadata voter, and Raft groups have at most this many.
pub const LOCAL_NODES_MAX: u16 = sluice_core::limits::RAFT_VOTERS_MAX as u16;

#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Number of nodes (node ids 1..=N).
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Kafka port of node 1; node i listens on base-port + i - 1.
    #[arg(long, default_value_t = 9092)]
    pub base_port: u16,
    /// RPC port of node 1; node i listens on rpc-base-port + i - 1.
    #[arg(long, default_value_t = 19092)]
    pub rpc_base_port: u16,
    /// Parent directory of the nodes' data directories.
    #[arg(long, default_value = "./data-cluster")]
    pub data_dir: PathBuf,
    /// Further `sluice serve` flags passed to every node (after `--`).
    #[arg(last = true)]
    pub serve_args: Vec<String>,
}

/// The addresses of a local cluster: `(node id, kafka address, rpc address)` per node.
pub fn layout(args: &ClusterArgs) -> Result<Vec<(u16, String, String)>, String> {
    if args.nodes == 0 || args.nodes > LOCAL_NODES_MAX {
        return Err(format!("--nodes must be in 1..={LOCAL_NODES_MAX}"));
    }
    let port = |base: u16, i: u16| {
        base.checked_add(i - 1)
            .ok_or_else(|| format!("port {base} + {} does not fit", i - 1))
    };
    (1..=args.nodes)
        .map(|i| {
            Ok((
                i,
                format!("127.0.0.1:{}", port(args.base_port, i)?),
                format!("127.0.0.1:{}", port(args.rpc_base_port, i)?),
            ))
        })
        .collect()
}

pub fn run(args: ClusterArgs) -> ExitCode {
    let nodes = match layout(&args) {
        Ok(nodes) => nodes,
        Err(e) => {
            eprintln!("sluice cluster: {e}");
            return ExitCode::from(2);
        }
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("sluice cluster: cannot find this executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let peers = nodes
        .iter()
        .map(|(id, _, rpc)| format!("{id}@{rpc}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut children: Vec<(u16, Child)> = Vec::new();
    for (id, kafka, rpc) in &nodes {
        let data_dir = args.data_dir.join(format!("node-{id}"));
        let spawned = Command::new(&exe)
            .arg("serve")
            .args(["--node-id", &id.to_string()])
            .args(["--listen", kafka])
            .args(["--rpc-listen", rpc])
            .args(["--peers", &peers])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(&args.serve_args)
            .spawn();
        match spawned {
            Ok(child) => children.push((*id, child)),
            Err(e) => {
                eprintln!("sluice cluster: cannot start node {id}: {e}");
                stop(&mut children);
                return ExitCode::FAILURE;
            }
        }
    }
    let bootstrap = nodes
        .iter()
        .map(|(_, kafka, _)| kafka.as_str())
        .collect::<Vec<_>>()
        .join(",");
    println!(
        "sluice cluster: {} nodes, data in {}",
        nodes.len(),
        args.data_dir.display()
    );
    println!("bootstrap.servers={bootstrap}");
    let stopping = install_signal_flag();
    loop {
        if stopping.load(std::sync::atomic::Ordering::Relaxed) {
            stop(&mut children);
            return ExitCode::SUCCESS;
        }
        for (id, child) in &mut children {
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!("sluice cluster: node {id} exited ({status}); stopping the others");
                let id = *id;
                children.retain(|(other, _)| *other != id);
                stop(&mut children);
                return ExitCode::FAILURE;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM to every child, then wait for each (SIGKILL after 10 s).
fn stop(children: &mut Vec<(u16, Child)>) {
    for (_, child) in children.iter() {
        signal(child.id(), libc::SIGTERM);
    }
    for (id, child) in children.iter_mut() {
        let mut waited = Duration::ZERO;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if waited >= Duration::from_secs(10) => {
                    eprintln!("sluice cluster: node {id} did not stop; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => {
                    std::thread::sleep(Duration::from_millis(50));
                    waited += Duration::from_millis(50);
                }
            }
        }
    }
    children.clear();
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid we spawned; a stale pid at worst gets ESRCH.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// SIGINT and SIGTERM set a flag the supervisor loop polls (only an atomic store in the handler).
fn install_signal_flag() -> &'static std::sync::atomic::AtomicBool {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
    &STOP
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_numbers_ports_from_the_bases() {
        let args = ClusterArgs {
            nodes: 3,
            base_port: 9092,
            rpc_base_port: 19092,
            data_dir: PathBuf::from("d"),
            serve_args: Vec::new(),
        };
        let nodes = layout(&args).unwrap();
        assert_eq!(
            nodes[2],
            (
                3,
                "127.0.0.1:9094".to_string(),
                "127.0.0.1:19094".to_string()
            )
        );
        assert!(layout(&ClusterArgs {
            nodes: 0,
            ..args.clone()
        })
        .is_err());
        assert!(layout(&ClusterArgs {
            base_port: u16::MAX,
            ..args
        })
        .is_err());
    }
}

//! The test network on a real kernel: reachability, partitions, one-way cuts, cleanup and
//! isolation between runs. These need root (network namespaces, nftables); without it each test
//! says why and passes without checking anything.
//!
//! Each test uses run ids of its own (90..=99), so the tests of one `cargo test` run in parallel;
//! a second `cargo test` of this file at the same time is refused by the run locks.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use sluice_jepsen::net::{clean_leftovers, Net, CLIENT};

/// How long a connect or a datagram may take before it counts as dropped. Both go over a veth
/// pair and a bridge on this machine, which takes well under a millisecond.
const REACH_TIMEOUT_MS: u64 = 500;

/// Creates the network, or says why this machine cannot and returns `None`.
fn net_or_skip(id: u8, nodes: usize) -> Option<Net> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: network namespaces need root");
        return None;
    }
    match Net::create(id, nodes) {
        Ok(net) => Some(net),
        Err(error)
            if error.kind() == std::io::ErrorKind::PermissionDenied
                || error.to_string().contains("Operation not permitted") =>
        {
            eprintln!("skipped: cannot create network namespaces: {error}");
            None
        }
        Err(error) => panic!("run {id}: {error}"),
    }
}

/// Runs `f` on a thread inside endpoint `endpoint`'s namespace.
fn in_namespace<T: Send>(net: &Net, endpoint: usize, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            net.enter(endpoint).expect("enter the namespace");
            f()
        });
        thread
            .join()
            .expect("the thread in the namespace does not panic")
    })
}

/// Whether a TCP connection from endpoint `from` to a listener at endpoint `to` is established.
/// The listener is created inside `to`'s namespace and stays there; the kernel completes the
/// handshake from its backlog, so nothing needs to accept.
fn tcp_reaches(net: &Net, from: usize, to: usize) -> bool {
    let listener = in_namespace(net, to, || {
        TcpListener::bind((net.addr(to), 0)).expect("bind")
    });
    let target = listener.local_addr().expect("the listener's address");
    in_namespace(net, from, || {
        TcpStream::connect_timeout(&target, Duration::from_millis(REACH_TIMEOUT_MS)).is_ok()
    })
}

/// Whether a datagram sent from a socket in `from`'s namespace arrives at one in `to`'s.
fn udp_reaches(net: &Net, from: usize, to: usize) -> bool {
    let sender = in_namespace(net, from, || {
        UdpSocket::bind((net.addr(from), 0)).expect("bind")
    });
    let receiver = in_namespace(net, to, || {
        UdpSocket::bind((net.addr(to), 0)).expect("bind")
    });
    receiver
        .set_read_timeout(Some(Duration::from_millis(REACH_TIMEOUT_MS)))
        .expect("timeout");
    sender
        .send_to(b"probe", receiver.local_addr().expect("address"))
        .expect("send");
    let mut buffer = [0u8; 16];
    match receiver.recv_from(&mut buffer) {
        Ok((5, source)) => source == sender.local_addr().expect("address"),
        Ok(_) => false,
        Err(_) => false,
    }
}

/// Every ordered pair of endpoints `(from, to)` without a TCP connection from `from` to `to`.
fn unreachable_pairs(net: &Net) -> Vec<(usize, usize)> {
    let mut pairs = Vec::new();
    for from in 0..=net.nodes() {
        for to in (0..=net.nodes()).filter(|&to| to != from) {
            if !tcp_reaches(net, from, to) {
                pairs.push((from, to));
            }
        }
    }
    pairs
}

fn run_namespaces(id: u8) -> Vec<String> {
    let output = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    assert!(
        output.status.success(),
        "ip netns list: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let prefix = format!("sj{id}-");
    let listing = String::from_utf8(output.stdout).expect("utf-8");
    let mut names: Vec<String> = listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

/// Removes run `id`'s namespaces when dropped, for a run whose `Net` is gone without cleaning up.
struct LeftoverGuard(u8);

impl Drop for LeftoverGuard {
    fn drop(&mut self) {
        let _ = clean_leftovers(Some(self.0));
    }
}

#[test]
fn every_endpoint_reaches_every_other() {
    let Some(net) = net_or_skip(90, 3) else {
        return;
    };
    assert_eq!(net.node_addr(2).to_string(), "10.190.0.2");
    assert_eq!(net.client_addr().to_string(), "10.190.0.250");
    assert_eq!(net.namespace(CLIENT), "sj90-c");
    assert_eq!(
        unreachable_pairs(&net),
        vec![],
        "(from, to) pairs without a connection"
    );
    // The harness acts as the client: a thread that entered its namespace passes it on to the
    // threads and commands it starts.
    let (inherited, addresses) = in_namespace(&net, CLIENT, || {
        let target: SocketAddr = (net.node_addr(3), 9).into();
        let listener = in_namespace(&net, 3, || TcpListener::bind(target).expect("bind"));
        let connect = std::thread::spawn(move || {
            TcpStream::connect_timeout(&target, Duration::from_millis(REACH_TIMEOUT_MS)).is_ok()
        });
        let inherited = connect
            .join()
            .expect("the connecting thread does not panic");
        drop(listener);
        let output = std::process::Command::new("ip")
            .args(["-4", "-o", "addr", "show", "dev", "eth0"])
            .output()
            .expect("ip addr");
        (
            inherited,
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    });
    assert!(
        inherited,
        "a thread started in the client namespace reaches node 3"
    );
    assert!(
        addresses.contains("10.190.0.250/24"),
        "a command started there runs there: {addresses}"
    );
    // No IPv6 anywhere, so no link-local path can go around a cut.
    for endpoint in 0..=net.nodes() {
        let show = ["-n", &net.namespace(endpoint), "-6", "addr", "show"];
        let output = std::process::Command::new("ip")
            .args(show)
            .output()
            .expect("ip -6 addr");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "",
            "endpoint {endpoint} has IPv6 addresses"
        );
    }
    // The bridge namespace is a plain switch: br_netfilter's hooks are off there.
    let sysctl = [
        "netns",
        "exec",
        "sj90-br",
        "cat",
        "/proc/sys/net/bridge/bridge-nf-call-iptables",
    ];
    let output = std::process::Command::new("ip")
        .args(sysctl)
        .output()
        .expect("ip netns exec cat");
    if output.status.success() {
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "0");
    }
    net.destroy().expect("destroy");
}

#[test]
fn a_partition_cuts_nodes_apart_but_the_client_reaches_all_until_healed() {
    let Some(net) = net_or_skip(91, 3) else {
        return;
    };
    net.partition(&[vec![1], vec![2, 3]]).expect("partition");
    assert_eq!(net.cuts(), vec![(1, 2), (1, 3), (2, 1), (3, 1)]);
    for (from, to) in [(1, 2), (2, 1), (1, 3), (3, 1)] {
        assert!(
            !tcp_reaches(&net, from, to),
            "{from} -> {to} across the partition"
        );
    }
    for (from, to) in [
        (2, 3),
        (3, 2),
        (CLIENT, 1),
        (CLIENT, 2),
        (CLIENT, 3),
        (1, CLIENT),
    ] {
        assert!(
            tcp_reaches(&net, from, to),
            "{from} -> {to} on one side, or client"
        );
    }

    // Naming the client puts it on a side too.
    net.partition(&[vec![1], vec![CLIENT, 2, 3]])
        .expect("partition with the client");
    assert!(!tcp_reaches(&net, CLIENT, 1), "client -> isolated node");
    assert!(tcp_reaches(&net, CLIENT, 2), "client -> its side");

    net.heal().expect("heal");
    assert_eq!(net.cuts(), vec![]);
    assert_eq!(
        unreachable_pairs(&net),
        vec![],
        "(from, to) pairs without a connection after heal"
    );
}

#[test]
fn a_one_way_cut_drops_packets_in_one_direction_only() {
    let Some(net) = net_or_skip(92, 3) else {
        return;
    };
    assert!(
        udp_reaches(&net, 1, 2) && udp_reaches(&net, 2, 1),
        "before the cut"
    );
    net.cut(1, 2).expect("cut");
    assert_eq!(net.cuts(), vec![(1, 2)]);
    assert!(!udp_reaches(&net, 1, 2), "1 -> 2 is cut");
    assert!(udp_reaches(&net, 2, 1), "2 -> 1 still arrives");
    assert!(
        udp_reaches(&net, 1, 3) && udp_reaches(&net, 3, 2),
        "other pairs are untouched"
    );
    // TCP needs both directions: the SYN or the SYN-ACK is lost either way round.
    assert!(
        !tcp_reaches(&net, 1, 2) && !tcp_reaches(&net, 2, 1),
        "a one-way cut breaks TCP both ways"
    );

    // A bridge: 1 and 3 cut off from each other, 2 sees both, applied as one change.
    net.set_cuts(&[(1, 3), (3, 1)]).expect("bridge");
    assert!(
        !udp_reaches(&net, 1, 3) && !udp_reaches(&net, 3, 1),
        "across the bridge"
    );
    assert!(
        udp_reaches(&net, 1, 2) && udp_reaches(&net, 2, 3),
        "through the bridge node"
    );

    // The client is endpoint 0 and can be cut one way like a node.
    net.set_cuts(&[(CLIENT, 3)]).expect("client cut");
    assert!(!udp_reaches(&net, CLIENT, 3) && udp_reaches(&net, 3, CLIENT));
    assert!(
        net.cut(2, 2).is_err() && net.cut(1, 4).is_err(),
        "no self cut, no node 4"
    );
    assert_eq!(
        net.cuts(),
        vec![(CLIENT, 3)],
        "a refused cut changes nothing"
    );
    net.heal().expect("heal");
    assert!(
        udp_reaches(&net, 1, 2) && udp_reaches(&net, CLIENT, 3),
        "after heal"
    );
}

#[test]
fn exec_command_keeps_the_pid_and_destroy_removes_everything() {
    let Some(net) = net_or_skip(93, 3) else {
        return;
    };
    assert_eq!(
        run_namespaces(93),
        vec!["sj93-br", "sj93-c", "sj93-n1", "sj93-n2", "sj93-n3"]
    );
    let mut child = net
        .exec_command(2, "sleep", ["30"])
        .spawn()
        .expect("spawn sleep in node 2");
    let pid = child.id();
    // `ip netns exec` execs the program in place: the pid turns from `ip` into `sleep`, in node
    // 2's namespace.
    let deadline = Instant::now() + Duration::from_secs(1);
    while std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .expect("comm")
        .trim()
        != "sleep"
    {
        assert!(Instant::now() < deadline, "pid {pid} never became sleep");
        std::thread::sleep(Duration::from_millis(5));
    }
    let inside = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .expect("ns")
        .ino();
    assert_eq!(
        inside,
        std::fs::metadata("/run/netns/sj93-n2")
            .expect("netns")
            .ino()
    );

    // A process still inside is killed, or it would keep the namespace alive.
    net.destroy().expect("destroy");
    assert_eq!(run_namespaces(93), Vec::<String>::new());
    let status = child.wait().expect("wait");
    assert!(
        !status.success(),
        "sleep 30 was killed, not finished: {status}"
    );
    net.destroy().expect("a second destroy does nothing");
    drop(net);
    assert_eq!(
        clean_leftovers(Some(93)).expect("clean"),
        Vec::<String>::new()
    );
}

#[test]
fn clean_leftovers_removes_a_forgotten_run() {
    let _guard = LeftoverGuard(94);
    let Some(net) = net_or_skip(94, 3) else {
        return;
    };
    // As a killed run would, leave everything behind (and the lock held by a leaked file).
    std::mem::forget(net);
    assert_eq!(run_namespaces(94).len(), 5);
    let removed = clean_leftovers(Some(94)).expect("clean");
    assert_eq!(
        removed,
        vec!["sj94-br", "sj94-c", "sj94-n1", "sj94-n2", "sj94-n3"]
    );
    assert_eq!(run_namespaces(94), Vec::<String>::new());
    assert_eq!(
        clean_leftovers(Some(94)).expect("clean twice"),
        Vec::<String>::new()
    );
}

#[test]
fn two_runs_at_once_do_not_interfere() {
    let Some(a) = net_or_skip(95, 3) else { return };
    let Some(b) = net_or_skip(96, 5) else { return };
    let busy = Net::create(95, 3).err().expect("run 95 is held by `a`");
    assert_eq!(busy.kind(), std::io::ErrorKind::ResourceBusy, "{busy}");
    let all_busy = Net::create_free(95..=96, 3)
        .err()
        .expect("95 and 96 are both held");
    assert_eq!(
        all_busy.kind(),
        std::io::ErrorKind::ResourceBusy,
        "{all_busy}"
    );
    // Only unheld runs are leftovers: both live runs survive a sweep of every id.
    let removed = clean_leftovers(None).expect("clean every id");
    assert!(
        removed
            .iter()
            .all(|name| !name.starts_with("sj95-") && !name.starts_with("sj96-")),
        "{removed:?}"
    );
    assert_eq!(run_namespaces(95).len(), 5);
    assert_eq!(run_namespaces(96).len(), 7);

    a.partition(&[vec![1], vec![2, 3]]).expect("partition a");
    assert!(!tcp_reaches(&a, 1, 2), "a is partitioned");
    assert!(
        tcp_reaches(&b, 1, 2) && tcp_reaches(&b, CLIENT, 5),
        "b is not"
    );
    // The runs are separate networks: a's client has no route to b's nodes at all.
    let b_node: SocketAddr = (b.node_addr(1), 9).into();
    let crossed = in_namespace(&a, CLIENT, || {
        TcpStream::connect_timeout(&b_node, Duration::from_millis(REACH_TIMEOUT_MS))
    });
    assert!(crossed.is_err(), "a's client reached b's node 1");
    a.destroy().expect("destroy a");
    assert!(tcp_reaches(&b, 2, 1), "b outlives a");
}

#[test]
fn create_and_clean_leftovers_remove_what_a_killed_run_left() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let _guards = (LeftoverGuard(97), LeftoverGuard(98));
    // What a killed run of 7 nodes leaves: namespaces without a lock holder, a node still running.
    for namespace in ["sj97-n1", "sj97-n7", "sj98-br"] {
        let status = std::process::Command::new("ip")
            .args(["netns", "add", namespace])
            .status()
            .expect("ip netns add");
        if !status.success() {
            eprintln!("skipped: cannot create network namespaces");
            return;
        }
    }
    let mut orphan = std::process::Command::new("ip")
        .args(["netns", "exec", "sj97-n7", "sleep", "30"])
        .spawn()
        .expect("spawn");

    let net = Net::create(97, 3).expect("create over the leftovers");
    assert_eq!(
        run_namespaces(97),
        vec!["sj97-br", "sj97-c", "sj97-n1", "sj97-n2", "sj97-n3"]
    );
    let status = orphan.wait().expect("wait");
    assert!(!status.success(), "the leftover node was killed: {status}");
    assert!(
        tcp_reaches(&net, CLIENT, 1),
        "the new run's node 1 is its own"
    );

    // A sweep of every id takes run 98's leftover and leaves the live run 97 alone.
    clean_leftovers(None).expect("clean every id");
    assert_eq!(run_namespaces(98), Vec::<String>::new());
    assert_eq!(run_namespaces(97).len(), 5);
}

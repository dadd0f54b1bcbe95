//! The test network: one Linux network namespace per node and one for the client, joined by veth
//! pairs to a bridge that lives in a namespace of its own, with partitions made of nftables rules
//! inside the namespaces.
//!
//! A run owns everything named `sj<id>-*`, where `id` is a run number in `0..=RUN_ID_MAX` that the
//! caller picks, so that several runs on one machine (parallel CI jobs) never share a name or an
//! address:
//!
//! | what | name | address |
//! |---|---|---|
//! | bridge namespace | `sj<id>-br` (holds `br0` and the bridge-side veth ends `v-c`, `v-n<i>`) | none |
//! | client namespace (endpoint 0) | `sj<id>-c`, link `eth0` | `10.<100+id>.0.250/24` |
//! | node `i` namespace (endpoint `i`, `1..=N`) | `sj<id>-n<i>`, link `eth0` | `10.<100+id>.0.<i>/24` |
//!
//! Nothing is created in the root namespace: each veth pair is created inside the bridge namespace
//! with its peer put straight into the endpoint's namespace, so the host's links, addresses, routes
//! and firewall are never touched, and deleting the namespaces deletes everything (a veth pair
//! dies with either end; a namespace's nftables tables die with it).
//!
//! Partitions are *cuts*: a cut `(from, to)` drops every IPv4 packet from `from`'s address in
//! `to`'s input chain (table `inet sluice_jepsen`). Dropping at the receiver rather than in the
//! sender's output chain keeps the loss silent, as a real network's is: a packet dropped in an
//! output hook makes the sender's `sendmsg` fail with `EPERM`, which no real partition does. A TCP
//! connection needs both directions, so a one-way cut breaks TCP both ways, while datagrams still
//! flow the other way. IPv6 is switched off in every namespace so that no link-local path can go
//! around a cut; ARP is not filtered, as a switch that loses IP packets still answers ARP.
//!
//! A run is claimed with an exclusive `flock` on `/run/sluice-jepsen/sj<id>.lock`, held as long as
//! the [`Net`] lives: a second live run with the same id is refused instead of having its
//! namespaces deleted, and the kernel drops the lock of a killed run, which is how
//! [`clean_leftovers`]`(None)` tells leftovers from live runs.
//!
//! It needs root and two programs: `ip` (Debian package `iproute2`) and `nft` (`nftables`).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The largest run id: node addresses are `10.<100+id>.0.<i>`, and the second octet must stay a
/// byte.
pub const RUN_ID_MAX: u8 = 99;
/// The most nodes one run may have (Jepsen clusters are 3 to 9 nodes).
pub const NODES_MAX: usize = 9;
/// The client's endpoint index: wherever the API takes an endpoint, `0` is the client and
/// `1..=N` are the nodes.
pub const CLIENT: usize = 0;

/// The last octet of the client's address, far above every node's.
const CLIENT_HOST: u8 = 250;
/// Where `ip netns` keeps the bind mounts that name namespaces.
const NETNS_DIR: &str = "/run/netns";
/// Where runs keep their lock files (on tmpfs, so a reboot clears them with the namespaces).
const LOCK_DIR: &str = "/run/sluice-jepsen";
/// The nftables table each endpoint namespace holds its cuts in.
const NFT_TABLE: &str = "sluice_jepsen";
/// How long one `ip` or `nft` command may take before it is killed and reported as hung.
const COMMAND_TIMEOUT_MS: u64 = 10_000;
/// How often a running command is polled for its exit.
const COMMAND_POLL_MS: u64 = 2;

const _: () = assert!(100 + RUN_ID_MAX as usize <= u8::MAX as usize);
const _: () = assert!(NODES_MAX < CLIENT_HOST as usize);
const _: () = assert!(COMMAND_POLL_MS < COMMAND_TIMEOUT_MS);

/// One run's network: created by [`Net::create`], removed by [`Net::destroy`] or on drop.
///
/// Endpoints are numbered [`CLIENT`] (`0`) and the nodes `1..=nodes`. Every method that changes
/// cuts holds one lock while it applies them, so the recorded cuts always match the rules in the
/// kernel, also when a nemesis thread and a Ctrl-C handler share the `Net` through an `Arc`.
pub struct Net {
    id: u8,
    nodes: usize,
    /// `drops[to]` holds every endpoint whose packets `to`'s input chain drops, as last applied
    /// successfully; `drops.len() == nodes + 1`.
    drops: Mutex<Vec<BTreeSet<usize>>>,
    /// Set once the namespaces are gone, so that drop does not remove them a second time.
    destroyed: AtomicBool,
    /// The run's lock file with the exclusive `flock` taken (closing it releases the lock).
    _lock: File,
}

impl Net {
    /// Creates run `id`'s network with `nodes` nodes, after removing whatever a killed run with
    /// this id left behind. Fails with `ResourceBusy` if a live process holds the id.
    pub fn create(id: u8, nodes: usize) -> io::Result<Net> {
        check_run_id(id)?;
        if !(1..=NODES_MAX).contains(&nodes) {
            return Err(invalid(format!(
                "a run has 1..={NODES_MAX} nodes, not {nodes}"
            )));
        }
        let Some(lock) = try_lock_run(id)? else {
            return Err(io::Error::new(
                ErrorKind::ResourceBusy,
                format!(
                    "run id {id} is held by another live process ({})",
                    lock_path(id).display()
                ),
            ));
        };
        remove_namespaces(&run_namespaces(id)?)?;
        let net = Net {
            id,
            nodes,
            drops: Mutex::new(vec![BTreeSet::new(); nodes + 1]),
            destroyed: AtomicBool::new(false),
            _lock: lock,
        };
        if let Err(error) = net.build() {
            // The error that matters is the build's; a failed removal is reported by drop.
            let _ = net.destroy();
            return Err(error);
        }
        assert_eq!(
            run_namespaces(id)?.len(),
            nodes + 2,
            "run {id}: bridge, client and nodes"
        );
        Ok(net)
    }

    /// Creates a network with the first id in `ids` that no live process holds, so that parallel
    /// runs need not agree on ids beforehand.
    pub fn create_free(ids: std::ops::RangeInclusive<u8>, nodes: usize) -> io::Result<Net> {
        let (first, last) = (*ids.start(), *ids.end());
        for id in ids {
            match Net::create(id, nodes) {
                Err(error) if error.kind() == ErrorKind::ResourceBusy => continue,
                result => return result,
            }
        }
        Err(io::Error::new(
            ErrorKind::ResourceBusy,
            format!("every run id in {first}..={last} is held"),
        ))
    }

    pub fn id(&self) -> u8 {
        self.id
    }

    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Node `node`'s address (`1..=nodes`).
    pub fn node_addr(&self, node: usize) -> Ipv4Addr {
        assert!(
            (1..=self.nodes).contains(&node),
            "node {node} of 1..={}",
            self.nodes
        );
        self.addr(node)
    }

    pub fn client_addr(&self) -> Ipv4Addr {
        self.addr(CLIENT)
    }

    /// Endpoint `endpoint`'s address ([`CLIENT`] or a node).
    pub fn addr(&self, endpoint: usize) -> Ipv4Addr {
        self.check_endpoint(endpoint);
        let host = if endpoint == CLIENT {
            CLIENT_HOST
        } else {
            endpoint as u8
        };
        Ipv4Addr::new(10, 100 + self.id, 0, host)
    }

    /// The name of endpoint `endpoint`'s namespace, for `ip netns exec` by hand.
    pub fn namespace(&self, endpoint: usize) -> String {
        self.check_endpoint(endpoint);
        endpoint_namespace(self.id, endpoint)
    }

    /// Moves the calling thread into the client's namespace. Call it before spawning the
    /// workload's threads: threads inherit their creator's namespace, sockets stay in the
    /// namespace they were created in, and commands spawned from this thread afterwards start in
    /// the client's namespace too (every helper here names its namespace with `ip -n` or
    /// `ip netns exec`, so they are unaffected). There is no way back; destroying the `Net` leaves
    /// the thread in an emptied namespace with only `lo`.
    pub fn enter_client(&self) -> io::Result<()> {
        self.enter(CLIENT)
    }

    /// Moves the calling thread into node `node`'s namespace (for tests and probes).
    pub fn enter_node(&self, node: usize) -> io::Result<()> {
        assert!(
            (1..=self.nodes).contains(&node),
            "node {node} of 1..={}",
            self.nodes
        );
        self.enter(node)
    }

    /// Moves the calling thread into endpoint `endpoint`'s namespace.
    pub fn enter(&self, endpoint: usize) -> io::Result<()> {
        enter_namespace(&self.namespace(endpoint))
    }

    /// A command that runs `program args...` in endpoint `endpoint`'s namespace, through
    /// `ip netns exec`. That execs the program in place (after `setns` and a private mount
    /// namespace with the namespace's `/sys`), so the child's pid is the program's pid and the
    /// harness may kill a node by `Child::id()` (`tests/net.rs` checks this).
    pub fn exec_command<I, S>(
        &self,
        endpoint: usize,
        program: impl AsRef<OsStr>,
        args: I,
    ) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace(endpoint)])
            .arg(program)
            .args(args);
        command
    }

    /// Drops every packet from `from` to `to` (one way), in addition to the cuts in place.
    pub fn cut(&self, from: usize, to: usize) -> io::Result<()> {
        self.change(|cuts| {
            cuts.insert((from, to));
        })
    }

    /// Replaces every cut with `cuts`. One-way cuts, bridges (a node that sees both sides) and
    /// cuts between the client and nodes are all sets of pairs.
    pub fn set_cuts(&self, cuts: &[(usize, usize)]) -> io::Result<()> {
        self.change(|current| *current = cuts.iter().copied().collect())
    }

    /// Replaces every cut with a symmetric partition: every pair of endpoints in different
    /// components is cut both ways. Every node must be in exactly one component. The client is
    /// cut only if a component names it: left out, it still reaches every node, as a Kafka client
    /// that knows every broker does, so `[[1], [2, 3]]` isolates node 1 from the other nodes and
    /// `[[1], [0, 2, 3]]` isolates it from the client too.
    pub fn partition(&self, components: &[Vec<usize>]) -> io::Result<()> {
        let cuts = partition_cuts(self.nodes, components)?;
        self.set_cuts(&cuts)
    }

    /// Removes every cut.
    pub fn heal(&self) -> io::Result<()> {
        self.set_cuts(&[])
    }

    /// The cuts in place, `(from, to)` in order, for the report.
    pub fn cuts(&self) -> Vec<(usize, usize)> {
        let drops = self.drops.lock().unwrap_or_else(PoisonError::into_inner);
        cuts_of(&drops).into_iter().collect()
    }

    /// Removes the run's namespaces, after killing every process still inside them (except this
    /// one). Safe to call more than once and from a Ctrl-C handler while other threads use the
    /// `Net`: their commands then fail, naming the missing namespace.
    pub fn destroy(&self) -> io::Result<()> {
        remove_namespaces(&run_namespaces(self.id)?)?;
        self.destroyed.store(true, Ordering::SeqCst);
        assert!(
            run_namespaces(self.id)?.is_empty(),
            "run {}: namespaces left after destroy",
            self.id
        );
        Ok(())
    }

    fn build(&self) -> io::Result<()> {
        let bridge = bridge_namespace(self.id);
        let endpoints: Vec<String> = (0..=self.nodes)
            .map(|e| endpoint_namespace(self.id, e))
            .collect();
        {
            // Serialized across processes: the first `ip netns add` after boot makes /run/netns
            // a shared bind mount, and two doing it at once stack two mounts, hiding namespaces
            // created under the lower one.
            let _guard = lock_file(&Path::new(LOCK_DIR).join("netns-add.lock"), true)?;
            for namespace in std::iter::once(&bridge).chain(&endpoints) {
                run("ip", &["netns", "add", namespace], None)?;
            }
        }
        for namespace in std::iter::once(&bridge).chain(&endpoints) {
            // Before any link exists, so that new links inherit it from `default`.
            for key in [
                "net/ipv6/conf/all/disable_ipv6",
                "net/ipv6/conf/default/disable_ipv6",
            ] {
                write_sysctl(namespace, key, "1")?;
            }
        }
        // With br_netfilter loaded, bridged frames would also pass the bridge namespace's IP
        // hooks. Nothing filters there, but switching it off keeps the bridge a plain switch, so
        // the only filtering is the cuts in the endpoint namespaces.
        for key in [
            "net/bridge/bridge-nf-call-iptables",
            "net/bridge/bridge-nf-call-ip6tables",
        ] {
            write_sysctl(&bridge, key, "0")?;
        }
        ip_in(&bridge, &["link", "add", "br0", "type", "bridge"])?;
        ip_in(&bridge, &["link", "set", "br0", "up"])?;
        for (endpoint, namespace) in endpoints.iter().enumerate() {
            let port = format!("v-{}", endpoint_suffix(endpoint));
            let address = format!("{}/24", self.addr(endpoint));
            let veth = [
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            ];
            ip_in(&bridge, &[&veth[..], &[namespace]].concat())?;
            ip_in(&bridge, &["link", "set", &port, "master", "br0", "up"])?;
            ip_in(namespace, &["addr", "add", &address, "dev", "eth0"])?;
            ip_in(namespace, &["link", "set", "eth0", "up"])?;
            ip_in(namespace, &["link", "set", "lo", "up"])?;
            // The empty table now, so that a missing `nft` shows at creation, not at the first
            // partition in the middle of a test.
            self.apply_drops(endpoint, &BTreeSet::new())?;
        }
        Ok(())
    }

    /// Applies `edit` to the set of cuts and brings every namespace whose rules change up to
    /// date, one `nft` transaction per namespace.
    fn change(&self, edit: impl FnOnce(&mut BTreeSet<(usize, usize)>)) -> io::Result<()> {
        let mut drops = self.drops.lock().unwrap_or_else(PoisonError::into_inner);
        let mut cuts = cuts_of(&drops);
        edit(&mut cuts);
        for &(from, to) in &cuts {
            if from > self.nodes || to > self.nodes || from == to {
                return Err(invalid(format!(
                    "cut {from}->{to} in a run of {} nodes",
                    self.nodes
                )));
            }
        }
        let mut target = vec![BTreeSet::new(); self.nodes + 1];
        for &(from, to) in &cuts {
            target[to].insert(from);
        }
        for to in 0..=self.nodes {
            if drops[to] != target[to] {
                self.apply_drops(to, &target[to])?;
                drops[to] = target[to].clone();
            }
        }
        assert_eq!(cuts_of(&drops), cuts);
        Ok(())
    }

    /// Replaces endpoint `to`'s table with one whose input chain drops every packet from
    /// `sources`. The table is deleted and defined again in the same transaction, which works
    /// whether or not it existed (`add` first makes the `delete` always valid).
    fn apply_drops(&self, to: usize, sources: &BTreeSet<usize>) -> io::Result<()> {
        assert!(!sources.contains(&to), "endpoint {to} cannot cut itself");
        let mut rules = String::new();
        if !sources.is_empty() {
            let addresses: Vec<String> = sources
                .iter()
                .map(|&from| self.addr(from).to_string())
                .collect();
            rules = format!("\t\tip saddr {{ {} }} drop\n", addresses.join(", "));
        }
        let script = format!(
            "add table inet {NFT_TABLE}\n\
             delete table inet {NFT_TABLE}\n\
             table inet {NFT_TABLE} {{\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             {rules}\
             \t}}\n\
             }}\n"
        );
        run(
            "ip",
            &["netns", "exec", &self.namespace(to), "nft", "-f", "-"],
            Some(&script),
        )?;
        Ok(())
    }

    fn check_endpoint(&self, endpoint: usize) {
        assert!(
            endpoint <= self.nodes,
            "endpoint {endpoint} of 0..={} (0 is the client)",
            self.nodes
        );
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if !self.destroyed.load(Ordering::SeqCst) {
            if let Err(error) = self.destroy() {
                eprintln!(
                    "sluice-jepsen: run {}: cannot remove its namespaces: {error}",
                    self.id
                );
            }
        }
    }
}

/// Removes the namespaces of killed runs, after killing every process still inside them: those
/// of run `id` whoever holds it (the caller says the id is theirs), or with `None` those of every
/// run whose lock no live process holds, so it is safe while other runs are alive. Returns the
/// removed namespaces' names.
pub fn clean_leftovers(id: Option<u8>) -> io::Result<Vec<String>> {
    if let Some(id) = id {
        check_run_id(id)?;
        let namespaces = run_namespaces(id)?;
        remove_namespaces(&namespaces)?;
        return Ok(namespaces);
    }
    let mut removed = Vec::new();
    let ids: BTreeSet<u8> = list_namespaces()?
        .iter()
        .filter_map(|name| parse_run_id(name))
        .collect();
    for id in ids {
        if let Some(_lock) = try_lock_run(id)? {
            let namespaces = run_namespaces(id)?;
            remove_namespaces(&namespaces)?;
            removed.extend(namespaces);
        }
    }
    Ok(removed)
}

/// The cuts of a symmetric partition of endpoints `0..=nodes` into `components`.
fn partition_cuts(nodes: usize, components: &[Vec<usize>]) -> io::Result<Vec<(usize, usize)>> {
    let mut seen = BTreeSet::new();
    for &endpoint in components.iter().flatten() {
        if endpoint > nodes || !seen.insert(endpoint) {
            return Err(invalid(format!(
                "partition {components:?}: endpoint {endpoint} out of range or repeated"
            )));
        }
    }
    if let Some(missing) = (1..=nodes).find(|node| !seen.contains(node)) {
        return Err(invalid(format!(
            "partition {components:?} leaves out node {missing}"
        )));
    }
    let mut cuts = Vec::new();
    for (i, left) in components.iter().enumerate() {
        for (j, right) in components.iter().enumerate() {
            if i != j {
                cuts.extend(
                    left.iter()
                        .flat_map(|&from| right.iter().map(move |&to| (from, to))),
                );
            }
        }
    }
    Ok(cuts)
}

fn cuts_of(drops: &[BTreeSet<usize>]) -> BTreeSet<(usize, usize)> {
    let cuts = drops
        .iter()
        .enumerate()
        .flat_map(|(to, sources)| sources.iter().map(move |&from| (from, to)));
    cuts.collect()
}

fn check_run_id(id: u8) -> io::Result<()> {
    if id > RUN_ID_MAX {
        return Err(invalid(format!("run id {id} is above {RUN_ID_MAX}")));
    }
    Ok(())
}

fn invalid(message: String) -> io::Error {
    io::Error::new(ErrorKind::InvalidInput, message)
}

fn run_prefix(id: u8) -> String {
    format!("sj{id}-")
}

fn bridge_namespace(id: u8) -> String {
    format!("{}br", run_prefix(id))
}

fn endpoint_suffix(endpoint: usize) -> String {
    if endpoint == CLIENT {
        "c".to_string()
    } else {
        format!("n{endpoint}")
    }
}

fn endpoint_namespace(id: u8, endpoint: usize) -> String {
    format!("{}{}", run_prefix(id), endpoint_suffix(endpoint))
}

/// The run id of a namespace named `sj<id>-*`, if it is one of ours.
fn parse_run_id(name: &str) -> Option<u8> {
    let (digits, _) = name.strip_prefix("sj")?.split_once('-')?;
    if digits.is_empty() || digits.len() > 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id = digits.parse().ok()?;
    (id <= RUN_ID_MAX && run_prefix(id) == format!("sj{digits}-")).then_some(id)
}

/// Every named namespace, sorted.
fn list_namespaces() -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(io::Error::new(
                error.kind(),
                format!("{NETNS_DIR}: {error}"),
            ))
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        names.extend(entry?.file_name().to_str().map(str::to_string));
    }
    names.sort();
    Ok(names)
}

/// Run `id`'s namespaces that exist now.
fn run_namespaces(id: u8) -> io::Result<Vec<String>> {
    let names = list_namespaces()?;
    Ok(names
        .into_iter()
        .filter(|name| parse_run_id(name) == Some(id))
        .collect())
}

/// Kills the processes inside each namespace and deletes it; a namespace another caller removed
/// meanwhile counts as removed. Tries every namespace before reporting the first failure.
fn remove_namespaces(namespaces: &[String]) -> io::Result<()> {
    let mut first_error = None;
    for namespace in namespaces {
        // A process left inside would keep the namespace, its links and its files (a node's data
        // directory lock) alive after the name is gone.
        let result = kill_processes_in(namespace)
            .and_then(|()| run("ip", &["netns", "del", namespace], None));
        if let Err(error) = result {
            if Path::new(NETNS_DIR).join(namespace).exists() {
                first_error.get_or_insert(error);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn kill_processes_in(namespace: &str) -> io::Result<()> {
    let own_pid = std::process::id();
    let pids = run("ip", &["netns", "pids", namespace], None)?;
    for pid in pids
        .split_whitespace()
        .filter_map(|pid| pid.parse::<u32>().ok())
    {
        // This process may be inside (a thread of it entered the client namespace).
        if pid != own_pid {
            // SAFETY: kill has no memory effects; a pid that exited meanwhile gives ESRCH.
            let _ = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
    Ok(())
}

/// Moves the calling thread into the named namespace.
fn enter_namespace(namespace: &str) -> io::Result<()> {
    let path = Path::new(NETNS_DIR).join(namespace);
    let file = File::open(&path)
        .map_err(|error| io::Error::new(error.kind(), format!("{}: {error}", path.display())))?;
    // SAFETY: the descriptor is open for the duration of the call; setns only changes this
    // thread's network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let error = io::Error::last_os_error();
        return Err(io::Error::new(
            error.kind(),
            format!("setns {namespace}: {error}"),
        ));
    }
    Ok(())
}

/// Writes `/proc/sys/<key>` inside the namespace, from a thread that enters it (`/proc/sys/net`
/// shows the namespace of the thread that reads it), so no `sysctl` binary is needed. A key the
/// kernel lacks (no IPv6, no br_netfilter) is skipped: then it has nothing to switch.
fn write_sysctl(namespace: &str, key: &str, value: &str) -> io::Result<()> {
    let path = Path::new("/proc/sys").join(key);
    let result = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            enter_namespace(namespace)?;
            match std::fs::write(&path, value) {
                Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
                result => result,
            }
        });
        writer
            .join()
            .expect("the sysctl writer thread does not panic")
    });
    result.map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("{namespace}: {} = {value}: {error}", path.display()),
        )
    })
}

/// Runs `ip -n <namespace> args...`.
fn ip_in(namespace: &str, args: &[&str]) -> io::Result<String> {
    run("ip", &[&["-n", namespace][..], args].concat(), None)
}

/// Runs a command with an optional stdin, killing it after `COMMAND_TIMEOUT_MS`. Returns its
/// stdout; a failure names the command line and carries its stderr. Outputs must fit a pipe
/// buffer (64 KiB), as every `ip` and `nft` output here does, since they are read after exit.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> io::Result<String> {
    let line = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("{line}: cannot start {program}: {error}"),
            )
        })?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes())?;
    }
    let deadline = Instant::now() + Duration::from_millis(COMMAND_TIMEOUT_MS);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                format!("{line}: no exit after {COMMAND_TIMEOUT_MS} ms"),
            ));
        }
        std::thread::sleep(Duration::from_millis(COMMAND_POLL_MS));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child
        .stdout
        .take()
        .expect("stdout is piped")
        .read_to_string(&mut stdout)?;
    child
        .stderr
        .take()
        .expect("stderr is piped")
        .read_to_string(&mut stderr)?;
    if !status.success() {
        let reason = if stderr.trim().is_empty() {
            status.to_string()
        } else {
            stderr.trim().to_string()
        };
        return Err(io::Error::other(format!("{line}: {reason}")));
    }
    Ok(stdout)
}

fn lock_path(id: u8) -> PathBuf {
    Path::new(LOCK_DIR).join(format!("sj{id}.lock"))
}

/// Takes run `id`'s lock without waiting: `None` if a live process holds it.
fn try_lock_run(id: u8) -> io::Result<Option<File>> {
    match lock_file(&lock_path(id), false) {
        Ok(file) => Ok(Some(file)),
        Err(error) if error.kind() == ErrorKind::WouldBlock => Ok(None),
        Err(error) => Err(error),
    }
}

/// Opens (creating) the lock file and takes an exclusive `flock`, waiting for it or not. The
/// files stay: deleting a lock file races with a process that just opened it.
fn lock_file(path: &Path, wait: bool) -> io::Result<File> {
    std::fs::create_dir_all(LOCK_DIR)
        .map_err(|error| io::Error::new(error.kind(), format!("{LOCK_DIR}: {error}")))?;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path);
    let file =
        file.map_err(|error| io::Error::new(error.kind(), format!("{}: {error}", path.display())))?;
    let operation = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    // SAFETY: flock on a descriptor this function owns; the lock is released when it is closed.
    if unsafe { libc::flock(file.as_raw_fd(), operation) } != 0 {
        let error = io::Error::last_os_error();
        return Err(io::Error::new(
            error.kind(),
            format!("flock {}: {error}", path.display()),
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_parse_only_from_our_names() {
        assert_eq!(parse_run_id("sj3-n1"), Some(3));
        assert_eq!(parse_run_id("sj42-br"), Some(42));
        assert_eq!(parse_run_id("sj03-n1"), None, "not a name a run makes");
        assert_eq!(parse_run_id("sj123-c"), None);
        assert_eq!(parse_run_id("sjx-c"), None);
        assert_eq!(parse_run_id("sj-c"), None);
        assert_eq!(parse_run_id("other"), None);
    }

    #[test]
    fn a_partition_cuts_every_pair_across_components_both_ways() {
        let cuts: BTreeSet<_> = partition_cuts(3, &[vec![1], vec![2, 3]])
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(cuts, BTreeSet::from([(1, 2), (1, 3), (2, 1), (3, 1)]));
        let with_client: BTreeSet<_> = partition_cuts(3, &[vec![1], vec![0, 2, 3]])
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(with_client.len(), 6);
        assert!(with_client.contains(&(0, 1)) && with_client.contains(&(1, 0)));
        assert!(
            partition_cuts(3, &[vec![1], vec![2]]).is_err(),
            "node 3 left out"
        );
        assert!(
            partition_cuts(3, &[vec![1, 2], vec![2, 3]]).is_err(),
            "node 2 twice"
        );
        assert!(partition_cuts(3, &[vec![1, 2, 3, 4]]).is_err(), "no node 4");
    }
}

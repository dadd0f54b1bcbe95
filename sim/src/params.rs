//! Everything a run does, derived from its seed (and the scenario, which narrows the choice).

use sluice_core::rng::Rng;

/// Named selections of faults. `default` draws a random mix per seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// A random subset of every fault kind, chosen by the seed.
    Default,
    /// No faults: the workload alone (a baseline; must never fail).
    NoFaults,
    /// Crashes and restarts only (clean and torn).
    Crash,
    /// Storage faults only: torn writes, bit flips, I/O errors, slow disk.
    Disk,
    /// Network and process faults only: clogged links, latency, pauses.
    Network,
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [
        Scenario::Default,
        Scenario::NoFaults,
        Scenario::Crash,
        Scenario::Disk,
        Scenario::Network,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Default => "default",
            Scenario::NoFaults => "no-faults",
            Scenario::Crash => "crash",
            Scenario::Disk => "disk",
            Scenario::Network => "network",
        }
    }

    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Which fault kinds the nemesis may use in this run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultMix {
    /// Power loss of the broker node, then restart: unsynced writes are lost.
    pub crash: bool,
    /// A crash that tears the last unsynced write (a prefix survives, possibly with garbage).
    pub torn_write: bool,
    /// A flipped bit in synced segment data (must be caught by CRC and never served).
    pub bit_flip: bool,
    /// A failing write or fsync (the broker must not acknowledge, and must recover).
    pub io_error: bool,
    /// Every fsync takes tens of milliseconds for a while.
    pub slow_disk: bool,
    /// A client's links to the broker are clogged for a while (bytes held, not lost).
    pub clog: bool,
    /// Network latency goes up for a while.
    pub latency: bool,
    /// The broker process is paused (SIGSTOP-like) for a while.
    pub pause: bool,
}

impl FaultMix {
    pub fn names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        for (on, name) in [
            (self.crash, "crash"),
            (self.torn_write, "torn-write"),
            (self.bit_flip, "bit-flip"),
            (self.io_error, "io-error"),
            (self.slow_disk, "slow-disk"),
            (self.clog, "clog"),
            (self.latency, "latency"),
            (self.pause, "pause"),
        ] {
            if on {
                names.push(name);
            }
        }
        names
    }

    pub fn any(&self) -> bool {
        !self.names().is_empty()
    }
}

/// The run's parameters. Printed at the start of a run and in its trace.
#[derive(Clone, Debug)]
pub struct Params {
    pub seed: u64,
    pub scenario: Scenario,
    pub partitions: i32,
    pub clients: u32,
    /// Length of the phase with faults, in simulated milliseconds.
    pub fault_phase_ms: u64,
    /// Pause between a client's operations.
    pub think_ms: (u64, u64),
    /// Share of sends with acks=all (the rest use acks=1).
    pub acks_all_per_mille: u32,
    /// Share of operations that are sends (the rest are polls and reassignments).
    pub send_per_mille: u32,
    /// Chance that a client process is an idempotent producer that retries (the rest send once).
    pub idempotent_per_mille: u32,
    pub faults: FaultMix,
    /// Mean time between faults.
    pub fault_interval_ms: (u64, u64),
    pub segment_bytes: u64,
    pub index_interval_bytes: u32,
    pub flush_interval_ms: u64,
    /// How long an fsync takes on this run's disk (the build machine's takes about 3 ms).
    pub sync_latency_ms: u64,
}

impl Params {
    pub fn from_seed(seed: u64, scenario: Scenario) -> Params {
        let mut rng = Rng::new(seed ^ 0x5eed_5eed_5eed_5eed);
        let mut mix = || FaultMix {
            crash: rng.chance(700),
            torn_write: rng.chance(500),
            bit_flip: rng.chance(300),
            io_error: rng.chance(400),
            slow_disk: rng.chance(400),
            clog: rng.chance(500),
            latency: rng.chance(400),
            pause: rng.chance(400),
        };
        let drawn = mix();
        let faults = match scenario {
            Scenario::Default => drawn,
            Scenario::NoFaults => FaultMix::default(),
            Scenario::Crash => FaultMix {
                crash: true,
                torn_write: drawn.torn_write,
                ..FaultMix::default()
            },
            Scenario::Disk => FaultMix {
                torn_write: true,
                bit_flip: drawn.bit_flip,
                io_error: true,
                slow_disk: drawn.slow_disk,
                ..FaultMix::default()
            },
            Scenario::Network => FaultMix {
                clog: true,
                latency: true,
                pause: drawn.pause,
                ..FaultMix::default()
            },
        };
        let think_lo = rng.between(1, 10);
        let interval_lo = rng.between(300, 1500);
        Params {
            seed,
            scenario,
            partitions: rng.between(1, 3) as i32,
            clients: rng.between(2, 4) as u32,
            fault_phase_ms: rng.between(10_000, 20_000),
            think_ms: (think_lo, think_lo + rng.between(5, 40)),
            acks_all_per_mille: rng.between(400, 900) as u32,
            send_per_mille: rng.between(400, 700) as u32,
            faults,
            fault_interval_ms: (interval_lo, interval_lo + rng.between(500, 3000)),
            segment_bytes: rng.between(2 * 1024, 64 * 1024),
            index_interval_bytes: rng.between(128, 4096) as u32,
            flush_interval_ms: if rng.chance(300) {
                rng.between(1, 20)
            } else {
                0
            },
            sync_latency_ms: rng.between(1, 8),
            // Drawn last, so adding it left earlier seeds' other parameters as they were.
            idempotent_per_mille: rng.between(0, 1000) as u32,
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "seed={} scenario={} partitions={} clients={} fault_phase_ms={} faults=[{}] segment_bytes={} flush_interval_ms={} sync_latency_ms={}",
            self.seed,
            self.scenario.name(),
            self.partitions,
            self.clients,
            self.fault_phase_ms,
            self.faults.names().join(","),
            self.segment_bytes,
            self.flush_interval_ms,
            self.sync_latency_ms,
        )
    }
}

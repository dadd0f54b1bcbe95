//! Time as core sees it: handed in by the host, never read from a clock.
//!
//! Two clocks, each for its own job:
//! - [`Instant`], monotonic: every timeout and deadline (Raft ticks, sessions, rebalances,
//!   long polls, request timeouts, group commit spacing). A step of the wall clock never moves
//!   one.
//! - wall-clock milliseconds since the Unix epoch: only what Kafka defines in wall time —
//!   record timestamps, segment ages (`segment.ms`), retention (`retention.ms`), tombstone ages
//!   (`delete.retention.ms`), committed offsets' timestamps and their retention.
//!
//! [`Now`] carries both, read once by the host per input.

use std::ops::{Add, Sub};
use std::time::Duration;

/// A point on the host's monotonic clock: the time since an origin the host chose (its start,
/// or the simulation's). Only differences mean anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(Duration);

impl Instant {
    /// The host's origin.
    pub const ZERO: Instant = Instant(Duration::ZERO);

    pub const fn from_duration(since_origin: Duration) -> Instant {
        Instant(since_origin)
    }

    pub const fn from_millis(ms: u64) -> Instant {
        Instant(Duration::from_millis(ms))
    }

    /// The time since the origin.
    pub const fn since_origin(self) -> Duration {
        self.0
    }

    /// Whole milliseconds since the origin (the unit of Kafka's timeouts).
    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }

    /// How long after `earlier` this is (zero if it is not later).
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// `self + by`, or `None` past the end of time.
    pub fn checked_add(self, by: Duration) -> Option<Instant> {
        self.0.checked_add(by).map(Instant)
    }

    /// `self + ms` milliseconds, saturating at the end of time.
    pub fn plus_millis(self, ms: u64) -> Instant {
        self.checked_add(Duration::from_millis(ms))
            .unwrap_or(Instant(Duration::MAX))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;

    /// Saturates at the end of time rather than overflowing: a timeout from a client may be
    /// anything.
    fn add(self, by: Duration) -> Instant {
        self.checked_add(by).unwrap_or(Instant(Duration::MAX))
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;

    /// Saturating: zero when `earlier` is later.
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_since(earlier)
    }
}

/// The time of one input: the monotonic clock and the wall clock, read together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Now {
    /// For timeouts and deadlines.
    pub instant: Instant,
    /// Milliseconds since the Unix epoch, for what Kafka defines in wall time.
    pub wall_ms: u64,
}

impl Now {
    pub const fn new(instant: Instant, wall_ms: u64) -> Now {
        Now { instant, wall_ms }
    }

    /// The monotonic time in whole milliseconds (what the state machines that count in
    /// milliseconds take for their deadlines).
    pub fn mono_ms(self) -> u64 {
        self.instant.as_millis()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_add_and_subtract_without_overflow() {
        let t = Instant::from_millis(1_000);
        assert_eq!((t + Duration::from_millis(500)).as_millis(), 1_500);
        assert_eq!(t - Instant::from_millis(400), Duration::from_millis(600));
        assert_eq!(Instant::from_millis(400) - t, Duration::ZERO);
        let end = Instant::from_duration(Duration::MAX);
        assert_eq!((end + Duration::from_secs(1)).since_origin(), Duration::MAX);
        assert_eq!(end.plus_millis(1), end);
        assert!(Instant::ZERO < t);
        assert_eq!(Now::new(t, 7).mono_ms(), 1_000);
    }
}

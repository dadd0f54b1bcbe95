//! Placeholder until issue [4/5]: Jepsen-style tests of real processes land here.

//! Placeholder until issue [2/5]: the simulator lands here.

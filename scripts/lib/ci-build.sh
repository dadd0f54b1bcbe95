# Shared by scripts/test and scripts/jepsen: the one `ci`-profile build of the workspace's tests.
# Optimised, with debug assertions and overflow checks in Sluice's crates (Cargo.toml), so every
# debug_assert! and check_invariants() runs. The planted bugs are compiled in (each dormant
# unless a test, or SLUICE_PLANTED_BUG for the jepsen suite's planted run, sets it), so the one
# build also runs core's planted-bug tests and gives the jepsen harness (target/ci/sluice-jepsen)
# and the planted-capable broker (target/ci/sluice). The simulator is built by scripts/sim (with
# --cfg madsim, its own target dir); it has no tests of its own outside madsim.
CI_TEST_ARGS=(--workspace --exclude sluice-sim --profile ci --features sluice-node/planted-bugs)

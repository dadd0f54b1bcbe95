//! `sluice-sim`: run, replay and check seeded simulations. Use it through `scripts/sim`, which
//! builds it with `RUSTFLAGS="--cfg madsim"`.

#[cfg(madsim)]
fn main() -> std::process::ExitCode {
    sluice_sim::cli::main()
}

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    eprintln!("sluice-sim only runs in a madsim build; use scripts/sim (see docs/simulation.md)");
    std::process::ExitCode::from(64)
}

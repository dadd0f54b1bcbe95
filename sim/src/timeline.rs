//! The simulator's side of the HTML timeline (`sluice_core::timeline`): how its processes are
//! named and how its fault spans become bands.

use sluice_core::timeline::{self, Band, Timeline};

use crate::run::{RunOutcome, Status};

pub fn render(run: &RunOutcome, replay: &str) -> String {
    let bands: Vec<Band> = run
        .spans
        .iter()
        .map(|span| Band {
            kind: span.kind.to_string(),
            start_ms: span.start_ms,
            end_ms: span.end_ms,
            detail: span.detail.clone(),
        })
        .collect();
    let status = match &run.status {
        Status::Ok => "ok".to_string(),
        Status::Correctness(why) | Status::Liveness(why) | Status::Crash(why) => {
            format!("{}: {why}", run.status.name())
        }
    };
    let clients = run.params.clients;
    let label = |process: u32| label(process, clients);
    timeline::render(&Timeline {
        title: &format!("sluice sim seed {}", run.params.seed),
        heading: &format!("seed {} — {status}", run.params.seed),
        summary: &run.params.summary(),
        history: &run.history,
        end_ms: run.simulated_ms,
        bands: &bands,
        offending_ops: &run.offending_ops,
        report: run.report.as_ref(),
        replay,
        label: &label,
    })
}

/// A process's row label. Process ids are numbered by role: clients from 0, then the liveness
/// check and the final read, group members from `MEMBER_PROCESS_BASE`, zombies from
/// `ZOMBIE_PROCESS_BASE`.
fn label(process: u32, clients: u32) -> String {
    match process.checked_sub(clients) {
        _ if process == crate::configs::FINAL_CONFIG_PROCESS => "final configs".to_string(),
        _ if process >= crate::configs::CONFIG_PROCESS_BASE => {
            format!("config {}", process - crate::configs::CONFIG_PROCESS_BASE)
        }
        _ if process >= crate::pipeline::ZOMBIE_PROCESS_BASE => {
            let zombie = process - crate::pipeline::ZOMBIE_PROCESS_BASE;
            format!("zombie {}.{}", zombie / 100, zombie % 100)
        }
        _ if process == crate::groups::FINAL_OFFSETS_PROCESS => "final offsets".to_string(),
        _ if process >= crate::groups::MEMBER_PROCESS_BASE => {
            format!("member {}", process - crate::groups::MEMBER_PROCESS_BASE)
        }
        None => format!("client {process}"),
        Some(0) => "liveness".to_string(),
        Some(_) => "final read".to_string(),
    }
}

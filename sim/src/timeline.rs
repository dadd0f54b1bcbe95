//! An HTML timeline of a run: one row per client process, each operation a bar from invoke to
//! completion (hover for details), faults as shaded bands, offending operations outlined in red,
//! and the anomalies listed below.

use std::collections::BTreeSet;
use std::fmt::Write;

use sluice_core::history::{Acks, ConfigOp, GroupOp, OpKind, Outcome};

use crate::ops::describe;
use crate::run::RunOutcome;

const WIDTH_PX: f64 = 1600.0;
const ROW_PX: f64 = 22.0;
const LEFT_PX: f64 = 90.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn color(kind: &OpKind) -> &'static str {
    match kind {
        OpKind::Send {
            outcome: Outcome::Ok(_),
            acks: Acks::All,
            ..
        } => "#2e7d32",
        OpKind::Send {
            outcome: Outcome::Ok(_),
            ..
        } => "#81c784",
        OpKind::Send {
            outcome: Outcome::Info(_),
            ..
        } => "#f9a825",
        OpKind::Send {
            outcome: Outcome::Fail(_),
            ..
        } => "#c62828",
        OpKind::Poll {
            outcome: Outcome::Ok(_),
            ..
        } => "#1565c0",
        OpKind::Poll { .. } => "#90caf9",
        OpKind::Assign { .. } => "#8e24aa",
        OpKind::FinalRead { .. } => "#424242",
        OpKind::Group(GroupOp::Join {
            outcome: Outcome::Ok(_),
            ..
        }) => "#00897b",
        OpKind::Group(GroupOp::Commit {
            outcome: Outcome::Ok(_),
            ..
        }) => "#6d4c41",
        OpKind::Group(GroupOp::Commit {
            outcome: Outcome::Info(_),
            ..
        }) => "#f9a825",
        OpKind::Group(GroupOp::OffsetFetch {
            outcome: Outcome::Ok(_),
            ..
        }) => "#5c6bc0",
        OpKind::Group(GroupOp::Crash { .. }) => "#000000",
        OpKind::Group(GroupOp::Leave { .. }) => "#9e9e9e",
        OpKind::Group(_) => "#ef9a9a",
        OpKind::Config(
            ConfigOp::Alter {
                outcome: Outcome::Ok(_),
                ..
            }
            | ConfigOp::Replace {
                outcome: Outcome::Ok(_),
                ..
            },
        ) => "#2e7d32",
        OpKind::Config(
            ConfigOp::Alter {
                outcome: Outcome::Info(_),
                ..
            }
            | ConfigOp::Replace {
                outcome: Outcome::Info(_),
                ..
            },
        ) => "#f9a825",
        OpKind::Config(ConfigOp::Alter { .. } | ConfigOp::Replace { .. }) => "#c62828",
        OpKind::Config(_) => "#5c6bc0",
    }
}

pub fn render(run: &RunOutcome, replay: &str) -> String {
    let history = &run.history;
    let end_ms = run
        .simulated_ms
        .max(history.ops.iter().map(|o| o.complete_ms).max().unwrap_or(1))
        .max(1);
    let x = |ms: u64| LEFT_PX + (ms as f64 / end_ms as f64) * (WIDTH_PX - LEFT_PX - 10.0);
    let processes: BTreeSet<u32> = history.ops.iter().map(|o| o.process).collect();
    let rows: Vec<u32> = processes.into_iter().collect();
    let height = (rows.len() as f64 + 2.0) * ROW_PX + 30.0;
    let offending: BTreeSet<usize> = run.offending_ops.iter().copied().collect();

    let mut svg = String::new();
    let _ = write!(svg, "<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH_PX}' height='{height}' font-family='monospace' font-size='11'>");
    for span in &run.spans {
        let (x0, x1) = (x(span.start_ms), x(span.end_ms.max(span.start_ms + 1)));
        let _ = write!(
            svg,
            "<rect x='{x0:.1}' y='0' width='{:.1}' height='{height}' fill='#ff7043' fill-opacity='0.18'><title>{} at {} ms: {}</title></rect>\
             <text x='{x0:.1}' y='{:.1}' fill='#bf360c'>{}</text>",
            (x1 - x0).max(2.0),
            span.kind,
            span.start_ms,
            escape(&span.detail),
            height - 4.0,
            span.kind
        );
    }
    for (row, process) in rows.iter().enumerate() {
        let y = 10.0 + row as f64 * ROW_PX;
        let label = match process.checked_sub(run.params.clients) {
            _ if *process >= crate::pipeline::ZOMBIE_PROCESS_BASE => {
                let zombie = process - crate::pipeline::ZOMBIE_PROCESS_BASE;
                format!("zombie {}.{}", zombie / 100, zombie % 100)
            }
            _ if *process == crate::groups::FINAL_OFFSETS_PROCESS => "final offsets".to_string(),
            _ if *process >= crate::groups::MEMBER_PROCESS_BASE => {
                format!("member {}", process - crate::groups::MEMBER_PROCESS_BASE)
            }
            None => format!("client {process}"),
            Some(0) => "liveness".to_string(),
            Some(_) => "final read".to_string(),
        };
        let _ = write!(svg, "<text x='4' y='{:.1}'>{label}</text>", y + 12.0);
        for op in history.ops.iter().filter(|o| o.process == *process) {
            let (x0, x1) = (x(op.invoke_ms), x(op.complete_ms));
            let bad = offending.contains(&op.index);
            let stroke = if bad {
                " stroke='#d50000' stroke-width='2'"
            } else {
                ""
            };
            let _ = write!(
                svg,
                "<rect x='{x0:.1}' y='{:.1}' width='{:.1}' height='{:.1}' fill='{}'{stroke}><title>#{} {}–{} ms: {}</title></rect>",
                y + if bad { 0.0 } else { 3.0 },
                (x1 - x0).max(1.5),
                if bad { ROW_PX - 4.0 } else { ROW_PX - 10.0 },
                color(&op.kind),
                op.index,
                op.invoke_ms,
                op.complete_ms,
                escape(&describe(&op.kind))
            );
        }
    }
    svg.push_str("</svg>");

    let mut anomalies = String::new();
    if let Some(report) = &run.report {
        for a in &report.anomalies {
            let _ = write!(anomalies, "<li>{}</li>", escape(&a.to_string()));
        }
    }
    let status = match &run.status {
        crate::run::Status::Ok => "ok".to_string(),
        crate::run::Status::Correctness(why)
        | crate::run::Status::Liveness(why)
        | crate::run::Status::Crash(why) => {
            format!("{}: {}", run.status.name(), escape(why))
        }
    };
    format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>sluice sim seed {seed}</title>\
         <style>body{{font-family:sans-serif;margin:16px}} code{{background:#eee;padding:2px 4px}} .legend span{{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px}}</style></head><body>\
         <h2>seed {seed} — {status}</h2><p>{params}</p><p>replay: <code>{replay}</code></p>\
         <p class='legend'><span style='background:#2e7d32'></span>send acks=all ok<span style='background:#81c784'></span>send acks=1 ok\
         <span style='background:#f9a825'></span>send indeterminate<span style='background:#c62828'></span>send failed\
         <span style='background:#1565c0'></span>poll<span style='background:#8e24aa'></span>assign<span style='background:#424242'></span>final read\
         <span style='background:#00897b'></span>group join<span style='background:#6d4c41'></span>commit\
         <span style='background:#5c6bc0'></span>offset fetch<span style='background:#000000'></span>member crash\
         <span style='background:#ff7043;opacity:.4'></span>fault; red outline: offending operation</p>\
         <div style='overflow-x:auto'>{svg}</div><h3>Anomalies</h3><ul>{anomalies}</ul>\
         <p>{report}</p></body></html>",
        seed = run.params.seed,
        params = escape(&run.params.summary()),
        replay = escape(replay),
        report = escape(&run.report.as_ref().map(|r| r.to_string()).unwrap_or_default()),
    )
}

//! An HTML timeline of a run: one row per client process, each operation a bar from invoke to
//! completion (hover for details), faults as shaded bands, offending operations outlined in red,
//! and the anomalies listed below.
//!
//! Pure string building from data the host hands in ([`Timeline`]), so that the simulator and the
//! Jepsen-style harness draw their runs the same way; each keeps only what is its own: how it
//! names its processes and how it turns its faults into [`Band`]s.

use std::collections::BTreeSet;
use std::fmt::Write;

use crate::checker::CheckReport;
use crate::history::{describe, Acks, ConfigOp, GroupOp, History, OpKind, Outcome};

const WIDTH_PX: f64 = 1600.0;
const ROW_PX: f64 = 22.0;
const LEFT_PX: f64 = 90.0;

/// A fault in force from `start_ms` to `end_ms`, drawn as a shaded band across every row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Band {
    /// A short name, printed at the band's foot (e.g. `crash`, `partition`).
    pub kind: String,
    pub start_ms: u64,
    /// An instantaneous fault (`end_ms <= start_ms`) is still drawn, one millisecond wide.
    pub end_ms: u64,
    /// Shown when the band is hovered.
    pub detail: String,
}

/// Everything one page shows. All text is escaped by [`render`]; pass it plain.
pub struct Timeline<'a> {
    /// The page's `<title>`, e.g. `sluice sim seed 3`.
    pub title: &'a str,
    /// The heading: which run and how it ended, e.g. `seed 3 — ok`.
    pub heading: &'a str,
    /// A paragraph under the heading: the run's parameters.
    pub summary: &'a str,
    pub history: &'a History,
    /// The run's length; the chart spans at least to the last completion.
    pub end_ms: u64,
    /// The faults.
    pub bands: &'a [Band],
    /// Indices into `history.ops` to outline in red.
    pub offending_ops: &'a [usize],
    /// The checker's verdict (its anomalies are listed, its counts printed), if it ran.
    pub report: Option<&'a CheckReport>,
    /// The command that reproduces the run.
    pub replay: &'a str,
    /// A process's row label (`client 0`, `member 3`, …).
    pub label: &'a dyn Fn(u32) -> String,
}

/// The whole HTML page.
pub fn render(t: &Timeline) -> String {
    let history = t.history;
    let end_ms = t
        .end_ms
        .max(history.ops.iter().map(|o| o.complete_ms).max().unwrap_or(1))
        .max(1);
    let x = |ms: u64| LEFT_PX + (ms as f64 / end_ms as f64) * (WIDTH_PX - LEFT_PX - 10.0);
    // Rows in process order: a BTreeSet, so the page is the same for the same history.
    let processes: BTreeSet<u32> = history.ops.iter().map(|o| o.process).collect();
    let rows: Vec<u32> = processes.into_iter().collect();
    let height = (rows.len() as f64 + 2.0) * ROW_PX + 30.0;
    let offending: BTreeSet<usize> = t.offending_ops.iter().copied().collect();

    let mut svg = String::new();
    let _ = write!(svg, "<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH_PX}' height='{height}' font-family='monospace' font-size='11'>");
    for band in t.bands {
        let (x0, x1) = (x(band.start_ms), x(band.end_ms.max(band.start_ms + 1)));
        let kind = escape(&band.kind);
        let _ = write!(
            svg,
            "<rect x='{x0:.1}' y='0' width='{:.1}' height='{height}' fill='#ff7043' fill-opacity='0.18'><title>{kind} at {} ms: {}</title></rect>\
             <text x='{x0:.1}' y='{:.1}' fill='#bf360c'>{kind}</text>",
            (x1 - x0).max(2.0),
            band.start_ms,
            escape(&band.detail),
            height - 4.0,
        );
    }
    for (row, process) in rows.iter().enumerate() {
        let y = 10.0 + row as f64 * ROW_PX;
        let label = escape(&(t.label)(*process));
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
    if let Some(report) = t.report {
        for a in &report.anomalies {
            let _ = write!(anomalies, "<li>{}</li>", escape(&a.to_string()));
        }
    }
    format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>\
         <style>body{{font-family:sans-serif;margin:16px}} code{{background:#eee;padding:2px 4px}} .legend span{{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px}}</style></head><body>\
         <h2>{heading}</h2><p>{summary}</p><p>replay: <code>{replay}</code></p>\
         <p class='legend'><span style='background:#2e7d32'></span>send acks=all ok<span style='background:#81c784'></span>send acks=1 ok\
         <span style='background:#f9a825'></span>send indeterminate<span style='background:#c62828'></span>send failed\
         <span style='background:#1565c0'></span>poll<span style='background:#8e24aa'></span>assign<span style='background:#424242'></span>final read\
         <span style='background:#00897b'></span>group join<span style='background:#6d4c41'></span>commit\
         <span style='background:#5c6bc0'></span>offset fetch<span style='background:#000000'></span>member crash\
         <span style='background:#ff7043;opacity:.4'></span>fault; red outline: offending operation</p>\
         <div style='overflow-x:auto'>{svg}</div><h3>Anomalies</h3><ul>{anomalies}</ul>\
         <p>{report}</p></body></html>",
        title = escape(t.title),
        heading = escape(t.heading),
        summary = escape(t.summary),
        replay = escape(t.replay),
        report = escape(&t.report.map(|r| r.to_string()).unwrap_or_default()),
    )
}

/// Text made safe inside an element or a quoted attribute.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An operation's bar colour (the legend names the main ones).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::{check, Anomaly, AnomalyKind};
    use crate::history::{reads_of, Key};

    fn client(process: u32) -> String {
        format!("client {process}")
    }

    /// A page of `history` over 1000 ms with no faults, no report and nothing offending.
    fn page(history: &History, bands: &[Band], offending_ops: &[usize]) -> String {
        render(&Timeline {
            title: "test",
            heading: "test — ok",
            summary: "",
            history,
            end_ms: 1000,
            bands,
            offending_ops,
            report: None,
            replay: "cargo test",
            label: &client,
        })
    }

    /// One acks=all send by process 0 from 0 to 10 ms.
    fn one_send() -> History {
        let mut history = History::new();
        history.send(0, Key::new("t", 0), 1, Acks::All, Outcome::Ok(0), 0, 10);
        history
    }

    #[test]
    fn text_from_the_run_is_escaped_everywhere() {
        let mut history = one_send();
        let alter = OpKind::Config(ConfigOp::Alter {
            topic: "t".into(),
            set: vec![("x".into(), "<b>".into())],
            delete: vec![],
            outcome: Outcome::Ok(()),
        });
        history.push(1, alter, 20, 30);
        let mut report = check(&history);
        report.anomalies.push(Anomaly {
            kind: AnomalyKind::LostWrite,
            key: Key::new("t", 0),
            detail: "value <7> & \"8\" lost".into(),
            ops: vec![0],
        });
        let bands = [Band {
            kind: "crash<".into(),
            start_ms: 100,
            end_ms: 200,
            detail: "node \"1\" & <2>".into(),
        }];
        let html = render(&Timeline {
            title: "a<b",
            heading: "seed 1 — correctness: x & y",
            summary: "faults=[\"crash\"]",
            history: &history,
            end_ms: 1000,
            bands: &bands,
            offending_ops: &[],
            report: Some(&report),
            replay: "scripts/sim --seed 1 > out & echo",
            label: &|p| format!("<p{p}>"),
        });
        assert!(html.contains("<title>a&lt;b</title>"));
        assert!(html.contains("<h2>seed 1 — correctness: x &amp; y</h2>"));
        assert!(html.contains("<p>faults=[&quot;crash&quot;]</p>"));
        assert!(html.contains("<code>scripts/sim --seed 1 &gt; out &amp; echo</code>"));
        assert!(
            html.contains("<title>crash&lt; at 100 ms: node &quot;1&quot; &amp; &lt;2&gt;</title>")
        );
        assert!(html.contains(">crash&lt;</text>"));
        assert!(html.contains(">&lt;p0&gt;</text>") && html.contains(">&lt;p1&gt;</text>"));
        assert!(html.contains("set [x=&lt;b&gt;] delete []"));
        assert!(html.contains(
            "<li>lost-write t-0: value &lt;7&gt; &amp; &quot;8&quot; lost (ops [0])</li>"
        ));
        for raw in ["<b>", "<7>", "<2>", "<p0>", "\"8\"", "x & y"] {
            assert!(!html.contains(raw), "{raw} left unescaped");
        }
    }

    #[test]
    fn a_band_is_shaded_across_the_chart_from_start_to_end() {
        let history = one_send();
        let bands = [
            Band {
                kind: "crash".into(),
                start_ms: 100,
                end_ms: 200,
                detail: "node 1".into(),
            },
            Band {
                kind: "kill".into(),
                start_ms: 500,
                end_ms: 500,
                detail: "node 2".into(),
            },
        ];
        let html = page(&history, &bands, &[]);
        // One row: (1 + 2) * 22 + 30 px high. 1000 ms span 1500 px from x = 90.
        assert!(html.contains(
            "<rect x='240.0' y='0' width='150.0' height='96' fill='#ff7043' fill-opacity='0.18'>\
             <title>crash at 100 ms: node 1</title></rect>\
             <text x='240.0' y='92.0' fill='#bf360c'>crash</text>"
        ));
        // An instantaneous fault is still visible.
        assert!(html.contains("<rect x='840.0' y='0' width='2.0' height='96' fill='#ff7043'"));
        assert_eq!(
            page(&history, &[], &[]).matches("fill='#ff7043'").count(),
            0
        );
    }

    #[test]
    fn an_offending_op_is_outlined_in_red_and_the_rest_are_not() {
        let mut history = one_send();
        history.poll_key(0, &Key::new("t", 0), &[(0, 1)], 20, 30);
        let html = page(&history, &[], &[1]);
        assert_eq!(html.matches("stroke='#d50000'").count(), 1);
        assert!(html.contains(
            "<rect x='90.0' y='13.0' width='15.0' height='12.0' fill='#2e7d32'><title>#0 0–10 ms:"
        ));
        assert!(html.contains(
            "<rect x='120.0' y='10.0' width='15.0' height='18.0' fill='#1565c0' \
             stroke='#d50000' stroke-width='2'><title>#1 20–30 ms: poll 0:1[0..0] -&gt; ok ()</title>"
        ));
        assert_eq!(page(&history, &[], &[]).matches("#d50000").count(), 0);
    }

    #[test]
    fn rows_follow_process_order_with_the_hosts_labels() {
        let key = Key::new("t", 0);
        let mut history = History::new();
        history.send(1000, key.clone(), 1, Acks::One, Outcome::Ok(0), 0, 10);
        history.send(2, key.clone(), 2, Acks::One, Outcome::Ok(1), 0, 10);
        history.final_read(7, reads_of(&key, &[(0, 1)]), Outcome::Ok(()), 20, 30);
        let label = |p: u32| match p {
            1000 => "member 0".to_string(),
            7 => "final read".to_string(),
            _ => format!("client {p}"),
        };
        let html = render(&Timeline {
            title: "rows",
            heading: "rows",
            summary: "",
            history: &history,
            end_ms: 0,
            bands: &[],
            offending_ops: &[],
            report: None,
            replay: "",
            label: &label,
        });
        let rows: Vec<&str> = html
            .match_indices("<text x='4' y='")
            .map(|(at, _)| &html[at..at + html[at..].find("</text>").unwrap()])
            .collect();
        assert_eq!(
            rows,
            [
                "<text x='4' y='22.0'>client 2",
                "<text x='4' y='44.0'>final read",
                "<text x='4' y='66.0'>member 0",
            ]
        );
        // Each op sits in its process's row; with end_ms 0 the chart ends at the last completion.
        assert!(html.contains(
            "<rect x='90.0' y='13.0' width='500.0' height='12.0' fill='#81c784'><title>#1 "
        ));
        assert!(html.contains(
            "<rect x='1090.0' y='35.0' width='500.0' height='12.0' fill='#424242'><title>#2 "
        ));
        assert!(html.contains(
            "<rect x='90.0' y='57.0' width='500.0' height='12.0' fill='#81c784'><title>#0 "
        ));
    }
}

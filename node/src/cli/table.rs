//! Aligned plain-text tables: a header of upper-case names, columns left-aligned and two spaces
//! apart, `-` for an empty cell, no trailing spaces (so `awk` and `column -t` read them).

use std::io::{self, Write};

pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Table {
        assert!(!header.is_empty());
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.header.len(), "one cell per column");
        self.rows.push(cells);
    }

    pub fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        let cell = |s: &str| -> String {
            if s.is_empty() {
                "-".to_string()
            } else {
                // One line per row, whatever a broker or a client put in a name.
                s.chars()
                    .map(|c| if c.is_control() { '?' } else { c })
                    .collect()
            }
        };
        let rows: Vec<Vec<String>> = std::iter::once(
            self.header
                .iter()
                .map(|h| h.to_string())
                .collect::<Vec<_>>(),
        )
        .chain(
            self.rows
                .iter()
                .map(|r| r.iter().map(|c| cell(c)).collect()),
        )
        .collect();
        let mut widths = vec![0usize; self.header.len()];
        for row in &rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        for row in &rows {
            let mut line = String::new();
            for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(c);
                } else {
                    line.push_str(c);
                    line.extend(std::iter::repeat_n(' ', w - c.chars().count() + 2));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let mut t = Table::new(&["TOPIC", "PARTITION", "LEADER"]);
        t.row(vec!["greetings".into(), "0".into(), "1".into()]);
        t.row(vec!["t".into(), "10".into(), String::new()]);
        t.row(vec!["bad\nname".into(), "1".into(), "2".into()]);
        let mut out = Vec::new();
        t.write(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "TOPIC      PARTITION  LEADER\n\
             greetings  0          1\n\
             t          10         -\n\
             bad?name   1          2\n"
        );
    }
}

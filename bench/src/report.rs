//! The table the bench prints, and the verdicts of its checks.

use std::fmt::Write as _;

/// One line of the table.
#[derive(Clone, Debug)]
pub struct Row {
    /// Group heading (key reads, memory, …).
    pub section: &'static str,
    /// What was measured.
    pub measure: String,
    /// The daemon's figure.
    pub value: String,
    /// The reference or the peer figure it is compared with, if any.
    pub reference: String,
    /// The target (product §12) in words.
    pub target: String,
    /// `Some(true)` met, `Some(false)` missed, `None` reported only.
    pub met: Option<bool>,
    /// Whether a miss fails `--ci`.
    pub gated: bool,
}

/// The whole report.
#[derive(Default)]
pub struct Report {
    /// Lines in order.
    pub rows: Vec<Row>,
}

impl Report {
    /// A reported-only line.
    pub fn info(
        &mut self,
        section: &'static str,
        measure: impl Into<String>,
        value: impl Into<String>,
        reference: impl Into<String>,
    ) {
        self.rows.push(Row {
            section,
            measure: measure.into(),
            value: value.into(),
            reference: reference.into(),
            target: String::new(),
            met: None,
            gated: false,
        });
    }

    /// A line checked against a target; `gated` makes a miss fail `--ci`.
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &mut self,
        section: &'static str,
        measure: impl Into<String>,
        value: impl Into<String>,
        reference: impl Into<String>,
        target: impl Into<String>,
        met: bool,
        gated: bool,
    ) {
        self.rows.push(Row {
            section,
            measure: measure.into(),
            value: value.into(),
            reference: reference.into(),
            target: target.into(),
            met: Some(met),
            gated,
        });
    }

    /// Gated lines that missed.
    pub fn failures(&self) -> Vec<&Row> {
        self.rows
            .iter()
            .filter(|r| r.gated && r.met == Some(false))
            .collect()
    }

    /// Markdown table, one per section, sections in order of first appearance.
    pub fn markdown(&self) -> String {
        let mut sections: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !sections.contains(&r.section) {
                sections.push(r.section);
            }
        }
        let mut out = String::new();
        for section in sections {
            let _ = writeln!(out, "\n**{section}**\n");
            let _ = writeln!(out, "| measure | daemon | reference | target | verdict |");
            let _ = writeln!(out, "|---|---|---|---|---|");
            for r in self.rows.iter().filter(|r| r.section == section) {
                let verdict = match (r.met, r.gated) {
                    (None, _) => "",
                    (Some(true), true) => "met (gated)",
                    (Some(true), false) => "met",
                    (Some(false), true) => "**MISSED (gated)**",
                    (Some(false), false) => "**missed**",
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} |",
                    r.measure, r.value, r.reference, r.target, verdict
                );
            }
        }
        out
    }
}

/// `1.234 ms` / `56.7 µs` formatting for latencies.
pub fn ms(d: std::time::Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else if us >= 100.0 {
        format!("{us:.0} µs")
    } else {
        format!("{us:.1} µs")
    }
}

/// KiB as MiB with one decimal.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_gated_misses_fail_and_sections_get_headers() {
        let mut r = Report::default();
        r.info("A", "x", "1", "");
        r.check("A", "y", "2", "", "≤ 1", false, false);
        r.check("B", "z", "3", "", "≤ 1", false, true);
        r.check("B", "w", "0", "", "≤ 1", true, true);
        r.info("A", "later", "4", "");
        assert_eq!(r.failures().len(), 1);
        assert_eq!(r.failures()[0].measure, "z");
        let md = r.markdown();
        assert_eq!(md.matches("| measure |").count(), 2);
        assert!(md.contains("**MISSED (gated)**"));
        // Rows of a section stay together even when added later.
        assert!(md.find("| later |").unwrap() < md.find("**B**").unwrap());
    }

    #[test]
    fn units() {
        use std::time::Duration;
        assert_eq!(ms(Duration::from_micros(56)), "56.0 µs");
        assert_eq!(ms(Duration::from_micros(156)), "156 µs");
        assert_eq!(ms(Duration::from_micros(1234)), "1.23 ms");
        assert_eq!(mib(10 * 1024 + 512), "10.5 MiB");
    }
}

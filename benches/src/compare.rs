//! `--compare OLD.json`: the change of each scenario against an earlier
//! run's report (the JSON `--out` writes).
//!
//! Absolute figures move with whatever else the machine runs, so next to
//! each system's median the table shows its ratio to the scenario's
//! baseline in both runs: a ratio that moves is a change in Sluice (or the
//! peer), a median that moves alone is the machine.
use std::{collections::HashMap, fmt::Write as _, path::Path};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::stats::{fmt, Table};

/// One system's figures in the earlier run.
struct Was {
    median: Option<f64>,
    ratio: Option<f64>,
}

/// The earlier run, by table id and system.
pub struct Earlier {
    path: String,
    started: String,
    tables: HashMap<(String, String), Was>,
}

impl Earlier {
    /// Reads an earlier report.
    ///
    /// # Errors
    /// When `path` cannot be read or is not a report (`tables` missing).
    pub fn load(path: &Path) -> Result<Earlier> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--compare: cannot read {}", path.display()))?;
        let report: Value = serde_json::from_str(&text)
            .with_context(|| format!("--compare: {} is not JSON", path.display()))?;
        let list = report["tables"].as_array().with_context(|| {
            format!(
                "--compare: {} has no `tables`: not a bench report",
                path.display()
            )
        })?;
        let mut tables = HashMap::new();
        for table in list {
            let id = table["id"].as_str().unwrap_or_default();
            for sys in table["systems"].as_array().into_iter().flatten() {
                tables.insert(
                    (
                        id.to_string(),
                        sys["system"].as_str().unwrap_or_default().to_string(),
                    ),
                    Was {
                        median: sys["median"].as_f64(),
                        ratio: sys["ratio_to_baseline"].as_f64(),
                    },
                );
            }
        }
        Ok(Earlier {
            path: path.display().to_string(),
            started: report["started"].as_str().unwrap_or("?").to_string(),
            tables,
        })
    }

    /// The change table: per measured table and system, old → new median
    /// and old → new ratio to the baseline.
    pub fn render(&self, now: &[Table]) -> String {
        let mut out = format!(
            "\nchange against {} (run of {}):\n",
            self.path, self.started
        );
        for t in now {
            for sys in &t.systems {
                let Some(was) = self.tables.get(&(t.id.clone(), sys.clone())) else {
                    let _ = writeln!(out, "  {:<22} {:<18} new scenario or system", t.id, sys);
                    continue;
                };
                let median = t.summary(sys).map(|(m, _, _)| m);
                let ratio = t.ratio(sys, t.baseline());
                let change = match (was.median, median) {
                    (Some(a), Some(b)) if a != 0.0 => format!("{:+.1}%", (b / a - 1.0) * 100.0),
                    _ => "—".into(),
                };
                let show = |v: Option<f64>| v.map(fmt).unwrap_or_else(|| "—".into());
                let ratios = if sys.as_str() == t.baseline() {
                    String::new()
                } else {
                    let r =
                        |v: Option<f64>| v.map(|r| format!("{r:.3}")).unwrap_or_else(|| "—".into());
                    format!("   ×{}: {} → {}", t.baseline(), r(was.ratio), r(ratio))
                };
                let _ = writeln!(
                    out,
                    "  {:<22} {:<18} {} → {} {} ({change}){ratios}",
                    t.id,
                    sys,
                    show(was.median),
                    show(median),
                    t.unit
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Better;

    #[test]
    fn a_change_shows_both_medians_and_both_ratios() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old.json");
        std::fs::write(
            &old,
            r#"{"started":"t0","tables":[{"id":"x.rps","systems":[
                {"system":"nginx","median":100.0,"ratio_to_baseline":1.0},
                {"system":"sluice","median":50.0,"ratio_to_baseline":0.5}]}]}"#,
        )
        .unwrap();
        let earlier = Earlier::load(&old).unwrap();
        let mut t = Table::new(
            "x.rps",
            "x",
            "req/s",
            Better::Higher,
            "",
            &["nginx", "sluice", "new"],
        );
        t.push("nginx", 100.0);
        t.push("sluice", 75.0);
        t.push("new", 1.0);
        let shown = earlier.render(&[t]);
        assert!(
            shown.contains("sluice") && shown.contains("50.00 → 75.00 req/s (+50.0%)"),
            "{shown}"
        );
        assert!(shown.contains("×nginx: 0.500 → 0.750"), "{shown}");
        assert!(
            shown.contains("new                new scenario or system"),
            "{shown}"
        );
        assert!(Earlier::load(&dir.path().join("missing.json")).is_err());
    }
}

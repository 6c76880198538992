//! Samples, interleaved rounds, ratios and targets.
//!
//! These machines are shared and noisy, so no absolute figure is compared
//! across runs. Every system of a scenario runs once per round, the order
//! reversing each round (A B C, C B A, A B C …) so slow drift hits every
//! system alike. A ratio is the median over rounds of `system / baseline`
//! measured in the same round, not a ratio of two medians.
use anyhow::{bail, Result};
use serde_json::{json, Value};

/// Which way is good for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// One metric of one scenario: a sample per round for each system.
#[derive(Debug, Clone)]
pub struct Table {
    /// Stable id, e.g. `pg-prepared.tps`; targets and the JSON use it.
    pub id: String,
    pub title: String,
    pub unit: String,
    pub better: Better,
    /// The command line that produced the samples, with placeholders for
    /// addresses and secrets.
    pub command: String,
    /// System names; the first is the baseline.
    pub systems: Vec<String>,
    /// `samples[system][round]`.
    pub samples: Vec<Vec<f64>>,
    /// Show `system − baseline` (e.g. µs added per connect) besides the ratio.
    pub show_delta: bool,
}

impl Table {
    pub fn new(
        id: &str,
        title: &str,
        unit: &str,
        better: Better,
        command: &str,
        systems: &[&str],
    ) -> Table {
        Table {
            id: id.into(),
            title: title.into(),
            unit: unit.into(),
            better,
            command: command.into(),
            systems: systems.iter().map(|s| s.to_string()).collect(),
            samples: vec![Vec::new(); systems.len()],
            show_delta: false,
        }
    }

    pub fn with_delta(mut self) -> Table {
        self.show_delta = true;
        self
    }

    fn index(&self, system: &str) -> Option<usize> {
        self.systems.iter().position(|s| s == system)
    }

    /// Adds one sample for `system`.
    pub fn push(&mut self, system: &str, value: f64) {
        let i = self
            .index(system)
            .unwrap_or_else(|| panic!("{}: no system {system:?}", self.id));
        self.samples[i].push(value);
    }

    /// Median, min and max of `system`'s samples.
    pub fn summary(&self, system: &str) -> Option<(f64, f64, f64)> {
        let s = &self.samples[self.index(system)?];
        Some((
            median(s)?,
            s.iter().copied().fold(f64::INFINITY, f64::min),
            s.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ))
    }

    /// Median over rounds of `system[r] / other[r]`.
    pub fn ratio(&self, system: &str, other: &str) -> Option<f64> {
        // Undefined when the baseline was 0 in any round (e.g. a count).
        let zero = self.samples[self.index(other)?].iter().any(|&b| b == 0.0);
        if zero {
            return None;
        }
        self.paired(system, other, |a, b| Some(a / b))
    }

    /// Median over rounds of `system[r] − other[r]`.
    pub fn delta(&self, system: &str, other: &str) -> Option<f64> {
        self.paired(system, other, |a, b| Some(a - b))
    }

    fn paired(
        &self,
        system: &str,
        other: &str,
        f: impl Fn(f64, f64) -> Option<f64>,
    ) -> Option<f64> {
        let a = &self.samples[self.index(system)?];
        let b = &self.samples[self.index(other)?];
        let values: Vec<f64> = a.iter().zip(b).filter_map(|(&x, &y)| f(x, y)).collect();
        median(&values)
    }

    pub fn baseline(&self) -> &str {
        &self.systems[0]
    }

    /// The table as text: one line per system.
    pub fn render(&self) -> String {
        let arrow = match self.better {
            Better::Higher => "higher is better",
            Better::Lower => "lower is better",
        };
        let mut out = format!(
            "{} [{}; {}]\n  {}\n",
            self.title, self.unit, arrow, self.command
        );
        let delta_head = if self.show_delta {
            format!("{:>12}", "Δ baseline")
        } else {
            String::new()
        };
        out.push_str(&format!(
            "  {:<22}{:>12}{:>12}{:>12}{:>10}{delta_head}  rounds\n",
            "system", "median", "min", "max", "ratio"
        ));
        for sys in &self.systems {
            let Some((med, min, max)) = self.summary(sys) else {
                out.push_str(&format!("  {sys:<22}{:>12}\n", "(no samples)"));
                continue;
            };
            let ratio = self
                .ratio(sys, self.baseline())
                .map(|r| format!("{r:.3}×"))
                .unwrap_or_default();
            let delta = if self.show_delta {
                format!(
                    "{:>12}",
                    self.delta(sys, self.baseline())
                        .map(|d| format!("{d:+.3}"))
                        .unwrap_or_default()
                )
            } else {
                String::new()
            };
            out.push_str(&format!(
                "  {sys:<22}{:>12}{:>12}{:>12}{ratio:>10}{delta}  {}\n",
                fmt(med),
                fmt(min),
                fmt(max),
                self.samples[self.index(sys).expect("own system")].len()
            ));
        }
        out
    }

    pub fn to_json(&self) -> Value {
        let systems: Vec<Value> = self
            .systems
            .iter()
            .enumerate()
            .map(|(i, sys)| {
                let (med, min, max) = self.summary(sys).map(|(a, b, c)| (Some(a), Some(b), Some(c))).unwrap_or_default();
                json!({
                    "system": sys,
                    "samples": self.samples[i],
                    "median": med,
                    "min": min,
                    "max": max,
                    "ratio_to_baseline": self.ratio(sys, self.baseline()),
                    "delta_to_baseline": if self.show_delta { self.delta(sys, self.baseline()) } else { None },
                })
            })
            .collect();
        json!({
            "id": self.id,
            "title": self.title,
            "unit": self.unit,
            "better": match self.better { Better::Higher => "higher", Better::Lower => "lower" },
            "command": self.command,
            "baseline": self.baseline(),
            "systems": systems,
        })
    }
}

/// A number with about four significant digits.
pub fn fmt(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// A run of one system in one round: returns one value per metric.
pub type Run<'a> = Box<dyn FnMut() -> Result<Vec<f64>> + 'a>;

/// Runs every system `rounds` times, interleaved, and files each run's
/// values into `tables` (metric `m` of every run goes to `tables[m]`).
pub fn interleave(
    rounds: usize,
    tables: &mut [&mut Table],
    systems: &mut [(&str, Run<'_>)],
) -> Result<()> {
    for round in 0..rounds {
        let order: Vec<usize> = if round % 2 == 0 {
            (0..systems.len()).collect()
        } else {
            (0..systems.len()).rev().collect()
        };
        for i in order {
            let (name, run) = &mut systems[i];
            let values = run().map_err(|e| e.context(format!("round {} of {name}", round + 1)))?;
            if values.len() != tables.len() {
                bail!(
                    "{name} returned {} values for {} metrics",
                    values.len(),
                    tables.len()
                );
            }
            let shown: Vec<String> = values
                .iter()
                .zip(tables.iter())
                .filter(|(v, _)| !v.is_nan())
                .map(|(v, t)| format!("{} {}", fmt(*v), t.unit))
                .collect();
            println!(
                "    round {}/{rounds} {name:<20} {}",
                round + 1,
                shown.join(", ")
            );
            // NaN: this metric does not apply to this system.
            for (t, v) in tables.iter_mut().zip(values).filter(|(_, v)| !v.is_nan()) {
                t.push(name, v);
            }
        }
    }
    Ok(())
}

/// A target from the issue, checked against the measured tables.
pub struct Target {
    pub text: &'static str,
    pub table: &'static str,
    pub check: Check,
}

pub enum Check {
    /// `ratio(system, other) >= min`.
    RatioAtLeast {
        system: &'static str,
        other: &'static str,
        min: f64,
    },
    /// `ratio(system, other) <= max` (latency: lower is better).
    RatioAtMost {
        system: &'static str,
        other: &'static str,
        max: f64,
    },
    /// `delta(system, other) <= max`.
    DeltaAtMost {
        system: &'static str,
        other: &'static str,
        max: f64,
    },
    /// `median(system) <= max`.
    MedianAtMost { system: &'static str, max: f64 },
}

/// What a target came to: `None` when its table was not measured.
pub struct Verdict {
    pub text: &'static str,
    pub measured: String,
    pub met: bool,
}

impl Target {
    pub fn judge(&self, tables: &[Table]) -> Option<Verdict> {
        let t = tables.iter().find(|t| t.id == self.table)?;
        let (value, met, shown) = match self.check {
            Check::RatioAtLeast { system, other, min } => {
                let r = t.ratio(system, other)?;
                (r, r >= min, format!("{r:.3}× {other}"))
            }
            Check::RatioAtMost { system, other, max } => {
                let r = t.ratio(system, other)?;
                (r, r <= max, format!("{r:.3}× {other}"))
            }
            Check::DeltaAtMost { system, other, max } => {
                let d = t.delta(system, other)?;
                (d, d <= max, format!("{d:+.3} {} vs {other}", t.unit))
            }
            Check::MedianAtMost { system, max } => {
                let (m, _, _) = t.summary(system)?;
                (m, m <= max, format!("{} {}", fmt(m), t.unit))
            }
        };
        let _ = value;
        Some(Verdict {
            text: self.text,
            measured: shown,
            met,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_is_the_median_of_paired_rounds() {
        let mut t = Table::new("x", "x", "tx/s", Better::Higher, "", &["a", "b"]);
        for (a, b) in [(100.0, 50.0), (10.0, 10.0), (200.0, 100.0)] {
            t.push("a", a);
            t.push("b", b);
        }
        assert_eq!(t.ratio("b", "a"), Some(0.5));
        assert_eq!(t.summary("a"), Some((100.0, 10.0, 200.0)));
        assert_eq!(t.delta("b", "a"), Some(-50.0));
    }

    #[test]
    fn even_counts_average_the_middle_pair() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}

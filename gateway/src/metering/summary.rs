//! `gateway usage summarize FILE...`: usage records summed by function and
//! network, for billing and capacity planning; and instances' egress (their
//! lifetime records) summed by function and destination network.

use super::usage_log::read_all;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct Totals {
    pub invocations: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub billed_gb_s: f64,
    pub cold_starts: u64,
}

/// What instances sent and received outside, to one network.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct EgressTotals {
    /// Instances that reached the network (sent or received a byte).
    pub instances: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

#[derive(Debug, Default)]
pub struct Summary {
    /// (function, network) → totals; network is `internet`, `vpc:<id>` or `internal`.
    pub rows: BTreeMap<(String, String), Totals>,
    /// (function, network) → instances' egress; network is `internet` or a VPC id.
    pub egress: BTreeMap<(String, String), EgressTotals>,
    pub skipped_lines: usize,
}

pub fn summarize(files: &[PathBuf]) -> std::io::Result<Summary> {
    let (records, instances, skipped_lines) = read_all(files)?;
    let mut egress: BTreeMap<(String, String), EgressTotals> = BTreeMap::new();
    for i in instances {
        let mut reached = std::collections::BTreeSet::new();
        for e in i.egress {
            let t = egress
                .entry((i.function.clone(), e.network.clone()))
                .or_default();
            match e.direction.as_str() {
                "out" => t.bytes_out += e.bytes,
                _ => t.bytes_in += e.bytes,
            }
            if e.bytes > 0 && reached.insert(e.network.clone()) {
                t.instances += 1;
            }
        }
    }
    let mut rows: BTreeMap<(String, String), Totals> = BTreeMap::new();
    for r in records {
        let network = match &r.vpc_id {
            Some(v) => format!("vpc:{v}"),
            None => r.network.clone(),
        };
        let t = rows.entry((r.function, network)).or_default();
        t.invocations += 1;
        t.bytes_in += r.bytes_in;
        t.bytes_out += r.bytes_out;
        t.billed_gb_s += r.billed_gb_s;
        t.cold_starts += u64::from(r.cold_start);
    }
    Ok(Summary {
        rows,
        egress,
        skipped_lines,
    })
}

impl Summary {
    pub fn to_table(&self) -> String {
        let mut out = format!(
            "{:<24} {:<20} {:>12} {:>16} {:>16} {:>14} {:>11}\n",
            "function",
            "network",
            "invocations",
            "bytes_in",
            "bytes_out",
            "billed_gb_s",
            "cold_starts"
        );
        for ((f, n), t) in &self.rows {
            out.push_str(&format!(
                "{f:<24} {n:<20} {:>12} {:>16} {:>16} {:>14.6} {:>11}\n",
                t.invocations, t.bytes_in, t.bytes_out, t.billed_gb_s, t.cold_starts
            ));
        }
        if !self.egress.is_empty() {
            out.push_str(&format!(
                "\n{:<24} {:<20} {:>12} {:>16} {:>16}\n",
                "function", "egress to", "instances", "bytes_out", "bytes_in"
            ));
            for ((f, n), t) in &self.egress {
                out.push_str(&format!(
                    "{f:<24} {n:<20} {:>12} {:>16} {:>16}\n",
                    t.instances, t.bytes_out, t.bytes_in
                ));
            }
        }
        if self.skipped_lines > 0 {
            out.push_str(&format!(
                "({} torn or invalid lines skipped)\n",
                self.skipped_lines
            ));
        }
        out
    }

    pub fn to_json(&self) -> String {
        let doc = serde_json::json!({
            "rows": keyed(&self.rows),
            "egress": keyed(&self.egress),
            "skipped_lines": self.skipped_lines,
        });
        format!("{doc}\n")
    }
}

/// Each (function, network) row as one object: its totals and its key.
fn keyed<T: serde::Serialize>(rows: &BTreeMap<(String, String), T>) -> Vec<serde_json::Value> {
    rows.iter()
        .map(|((f, n), t)| {
            let mut v = serde_json::to_value(t).unwrap_or_default();
            v["function"] = f.clone().into();
            v["network"] = n.clone().into();
            v
        })
        .collect()
}

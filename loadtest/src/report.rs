//! What a run measured: latencies (HDR histogram, µs), answers by status,
//! connection errors, bytes, and cold starts seen in the answers' headers.

use hdrhistogram::Histogram;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct Report {
    pub hist: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    pub connection_errors: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub cold_starts: u64,
}

impl Default for Report {
    fn default() -> Self {
        Report {
            // 1 µs to 1 hour, 3 significant digits.
            hist: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            statuses: BTreeMap::new(),
            connection_errors: 0,
            bytes_out: 0,
            bytes_in: 0,
            cold_starts: 0,
        }
    }
}

impl Report {
    pub fn record(&mut self, latency_us: u64, status: u16, sent: u64, received: u64, cold: bool) {
        let _ = self.hist.record(latency_us.clamp(1, 3_600_000_000));
        *self.statuses.entry(status).or_default() += 1;
        self.bytes_out += sent;
        self.bytes_in += received;
        self.cold_starts += u64::from(cold);
    }

    pub fn merge(&mut self, other: &Report) {
        self.hist.add(&other.hist).expect("same bounds");
        for (k, v) in &other.statuses {
            *self.statuses.entry(*k).or_default() += v;
        }
        self.connection_errors += other.connection_errors;
        self.bytes_out += other.bytes_out;
        self.bytes_in += other.bytes_in;
        self.cold_starts += other.cold_starts;
    }

    pub fn requests(&self) -> u64 {
        self.hist.len()
    }

    /// Answers by class: 2xx, 403, 429, 5xx, and the rest.
    pub fn classes(&self) -> [(&'static str, u64); 5] {
        let sum = |f: &dyn Fn(u16) -> bool| {
            self.statuses
                .iter()
                .filter(|(k, _)| f(**k))
                .map(|(_, v)| v)
                .sum()
        };
        [
            ("2xx", sum(&|s| (200..300).contains(&s))),
            ("403", sum(&|s| s == 403)),
            ("429", sum(&|s| s == 429)),
            ("5xx", sum(&|s| s >= 500)),
            (
                "other",
                sum(&|s| !(200..300).contains(&s) && s != 403 && s != 429 && s < 500),
            ),
        ]
    }

    fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn to_json(&self, seconds: f64) -> String {
        let n = self.requests();
        let statuses: serde_json::Map<String, serde_json::Value> = self
            .statuses
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        let classes: serde_json::Map<String, serde_json::Value> = self
            .classes()
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        serde_json::json!({
            "requests": n,
            "seconds": seconds,
            "rps": if seconds > 0.0 { n as f64 / seconds } else { 0.0 },
            "p50_ms": self.ms(0.5),
            "p90_ms": self.ms(0.9),
            "p99_ms": self.ms(0.99),
            "p999_ms": self.ms(0.999),
            "max_ms": self.hist.max() as f64 / 1000.0,
            "errors": self.connection_errors,
            "statuses": statuses,
            "classes": classes,
            "bytes_out": self.bytes_out,
            "bytes_in": self.bytes_in,
            "cold_starts": self.cold_starts,
        })
        .to_string()
    }

    pub fn to_text(&self, target: &str, seconds: f64) -> String {
        let n = self.requests();
        let rps = if seconds > 0.0 {
            n as f64 / seconds
        } else {
            0.0
        };
        let classes: Vec<String> = self
            .classes()
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        format!(
            "target      {target}\n\
             requests    {n} in {seconds:.2} s ({rps:.0} req/s), {} connection errors\n\
             latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}\n\
             answers     {}\n\
             bytes       sent {}  received {}\n\
             cold starts {}\n",
            self.connection_errors,
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(0.999),
            self.hist.max() as f64 / 1000.0,
            classes.join(", "),
            self.bytes_out,
            self.bytes_in,
            self.cold_starts
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counts_and_keeps_quantiles() {
        let mut a = Report::default();
        let mut b = Report::default();
        for i in 1..=900u64 {
            a.record(1000 + i, 200, 10, 20, i == 1);
        }
        for i in 1..=100u64 {
            b.record(50_000 + i, if i % 2 == 0 { 429 } else { 503 }, 10, 5, false);
        }
        b.connection_errors = 2;
        a.merge(&b);
        assert_eq!(a.requests(), 1000);
        assert_eq!(a.statuses[&200], 900);
        assert_eq!(
            a.classes(),
            [
                ("2xx", 900),
                ("403", 0),
                ("429", 50),
                ("5xx", 50),
                ("other", 0)
            ]
        );
        assert_eq!((a.bytes_out, a.bytes_in), (10_000, 18_500));
        assert_eq!((a.cold_starts, a.connection_errors), (1, 2));
        // p50 is among the fast 900, p99 among the slow 100.
        assert!((1000..2000).contains(&a.hist.value_at_quantile(0.5)));
        assert!(a.hist.value_at_quantile(0.99) >= 50_000);
        let j: serde_json::Value = serde_json::from_str(&a.to_json(2.0)).unwrap();
        assert_eq!(j["requests"], 1000);
        assert_eq!(j["rps"], 500.0);
        assert_eq!(j["classes"]["429"], 50);
    }
}

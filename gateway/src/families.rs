//! Registering metric families: each subsystem registers its own in the
//! gateway's one registry through a [`Families`], so a family is declared
//! in one expression (name, help, labels) and cannot be left unregistered.

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Registers families in one registry. Names and help texts are the
/// program's own literals: a bad one (or one registered twice) is a bug,
/// found by the first test that builds the subsystem.
#[derive(Clone, Copy)]
pub struct Families<'r>(pub &'r Registry);

impl Families<'_> {
    fn register<C: Collector + Clone + 'static>(&self, c: C) -> C {
        self.0.register(Box::new(c.clone())).expect("a new family");
        c
    }

    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help).expect("a valid family"))
    }

    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).expect("a valid family"))
    }

    pub fn float_gauge(&self, name: &str, help: &str) -> prometheus::Gauge {
        self.register(prometheus::Gauge::new(name, help).expect("a valid family"))
    }

    pub fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let v = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid family");
        self.register(v)
    }

    pub fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        let v = IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid family");
        self.register(v)
    }

    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.register(Histogram::with_opts(opts).expect("a valid family"))
    }

    pub fn histograms(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
        labels: &[&str],
    ) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.register(HistogramVec::new(opts, labels).expect("a valid family"))
    }
}

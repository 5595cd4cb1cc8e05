//! Scenario files (`loadtest/scenarios/*.toml`): what to send, from where, how.
//!
//! ```toml
//! target = "https://127.0.0.1:8443"     # loopback only unless allow_remote
//! cacert = "config/fngate-self-signed.pem"
//! dialect = "fc"                         # the API door: fc, lambda or azure (or raw)
//! duration = "10s"                       # required: every run is bounded
//! warmup = "1s"
//! mode = "closed"                        # or "open" (constant arrival rate)
//! connections = 64
//! rate = 1000                            # open loop: requests/s in total
//! http2 = false
//!
//! [[functions]]                          # picked by weight
//! name = "echo"
//! weight = 3
//! payload_bytes = 64
//! invocation = "sync"                    # or "async" (202 at once; fc and lambda)
//! dialect = "lambda"                     # this function's door, if not the scenario's
//!
//! [[sources]]                            # caller addresses, picked per connection by weight
//! address = "127.0.0.2"
//! weight = 1
//! ```

use serde::Deserialize;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Each connection sends its next request when the last one is answered.
    #[default]
    Closed,
    /// Requests are due at a constant rate whatever the answers; latency is
    /// measured from when each was due (no coordinated omission).
    Open,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// Function Compute 3.0: `POST /2023-03-30/functions/{name}/invocations`.
    #[default]
    Fc,
    /// AWS Lambda: `POST /2015-03-31/functions/{name}/invocations`.
    Lambda,
    /// Azure Functions HTTP trigger: `POST /api/{name}`.
    Azure,
    /// The URL's path as given, for non-fngate targets (`target` is a full URL).
    Raw,
}

/// Whether the caller waits for the function (`x-fc-invocation-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Invocation {
    #[default]
    Sync,
    /// Answered 202 once accepted; the function runs later.
    Async,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Function {
    pub name: String,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default = "default_payload")]
    pub payload_bytes: usize,
    #[serde(default)]
    pub invocation: Invocation,
    /// The door this function is called through (default: the scenario's).
    pub dialect: Option<Dialect>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub address: IpAddr,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}
fn default_payload() -> usize {
    64
}
fn default_connections() -> usize {
    64
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub target: String,
    pub cacert: Option<PathBuf>,
    #[serde(default)]
    pub dialect: Dialect,
    #[serde(deserialize_with = "duration")]
    pub duration: Duration,
    #[serde(default, deserialize_with = "duration")]
    pub warmup: Duration,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default = "default_connections")]
    pub connections: usize,
    pub rate: Option<f64>,
    #[serde(default)]
    pub http2: bool,
    #[serde(default)]
    pub allow_remote: bool,
    #[serde(default)]
    pub functions: Vec<Function>,
    #[serde(default)]
    pub sources: Vec<Source>,
}

/// `"10s"`, `"250ms"`, `"2m"`, or a number of seconds; at most an hour.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, mul) = if let Some(v) = s.strip_suffix("ms") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60.0)
    } else {
        (s, 1.0)
    };
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    if !(0.0..=3600.0).contains(&(n * mul)) {
        return Err(format!("duration {s:?} must be between 0 and 1h"));
    }
    Ok(Duration::from_secs_f64(n * mul))
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

impl Scenario {
    pub fn parse(text: &str) -> Result<Scenario, String> {
        let s: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        s.validate()?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<(), String> {
        let key = |k: &str, why: &str| Err(format!("{k}: {why}"));
        if self.duration.is_zero() {
            return key("duration", "must be greater than 0");
        }
        if self.connections == 0 || self.connections > 100_000 {
            return key("connections", "must be 1..=100000");
        }
        match (self.mode, self.rate) {
            (Mode::Open, None) => return key("rate", "required in open mode"),
            (Mode::Open, Some(r)) if !(r > 0.0 && r.is_finite()) => {
                return key("rate", "must be > 0");
            }
            (Mode::Closed, Some(_)) => {
                return key("rate", "only used in open mode (mode = \"open\")");
            }
            _ => {}
        }
        if self.dialect != Dialect::Raw && self.functions.is_empty() {
            return key(
                "functions",
                "at least one [[functions]] entry is needed for a function dialect",
            );
        }
        for (i, f) in self.functions.iter().enumerate() {
            if f.name.is_empty() {
                return key(&format!("functions[{i}].name"), "must not be empty");
            }
            match (f.dialect.unwrap_or(self.dialect), f.invocation) {
                (Dialect::Raw, _) => {
                    return key(&format!("functions[{i}].dialect"), "raw has no functions");
                }
                (Dialect::Azure, Invocation::Async) => {
                    return key(
                        &format!("functions[{i}].invocation"),
                        "azure HTTP triggers are synchronous",
                    );
                }
                _ => {}
            }
            if f.weight == 0 {
                return key(&format!("functions[{i}].weight"), "must be at least 1");
            }
        }
        for (i, s) in self.sources.iter().enumerate() {
            if s.weight == 0 {
                return key(&format!("sources[{i}].weight"), "must be at least 1");
            }
            if !s.address.is_loopback() && !self.allow_remote {
                return key(
                    &format!("sources[{i}].address"),
                    "must be a loopback address",
                );
            }
        }
        Ok(())
    }
}

/// Picks index `i` with probability weight[i] / sum, from a uniform `u` in [0, 1).
pub fn pick_weighted(weights: &[u32], u: f64) -> usize {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    let mut x = (u * total as f64) as u64;
    for (i, w) in weights.iter().enumerate() {
        if x < u64::from(*w) {
            return i;
        }
        x -= u64::from(*w);
    }
    weights.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
target = "https://127.0.0.1:8443"
duration = "2s"
[[functions]]
name = "echo"
"#;

    #[test]
    fn parses_with_defaults() {
        let s = Scenario::parse(OK).unwrap();
        assert_eq!(s.duration, Duration::from_secs(2));
        assert_eq!((s.mode, s.connections, s.http2), (Mode::Closed, 64, false));
        assert_eq!(s.functions[0].payload_bytes, 64);
        assert_eq!(s.functions[0].invocation, Invocation::Sync);
        let s = Scenario::parse(&format!("{OK}invocation = \"async\"\n")).unwrap();
        assert_eq!(s.functions[0].invocation, Invocation::Async);
    }

    /// Every parse error names the key at fault.
    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "target = \"https://127.0.0.1:1\"\n[[functions]]\nname = \"f\"\n",
                "duration",
            ),
            (&format!("{OK}\nconections = 3\n") as &str, "conections"),
            (
                "target = \"x\"\nduration = \"2 weeks\"\n[[functions]]\nname = \"f\"\n",
                "duration",
            ),
            (
                "target = \"x\"\nduration = \"2s\"\nmode = \"open\"\n[[functions]]\nname = \"f\"\n",
                "rate",
            ),
            (
                "target = \"x\"\nduration = \"2s\"\nrate = 5.0\n[[functions]]\nname = \"f\"\n",
                "rate",
            ),
            ("target = \"x\"\nduration = \"2s\"\n", "functions"),
            (&format!("{OK}weight = 0\n") as &str, "functions[0].weight"),
            (
                &format!("{OK}[[sources]]\naddress = \"10.0.0.1\"\n") as &str,
                "sources[0].address",
            ),
            (
                &format!("{OK}[[sources]]\naddress = \"not-an-ip\"\n") as &str,
                "address",
            ),
            (&format!("{OK}mode = \"sideways\"\n") as &str, "sideways"),
            (
                &format!("{OK}invocation = \"later\"\n") as &str,
                "invocation",
            ),
        ];
        for (text, key) in cases {
            let err = Scenario::parse(text).expect_err(text);
            assert!(
                err.contains(key),
                "error for {text:?} should name {key:?}: {err}"
            );
        }
    }

    #[test]
    fn weighted_pick() {
        let w = [3, 1];
        assert_eq!(pick_weighted(&w, 0.0), 0);
        assert_eq!(pick_weighted(&w, 0.74), 0);
        assert_eq!(pick_weighted(&w, 0.76), 1);
        assert_eq!(pick_weighted(&w, 0.999), 1);
    }
}

//! Where a function runs: `[[functions.backends]]` (fngate's own sandbox
//! workers, or a cloud's function behind an API), and the keys the gateway
//! signs its outbound calls with, `[[outbound_credentials]]`.
//!
//! ```toml
//! [[outbound_credentials]]
//! name = "aws"
//! access_key_id = "AKIA..."
//! secret_env = "FNGATE_AWS_SECRET"
//!
//! [[functions]]
//! name = "resize"
//! command = ["{bin_dir}/fngate-echo"]
//! [[functions.backends]]
//! name = "local"
//! kind = "sandbox"
//! weight = 90
//! [[functions.backends]]
//! name = "aws"
//! kind = "lambda"
//! region = "us-east-1"
//! function = "resize"
//! credentials = "aws"
//! weight = 10
//! fallback = 1
//! ```

use super::auth::secret;
use super::{ConfigError, invalid};
use crate::auth::Secret;
use crate::ingress::{VpcId, VpcTable};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// `[[outbound_credentials]]`: a key pair the gateway signs with, as itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OutboundCredentialSection {
    name: String,
    access_key_id: String,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    secret_env: Option<String>,
}

/// `[[functions.backends]]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BackendSection {
    name: String,
    kind: KindName,
    #[serde(default = "one")]
    weight: u32,
    fallback: Option<u32>,
    endpoint: Option<String>,
    url: Option<String>,
    region: Option<String>,
    account_id: Option<String>,
    function: Option<String>,
    qualifier: Option<String>,
    credentials: Option<String>,
    function_key: Option<String>,
    function_key_file: Option<PathBuf>,
    function_key_env: Option<String>,
    network: Option<String>,
    connect_timeout_ms: Option<u64>,
    max_concurrency: Option<u32>,
    timeout_ms: Option<u64>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum KindName {
    Sandbox,
    Lambda,
    Fc,
    Azure,
    Http,
}

/// A key pair for signing outbound calls.
#[derive(Debug, Clone)]
pub struct OutboundKey {
    pub access_key_id: Arc<str>,
    pub secret: Secret,
}

/// What a backend is.
#[derive(Debug, Clone)]
pub enum BackendKind {
    /// fngate's own instances (the function's `command`).
    Sandbox,
    /// AWS Lambda's Invoke, signed with SigV4.
    Lambda {
        region: Arc<str>,
        /// A name, `name:alias` or an ARN, as Invoke takes it.
        function: Arc<str>,
        qualifier: Option<Arc<str>>,
        key: OutboundKey,
    },
    /// Function Compute 3.0's InvokeFunction, signed with ACS3-HMAC-SHA256.
    Fc {
        function: Arc<str>,
        qualifier: Option<Arc<str>>,
        key: OutboundKey,
    },
    /// An Azure Functions HTTP trigger, with its function key.
    Azure { function_key: Option<Secret> },
    /// Any HTTP(S) URL.
    Http,
}

impl BackendKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            BackendKind::Sandbox => "sandbox",
            BackendKind::Lambda { .. } => "lambda",
            BackendKind::Fc { .. } => "fc",
            BackendKind::Azure { .. } => "azure",
            BackendKind::Http => "http",
        }
    }
}

/// One validated backend.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub name: Arc<str>,
    pub kind: BackendKind,
    /// Share of the function's calls (0: only as a fallback).
    pub weight: u32,
    /// Tried in this order (lowest first) when the chosen backend cannot
    /// have run the call.
    pub fallback: Option<u32>,
    /// The URL calls go to (cloud kinds: the API's base, path appended;
    /// azure and http: the function's own URL). `None` for the sandbox.
    pub url: Option<http::Uri>,
    /// Where the backend sits, for metering (`None`: the internet).
    pub network: Option<VpcId>,
    pub connect_timeout: Duration,
    /// Calls in flight on this backend at most (a cloud's reserved
    /// concurrency); more go to the fallbacks, as if it throttled.
    pub max_concurrency: Option<u32>,
    /// `None`: the function's `timeout_s`.
    pub timeout: Option<Duration>,
}

/// Reads `[[outbound_credentials]]`, by name.
pub(super) fn outbound_keys(
    sections: &[OutboundCredentialSection],
    config_dir: &Path,
) -> Result<Vec<(String, OutboundKey)>, ConfigError> {
    let mut out: Vec<(String, OutboundKey)> = Vec::new();
    for (i, c) in sections.iter().enumerate() {
        let key = format!("outbound_credentials[{i}]");
        if c.name.is_empty() || out.iter().any(|(n, _)| *n == c.name) {
            return Err(invalid(
                format!("{key}.name"),
                format!("{:?} is empty or listed twice", c.name),
            ));
        }
        if c.access_key_id.is_empty() {
            return Err(invalid(format!("{key}.access_key_id"), "must not be empty"));
        }
        let secret = secret(
            &key,
            (&c.secret, &c.secret_file, &c.secret_env),
            ["secret", "secret_file", "secret_env"],
            config_dir,
        )?;
        out.push((
            c.name.clone(),
            OutboundKey {
                access_key_id: c.access_key_id.as_str().into(),
                secret,
            },
        ));
    }
    Ok(out)
}

/// An `http://` or `https://` URL with a host.
fn url(key: &str, v: &str) -> Result<http::Uri, ConfigError> {
    let uri: http::Uri = v
        .parse()
        .map_err(|_| invalid(key, format!("{v:?} is not a URL")))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) if uri.query().is_none() => Ok(uri),
        _ => Err(invalid(
            key,
            format!("{v:?} must be an http:// or https:// URL without a query"),
        )),
    }
}

/// `u` with the scheme and authority of `endpoint`, when one is given.
fn rebase(key: &str, u: http::Uri, endpoint: Option<&http::Uri>) -> Result<http::Uri, ConfigError> {
    let Some(e) = endpoint else { return Ok(u) };
    let (scheme, authority) = (e.scheme_str(), e.authority().map(|a| a.as_str()));
    url(
        key,
        &format!(
            "{}://{}{}",
            scheme.unwrap_or("https"),
            authority.unwrap_or_default(),
            u.path()
        ),
    )
}

/// Validates a function's backends. `key` names a field of the function.
pub(super) fn backends(
    key: &dyn Fn(&str) -> String,
    sections: &[BackendSection],
    keys: &[(String, OutboundKey)],
    vpcs: &VpcTable,
    config_dir: &Path,
) -> Result<Vec<BackendConfig>, ConfigError> {
    let mut out: Vec<BackendConfig> = Vec::with_capacity(sections.len());
    for (i, b) in sections.iter().enumerate() {
        let k = |f: &str| key(&format!("backends[{i}].{f}"));
        let valid_name = (1..=64).contains(&b.name.len())
            && (b.name.bytes()).all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
        if !valid_name {
            let why = format!("{:?}: 1-64 letters, digits, '-' or '_'", b.name);
            return Err(invalid(k("name"), why));
        }
        if out.iter().any(|o| *o.name == *b.name) {
            return Err(invalid(k("name"), format!("{:?} is listed twice", b.name)));
        }
        let f = Fields {
            b,
            k: &k,
            keys,
            config_dir,
        };
        out.push(f.backend(vpcs)?);
    }
    if !out.is_empty() && out.iter().all(|b| b.weight == 0) {
        return Err(invalid(
            key("backends"),
            "at least one backend needs a weight above 0",
        ));
    }
    Ok(out)
}

/// A signed cloud call's function, qualifier and key.
type Signed = (Arc<str>, Option<Arc<str>>, OutboundKey);

/// One `[[functions.backends]]` entry, read field by field.
struct Fields<'a> {
    b: &'a BackendSection,
    k: &'a dyn Fn(&str) -> String,
    keys: &'a [(String, OutboundKey)],
    config_dir: &'a Path,
}

impl Fields<'_> {
    fn backend(&self, vpcs: &VpcTable) -> Result<BackendConfig, ConfigError> {
        let (b, k) = (self.b, self.k);
        let endpoint = (b.endpoint.as_deref())
            .map(|e| url(&k("endpoint"), e))
            .transpose()?;
        if let Some(e) = &endpoint
            && e.path() != "/"
        {
            let why = "an endpoint is a scheme, host and port only";
            return Err(invalid(k("endpoint"), why));
        }
        let (kind, base) = match b.kind {
            KindName::Sandbox => (self.sandbox()?, None),
            KindName::Lambda => self.lambda(endpoint)?,
            KindName::Fc => self.fc(endpoint)?,
            KindName::Azure => self.azure(endpoint)?,
            KindName::Http => self.http(endpoint)?,
        };
        let network = match b.network.as_deref() {
            None | Some("internet") => None,
            Some(v) => Some(vpcs.get(v).ok_or_else(|| {
                let why = format!("unknown VPC {v:?}: \"internet\", or a vpc_id of [[networks]]");
                invalid(k("network"), why)
            })?),
        };
        let (connect_timeout, timeout) = self.bounds()?;
        Ok(BackendConfig {
            name: b.name.as_str().into(),
            kind,
            weight: b.weight,
            fallback: b.fallback,
            url: base,
            network,
            connect_timeout,
            max_concurrency: b.max_concurrency,
            timeout,
        })
    }

    /// Weight, concurrency and the timeouts.
    fn bounds(&self) -> Result<(Duration, Option<Duration>), ConfigError> {
        let (b, k) = (self.b, self.k);
        if b.weight > 1000 {
            return Err(invalid(k("weight"), "must be 0..=1000"));
        }
        if b.weight == 0 && b.fallback.is_none() {
            let why = "0 takes no calls: give the backend a fallback order or a weight";
            return Err(invalid(k("weight"), why));
        }
        if b.max_concurrency == Some(0) {
            let why = "must be at least 1 (omit it for no limit)";
            return Err(invalid(k("max_concurrency"), why));
        }
        let connect_timeout = match b.connect_timeout_ms {
            None => Duration::from_secs(5),
            Some(ms @ 1..=60_000) => Duration::from_millis(ms),
            Some(_) => return Err(invalid(k("connect_timeout_ms"), "must be 1..=60000")),
        };
        let timeout = match b.timeout_ms {
            None => None,
            Some(ms @ 1..=86_400_000) => Some(Duration::from_millis(ms)),
            Some(_) => return Err(invalid(k("timeout_ms"), "must be 1..=86400000")),
        };
        Ok((connect_timeout, timeout))
    }

    fn required(&self, v: &Option<String>, f: &str) -> Result<Arc<str>, ConfigError> {
        match v {
            Some(s) if !s.is_empty() => Ok(s.as_str().into()),
            _ => {
                let why = format!("required for kind = \"{}\"", kind_name(self.b.kind));
                Err(invalid((self.k)(f), why))
            }
        }
    }

    /// Each field named that is set is an error: this kind does not use it.
    fn unused(&self, fields: &[(bool, &str)]) -> Result<(), ConfigError> {
        match fields.iter().find(|(present, _)| *present) {
            Some((_, f)) => {
                let why = format!("not used by kind = \"{}\"", kind_name(self.b.kind));
                Err(invalid((self.k)(f), why))
            }
            None => Ok(()),
        }
    }

    fn has_key(&self) -> bool {
        let b = self.b;
        b.function_key.is_some() || b.function_key_file.is_some() || b.function_key_env.is_some()
    }

    fn credentials(&self) -> Result<OutboundKey, ConfigError> {
        let name = self.required(&self.b.credentials, "credentials")?;
        (self.keys.iter())
            .find(|(n, _)| **n == *name)
            .map(|(_, c)| c.clone())
            .ok_or_else(|| {
                let why = format!("no [[outbound_credentials]] named {name:?}");
                invalid((self.k)("credentials"), why)
            })
    }

    /// What a signed call to a cloud names: the function, its qualifier,
    /// and the key it is signed with.
    fn signed(&self) -> Result<Signed, ConfigError> {
        let function = self.required(&self.b.function, "function")?;
        let qualifier = self.b.qualifier.as_deref().map(Into::into);
        Ok((function, qualifier, self.credentials()?))
    }

    fn sandbox(&self) -> Result<BackendKind, ConfigError> {
        let b = self.b;
        self.unused(&[
            (b.endpoint.is_some(), "endpoint"),
            (b.url.is_some(), "url"),
            (b.region.is_some(), "region"),
            (b.function.is_some(), "function"),
            (b.credentials.is_some(), "credentials"),
            (b.network.is_some(), "network"),
            (b.timeout_ms.is_some(), "timeout_ms"),
            (b.connect_timeout_ms.is_some(), "connect_timeout_ms"),
        ])?;
        Ok(BackendKind::Sandbox)
    }

    fn lambda(
        &self,
        endpoint: Option<http::Uri>,
    ) -> Result<(BackendKind, Option<http::Uri>), ConfigError> {
        let (b, k) = (self.b, self.k);
        self.unused(&[
            (b.url.is_some(), "url"),
            (b.account_id.is_some(), "account_id"),
            (self.has_key(), "function_key"),
        ])?;
        let region = self.required(&b.region, "region")?;
        let base = match endpoint {
            Some(e) => e,
            None => url(
                &k("region"),
                &format!("https://lambda.{region}.amazonaws.com"),
            )?,
        };
        let (function, qualifier, key) = self.signed()?;
        let kind = BackendKind::Lambda {
            region,
            function,
            qualifier,
            key,
        };
        Ok((kind, Some(base)))
    }

    fn fc(
        &self,
        endpoint: Option<http::Uri>,
    ) -> Result<(BackendKind, Option<http::Uri>), ConfigError> {
        let (b, k) = (self.b, self.k);
        self.unused(&[(b.url.is_some(), "url"), (self.has_key(), "function_key")])?;
        let base = match endpoint {
            Some(e) => e,
            None => {
                let account = self.required(&b.account_id, "account_id")?;
                let region = self.required(&b.region, "region")?;
                let u = format!("https://{account}.{region}.fc.aliyuncs.com");
                url(&k("region"), &u)?
            }
        };
        let (function, qualifier, key) = self.signed()?;
        let kind = BackendKind::Fc {
            function,
            qualifier,
            key,
        };
        Ok((kind, Some(base)))
    }

    fn azure(
        &self,
        endpoint: Option<http::Uri>,
    ) -> Result<(BackendKind, Option<http::Uri>), ConfigError> {
        let (b, k) = (self.b, self.k);
        self.unused(&[
            (b.credentials.is_some(), "credentials"),
            (b.region.is_some(), "region"),
            (b.qualifier.is_some(), "qualifier"),
        ])?;
        let app = url(&k("url"), &self.required(&b.url, "url")?)?;
        let function = self.required(&b.function, "function")?;
        let full = format!("{}/api/{function}", app.to_string().trim_end_matches('/'));
        let full = rebase(&k("url"), url(&k("url"), &full)?, endpoint.as_ref())?;
        let function_key = match self.has_key() {
            true => Some(secret(
                &k("function_key"),
                (&b.function_key, &b.function_key_file, &b.function_key_env),
                ["function_key", "function_key_file", "function_key_env"],
                self.config_dir,
            )?),
            false => None,
        };
        Ok((BackendKind::Azure { function_key }, Some(full)))
    }

    fn http(
        &self,
        endpoint: Option<http::Uri>,
    ) -> Result<(BackendKind, Option<http::Uri>), ConfigError> {
        let (b, k) = (self.b, self.k);
        self.unused(&[
            (b.credentials.is_some(), "credentials"),
            (b.region.is_some(), "region"),
            (b.function.is_some(), "function"),
            (b.qualifier.is_some(), "qualifier"),
            (self.has_key(), "function_key"),
        ])?;
        let u = url(&k("url"), &self.required(&b.url, "url")?)?;
        let u = rebase(&k("endpoint"), u, endpoint.as_ref())?;
        Ok((BackendKind::Http, Some(u)))
    }
}

fn kind_name(k: KindName) -> &'static str {
    match k {
        KindName::Sandbox => "sandbox",
        KindName::Lambda => "lambda",
        KindName::Fc => "fc",
        KindName::Azure => "azure",
        KindName::Http => "http",
    }
}

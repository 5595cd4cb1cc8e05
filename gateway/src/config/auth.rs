//! The credential sections: `[[credentials]]` (access keys for request
//! signatures), `[azure] host_keys`, each function's `auth`, `auth_level` and
//! `function_keys`. Secrets come from the file itself, a file of their own or
//! an environment variable, are read once here, and are never logged.

use super::{ConfigError, invalid};
use crate::auth::{AuthLevel, AuthMode, Credentials, GatewayAuth, NamedKey, Secret};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `[[credentials]]`: an access key and its secret.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CredentialSection {
    access_key_id: String,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    secret_env: Option<String>,
}

/// A named key (a function key or a host key).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeySection {
    name: String,
    value: Option<String>,
    file: Option<PathBuf>,
    env: Option<String>,
}

/// `[azure]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AzureSection {
    #[serde(default)]
    host_keys: Vec<KeySection>,
}

/// A secret from exactly one of a value, a file or an environment variable.
pub(super) fn secret(
    key: &str,
    (value, file, env): (&Option<String>, &Option<PathBuf>, &Option<String>),
    names: [&str; 3],
    config_dir: &Path,
) -> Result<Secret, ConfigError> {
    let bytes = match (value, file, env) {
        (Some(v), None, None) => v.clone().into_bytes(),
        (None, Some(f), None) => {
            let path = if f.is_absolute() {
                f.clone()
            } else {
                config_dir.join(f)
            };
            let text = std::fs::read_to_string(&path).map_err(|e| {
                invalid(
                    format!("{key}.{}", names[1]),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            // A trailing newline is the editor's, not the secret's.
            text.trim_end_matches(['\n', '\r']).as_bytes().to_vec()
        }
        (None, None, Some(var)) => std::env::var(var)
            .map_err(|_| {
                invalid(
                    format!("{key}.{}", names[2]),
                    format!("environment variable {var} is not set"),
                )
            })?
            .into_bytes(),
        _ => {
            return Err(invalid(
                key,
                format!(
                    "exactly one of {}, {} or {} is required",
                    names[0], names[1], names[2]
                ),
            ));
        }
    };
    if bytes.is_empty() {
        return Err(invalid(key, "the secret is empty"));
    }
    Ok(Secret::new(bytes))
}

fn keys(
    key: &str,
    sections: &[KeySection],
    config_dir: &Path,
) -> Result<Vec<NamedKey>, ConfigError> {
    let mut out: Vec<NamedKey> = Vec::with_capacity(sections.len());
    for (i, k) in sections.iter().enumerate() {
        let key = format!("{key}[{i}]");
        if k.name.is_empty() || out.iter().any(|o| *o.name == *k.name) {
            return Err(invalid(
                format!("{key}.name"),
                format!("{:?} is empty or listed twice", k.name),
            ));
        }
        out.push(NamedKey {
            name: k.name.as_str().into(),
            value: secret(
                &key,
                (&k.value, &k.file, &k.env),
                ["value", "file", "env"],
                config_dir,
            )?,
        });
    }
    Ok(out)
}

/// The gateway-wide part: access keys, host keys, default mode, skew.
pub(super) fn gateway(
    mode: AuthMode,
    max_skew_s: u64,
    credentials: &[CredentialSection],
    azure: &AzureSection,
    config_dir: &Path,
) -> Result<GatewayAuth, ConfigError> {
    let mut store = Credentials::default();
    for (i, c) in credentials.iter().enumerate() {
        let key = format!("credentials[{i}]");
        let id = &c.access_key_id;
        if id.is_empty()
            || id.len() > 128
            || !id
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'/' && b != b',')
        {
            return Err(invalid(
                format!("{key}.access_key_id"),
                format!("{id:?}: 1-128 visible ASCII characters, without '/' or ','"),
            ));
        }
        let s = secret(
            &key,
            (&c.secret, &c.secret_file, &c.secret_env),
            ["secret", "secret_file", "secret_env"],
            config_dir,
        )?;
        if !store.insert(id, s) {
            return Err(invalid(
                format!("{key}.access_key_id"),
                format!("{id:?} is listed twice"),
            ));
        }
    }
    if store.len() > usize::from(u16::MAX) {
        return Err(invalid("credentials", "too many access keys"));
    }
    if !(1..=3600).contains(&max_skew_s) {
        return Err(invalid("gateway.signature_max_skew_s", "must be 1..=3600"));
    }
    Ok(GatewayAuth {
        mode,
        credentials: store,
        host_keys: keys("azure.host_keys", &azure.host_keys, config_dir)?,
        max_skew: Duration::from_secs(max_skew_s),
    })
}

/// One function's demands, resolved against the gateway's.
pub(super) fn function(
    key: &dyn Fn(&str) -> String,
    gw: &GatewayAuth,
    auth: Option<AuthMode>,
    auth_level: Option<AuthLevel>,
    function_keys: &[KeySection],
    config_dir: &Path,
) -> Result<(AuthMode, AuthLevel, Vec<NamedKey>), ConfigError> {
    let mode = auth.unwrap_or(gw.mode);
    if mode == AuthMode::Signature && gw.credentials.is_empty() {
        return Err(invalid(
            key("auth"),
            "\"signature\" needs at least one [[credentials]] access key",
        ));
    }
    // A function that demands signatures at the FC and Lambda doors demands a
    // key at the Azure door too, unless it says otherwise.
    let level = match (auth_level, mode) {
        (Some(AuthLevel::Anonymous), AuthMode::Signature) => {
            return Err(invalid(
                key("auth_level"),
                "\"anonymous\" would let the Azure door bypass auth = \"signature\"",
            ));
        }
        (Some(l), _) => l,
        (None, AuthMode::Signature) => AuthLevel::Function,
        (None, AuthMode::None) => AuthLevel::Anonymous,
    };
    let own = keys(&key("function_keys"), function_keys, config_dir)?;
    // Derived from `auth`, a key-less Azure door just refuses every call;
    // asked for in so many words, it is a mistake worth stopping for.
    if auth_level == Some(AuthLevel::Function) && own.is_empty() && gw.host_keys.is_empty() {
        return Err(invalid(
            key("auth_level"),
            "\"function\" needs function_keys or [azure] host_keys: every call would be refused",
        ));
    }
    Ok((mode, level, own))
}

//! `[[functions]]`: each function's program, size, ingress policy,
//! throttling, asynchronous policy, credentials, backends and sandbox.

use super::backends::{self, OutboundKey};
use super::ingress::{VpcCidrs, compile_rules};
use super::{
    AsyncPolicy, ConfigError, FunctionConfig, FunctionSection, FunctionThrottle, auth, invalid,
    quota,
};
use crate::auth::GatewayAuth;
use crate::ingress::VpcTable;
use crate::ingress::policy::{IngressPolicy, MAX_VPC_BINDINGS};
use crate::ingress::rules::RuleSet;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Function Compute's limits on these values.
const MEMORY_MB: std::ops::RangeInclusive<u32> = 64..=32768;
const TIMEOUT_S: std::ops::RangeInclusive<u64> = 1..=86400;
const CONCURRENCY: std::ops::RangeInclusive<u32> = 1..=200;
/// The largest writable area of an instance: FC's largest temporary disk, 10 GB.
pub(super) const DISK_MB_MAX: u32 = 10_240;

/// What every function is validated against.
pub(super) struct Context<'a> {
    pub vpcs: &'a VpcTable,
    pub vpc_cidrs: &'a VpcCidrs<'a>,
    pub default_rules: &'a Arc<RuleSet>,
    pub auth: &'a GatewayAuth,
    pub outbound_keys: &'a [(String, OutboundKey)],
    pub config_dir: &'a Path,
    /// The gateway executable's folder (`{bin_dir}` in commands).
    pub bin_dir: PathBuf,
}

/// `sections`: each with where it was written (`functions[3]`, or a file
/// of `functions_dir` and its index there), for the errors' keys.
pub(super) fn functions(
    sections: impl Iterator<Item = (String, FunctionSection)>,
    cx: &Context<'_>,
) -> Result<Vec<Arc<FunctionConfig>>, ConfigError> {
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (at, f) in sections {
        let key = |k: &str| format!("{at}.{k}");
        if !valid_function_name(&f.name) {
            let why = format!(
                "{:?}: 1-64 letters, digits, '_' or '-', starting with a letter or '_'",
                f.name
            );
            return Err(invalid(key("name"), why));
        }
        if !names.insert(f.name.clone()) {
            let why = format!("duplicate function name {:?}", f.name);
            return Err(invalid(key("name"), why));
        }
        out.push(Arc::new(function(&key, f, cx)?));
    }
    Ok(out)
}

fn function(
    key: &dyn Fn(&str) -> String,
    f: FunctionSection,
    cx: &Context<'_>,
) -> Result<FunctionConfig, ConfigError> {
    let backends = backends::backends(key, &f.backends, cx.outbound_keys, cx.vpcs, cx.config_dir)?;
    let sandboxed = backends.is_empty()
        || (backends.iter()).any(|b| matches!(b.kind, backends::BackendKind::Sandbox));
    if sandboxed && (f.command.is_empty() || f.command[0].is_empty()) {
        return Err(invalid(key("command"), "must name a program"));
    }
    if !sandboxed && f.min_instances > 0 {
        return Err(invalid(
            key("min_instances"),
            "needs a sandbox backend (no instance of this function runs here)",
        ));
    }
    sizes(key, &f)?;
    let ingress = Arc::new(ingress(key, &f, cx)?);
    let throttle = throttle(key, &f)?;
    let asynchronous = asynchronous(key, &f)?;
    let egress = egress_policy(key, f.egress, f.vpc_id.as_deref(), cx.vpc_cidrs)?;
    sandbox_paths(key, &f)?;
    let (auth, auth_level, function_keys) = auth::function(
        key,
        cx.auth,
        f.auth,
        f.auth_level,
        &f.function_keys,
        cx.config_dir,
    )?;
    let command = (f.command.iter())
        .map(|a| {
            a.replace("{bin_dir}", &cx.bin_dir.to_string_lossy())
                .replace("{config_dir}", &cx.config_dir.to_string_lossy())
        })
        .collect();
    Ok(FunctionConfig {
        name: f.name.into(),
        command,
        backends,
        env: f.env,
        memory_mb: f.memory_mb,
        timeout: Duration::from_secs(f.timeout_s),
        instance_concurrency: f.instance_concurrency,
        idle_timeout: Duration::from_secs(f.idle_timeout_s),
        min_instances: f.min_instances,
        ingress,
        throttle,
        asynchronous,
        auth,
        auth_level,
        function_keys,
        egress,
        writable_paths: f.writable_paths,
        readable_paths: f.readable_paths,
        disk_mb: f.disk_mb,
    })
}

/// Memory, timeout, concurrency, idle time, warm instances, disk.
fn sizes(key: &dyn Fn(&str) -> String, f: &FunctionSection) -> Result<(), ConfigError> {
    let outside = |k: &str, v: &dyn std::fmt::Display, range: &str| {
        Err(invalid(key(k), format!("{v} is outside {range}")))
    };
    if !MEMORY_MB.contains(&f.memory_mb) {
        return outside("memory_mb", &f.memory_mb, "64..=32768");
    }
    if !TIMEOUT_S.contains(&f.timeout_s) {
        return outside("timeout_s", &f.timeout_s, "1..=86400");
    }
    if !CONCURRENCY.contains(&f.instance_concurrency) {
        return outside("instance_concurrency", &f.instance_concurrency, "1..=200");
    }
    if f.idle_timeout_s == 0 {
        return Err(invalid(key("idle_timeout_s"), "must be greater than 0"));
    }
    if f.min_instances > 300 {
        return Err(invalid(key("min_instances"), "must be at most 300"));
    }
    if !(1..=DISK_MB_MAX).contains(&f.disk_mb) {
        return outside("disk_mb", &f.disk_mb, &format!("1..={DISK_MB_MAX}"));
    }
    Ok(())
}

/// VPC bindings, then the function's access rules (or the gateway's).
fn ingress(
    key: &dyn Fn(&str) -> String,
    f: &FunctionSection,
    cx: &Context<'_>,
) -> Result<IngressPolicy, ConfigError> {
    if f.vpc_bindings.len() > MAX_VPC_BINDINGS {
        let n = f.vpc_bindings.len();
        let why = format!("{n} VPCs bound; at most {MAX_VPC_BINDINGS}");
        return Err(invalid(key("vpc_bindings"), why));
    }
    let mut vpc_bindings = Vec::new();
    for (j, v) in f.vpc_bindings.iter().enumerate() {
        let id = cx.vpcs.get(v).ok_or_else(|| {
            let why =
                format!("unknown VPC {v:?}: declare it in [[networks]] or a private endpoint");
            invalid(key(&format!("vpc_bindings[{j}]")), why)
        })?;
        vpc_bindings.push(id);
    }
    vpc_bindings.sort();
    vpc_bindings.dedup();
    let (rules, rules_from_function) = match &f.access_rules {
        Some(r) => {
            let rules = compile_rules(&key("access_rules"), r, cx.vpcs)?;
            (Arc::new(rules), true)
        }
        None => (cx.default_rules.clone(), false),
    };
    Ok(IngressPolicy {
        vpc_bindings,
        rules,
        rules_from_function,
    })
}

fn throttle(
    key: &dyn Fn(&str) -> String,
    f: &FunctionSection,
) -> Result<FunctionThrottle, ConfigError> {
    if f.max_concurrency == Some(0) {
        let why = "must be at least 1 (omit it for no limit)";
        return Err(invalid(key("max_concurrency"), why));
    }
    if f.queue_timeout_ms > 600_000 {
        return Err(invalid(key("queue_timeout_ms"), "must be at most 600000"));
    }
    if f.queue_max == 0 {
        return Err(invalid(key("queue_max"), "must be at least 1"));
    }
    Ok(FunctionThrottle {
        rate: quota(&key("rate_limit"), f.rate_limit)?,
        caller_rate: quota(&key("caller_rate_limit"), f.caller_rate_limit)?,
        max_concurrency: f.max_concurrency,
        queue_timeout: Duration::from_millis(f.queue_timeout_ms),
        queue_max: f.queue_max as usize,
    })
}

fn asynchronous(
    key: &dyn Fn(&str) -> String,
    f: &FunctionSection,
) -> Result<AsyncPolicy, ConfigError> {
    if f.async_max_retries > 8 {
        return Err(invalid(key("async_max_retries"), "must be 0..=8"));
    }
    if !(1..=86400).contains(&f.async_max_event_age_s) {
        return Err(invalid(key("async_max_event_age_s"), "must be 1..=86400"));
    }
    if !(1..=1000).contains(&f.async_max_concurrency) {
        return Err(invalid(key("async_max_concurrency"), "must be 1..=1000"));
    }
    Ok(AsyncPolicy {
        max_retries: f.async_max_retries,
        max_event_age: Duration::from_secs(f.async_max_event_age_s),
        max_concurrency: f.async_max_concurrency,
        on_success: destination(&key("on_success"), f.on_success.as_deref())?,
        on_failure: destination(&key("on_failure"), f.on_failure.as_deref())?,
    })
}

/// The host paths an isolated instance may write and read.
fn sandbox_paths(key: &dyn Fn(&str) -> String, f: &FunctionSection) -> Result<(), ConfigError> {
    for (what, list) in [
        ("writable_paths", &f.writable_paths),
        ("readable_paths", &f.readable_paths),
    ] {
        for (j, p) in list.iter().enumerate() {
            if j >= 16 {
                return Err(invalid(key(&format!("{what}[{j}]")), "at most 16 paths"));
            }
            sandbox_runtime::rootfs::check_path(p)
                .map_err(|why| invalid(key(&format!("{what}[{j}]")), why))?;
        }
    }
    Ok(())
}

/// A destination URL: absolute, HTTP or HTTPS.
fn destination(key: &str, v: Option<&str>) -> Result<Option<http::Uri>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    let uri: http::Uri = v
        .parse()
        .map_err(|_| invalid(key, format!("{v:?} is not a URL")))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(Some(uri)),
        _ => Err(invalid(
            key,
            format!("{v:?} must be an http:// or https:// URL"),
        )),
    }
}

/// A function's egress policy: `vpc` and `both` need a `vpc_id` of
/// `[[networks]]` with CIDRs; every other VPC's CIDRs are refused.
fn egress_policy(
    key: &dyn Fn(&str) -> String,
    mode: sandbox_runtime::api::EgressMode,
    vpc_id: Option<&str>,
    vpc_cidrs: &VpcCidrs<'_>,
) -> Result<sandbox_runtime::api::Egress, ConfigError> {
    use sandbox_runtime::api::EgressMode;
    let own = match vpc_id {
        Some(v) => Some(vpc_cidrs.get(v).ok_or_else(|| {
            invalid(
                key("vpc_id"),
                format!("{v:?} is not a [[networks]] VPC with cidrs"),
            )
        })?),
        None if matches!(mode, EgressMode::Vpc | EgressMode::Both) => {
            return Err(invalid(
                key("vpc_id"),
                format!("egress = {:?} needs the VPC's id", mode.as_str()),
            ));
        }
        None => None,
    };
    Ok(sandbox_runtime::api::Egress {
        mode,
        vpc_id: vpc_id.map(String::from),
        vpc_cidrs: own.cloned().unwrap_or_default(),
        refused_cidrs: vpc_cidrs
            .iter()
            .filter(|(id, _)| Some(**id) != vpc_id)
            .flat_map(|(_, c)| c.iter().cloned())
            .collect(),
    })
}

/// Function Compute's naming rule.
fn valid_function_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=64).contains(&b.len())
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
}

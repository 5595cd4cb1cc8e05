//! Where callers stand: `[[networks]]` (VPCs, their CIDRs and endpoint
//! ids), the listeners that say it for them (private endpoints, PROXY
//! protocol with its trusted proxies), and the gateway's default access
//! rules.

use super::{
    ConfigError, GatewaySection, IngressConfig, NetworkSection, RuleSection, addr, invalid, ms,
    positive,
};
use crate::ingress::networks::NetworkMap;
use crate::ingress::rules::{Match, Rule, RuleSet};
use crate::ingress::{VpcId, VpcTable};
use ipnet::IpNet;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

/// Each VPC's CIDRs, for instances' egress policies.
pub(super) type VpcCidrs<'a> = BTreeMap<&'a str, Vec<String>>;

/// The networks, VPCs and their CIDRs (with `[[networks]]`' endpoint ids).
struct Networks<'a> {
    vpcs: VpcTable,
    cidrs: Vec<(IpNet, VpcId)>,
    endpoints: HashMap<Box<str>, VpcId>,
    vpc_cidrs: VpcCidrs<'a>,
}

pub(super) fn ingress<'a>(
    g: &GatewaySection,
    networks: &'a [NetworkSection],
    listen: SocketAddr,
    admin_listen: SocketAddr,
    running: Option<&VpcTable>,
) -> Result<(Arc<IngressConfig>, VpcCidrs<'a>), ConfigError> {
    let Networks {
        mut vpcs,
        cidrs,
        endpoints,
        vpc_cidrs,
    } = self::networks(networks, running)?;
    let mut private_endpoints = Vec::new();
    for (i, p) in g.private_endpoints.iter().enumerate() {
        let key = |k: &str| format!("gateway.private_endpoints[{i}].{k}");
        let at = addr(&key("listen"), &p.listen)?;
        valid_vpc_id(&key("vpc_id"), &p.vpc_id)?;
        private_endpoints.push((at, vpcs.intern(&p.vpc_id)));
    }
    let mut proxy_listeners = Vec::new();
    for (i, p) in g.proxy_listeners.iter().enumerate() {
        let key = format!("gateway.proxy_listeners[{i}].listen");
        proxy_listeners.push(addr(&key, &p.listen)?);
    }
    distinct_listeners(listen, admin_listen, &private_endpoints, &proxy_listeners)?;
    let mut trusted_proxies = Vec::new();
    for (i, c) in g.trusted_proxies.iter().enumerate() {
        trusted_proxies.push(parse_cidr(&format!("gateway.trusted_proxies[{i}]"), c)?);
    }
    if !proxy_listeners.is_empty() && trusted_proxies.is_empty() {
        return Err(invalid(
            "gateway.trusted_proxies",
            "proxy_listeners need at least one trusted proxy CIDR",
        ));
    }
    let default_rules = compile_rules("gateway.access_rules", &g.access_rules, &vpcs)?;
    let config = IngressConfig {
        networks: NetworkMap::new(cidrs, endpoints),
        vpcs,
        trusted_proxies,
        private_endpoints,
        proxy_listeners,
        proxy_header_timeout: ms(positive(
            "gateway.proxy_header_timeout_ms",
            g.proxy_header_timeout_ms,
        )?),
        default_rules: Arc::new(default_rules),
    };
    Ok((Arc::new(config), vpc_cidrs))
}

fn networks<'a>(
    sections: &'a [NetworkSection],
    running: Option<&VpcTable>,
) -> Result<Networks<'a>, ConfigError> {
    let mut out = Networks {
        vpcs: running.map(VpcTable::seeded).unwrap_or_default(),
        cidrs: Vec::new(),
        endpoints: HashMap::new(),
        vpc_cidrs: BTreeMap::new(),
    };
    let mut seen_cidr: HashMap<IpNet, &str> = HashMap::new();
    for (i, n) in sections.iter().enumerate() {
        let key = |k: &str| format!("networks[{i}].{k}");
        valid_vpc_id(&key("vpc_id"), &n.vpc_id)?;
        if out.vpcs.get(&n.vpc_id).is_some() {
            let why = format!("duplicate VPC {:?}", n.vpc_id);
            return Err(invalid(key("vpc_id"), why));
        }
        let vpc = out.vpcs.intern(&n.vpc_id);
        for (j, c) in n.cidrs.iter().enumerate() {
            let net = parse_cidr(&key(&format!("cidrs[{j}]")), c)?;
            if let Some(other) = seen_cidr.insert(net, &n.vpc_id) {
                let why = format!("{net} is already in {other:?}");
                return Err(invalid(key(&format!("cidrs[{j}]")), why));
            }
            out.cidrs.push((net, vpc));
            let own = out.vpc_cidrs.entry(n.vpc_id.as_str()).or_default();
            own.push(net.to_string());
        }
        for (j, e) in n.endpoint_ids.iter().enumerate() {
            if e.is_empty() || out.endpoints.insert(e.as_str().into(), vpc).is_some() {
                let why = format!("{e:?} is empty or listed twice");
                return Err(invalid(key(&format!("endpoint_ids[{j}]")), why));
            }
        }
    }
    Ok(out)
}

/// No two listeners on one address (port 0 asks for any free port).
fn distinct_listeners(
    listen: SocketAddr,
    admin_listen: SocketAddr,
    private_endpoints: &[(SocketAddr, VpcId)],
    proxy_listeners: &[SocketAddr],
) -> Result<(), ConfigError> {
    let mut all = vec![
        ("gateway.listen".to_string(), listen),
        ("gateway.admin_listen".to_string(), admin_listen),
    ];
    all.extend(
        private_endpoints
            .iter()
            .enumerate()
            .map(|(i, (a, _))| (format!("gateway.private_endpoints[{i}].listen"), *a)),
    );
    all.extend(
        proxy_listeners
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("gateway.proxy_listeners[{i}].listen"), *a)),
    );
    for (i, (key, a)) in all.iter().enumerate() {
        if a.port() != 0 && all[..i].iter().any(|(_, b)| b == a) {
            let why = format!("{a} is already used by another listener");
            return Err(invalid(key, why));
        }
    }
    Ok(())
}

/// A CIDR, or a bare address meaning a single host.
pub(super) fn parse_cidr(key: &str, v: &str) -> Result<IpNet, ConfigError> {
    v.parse::<IpNet>()
        .or_else(|_| v.parse::<std::net::IpAddr>().map(IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| {
            invalid(
                key,
                format!("{v:?} is not a CIDR (like 10.0.0.0/8 or fd00::/8)"),
            )
        })
}

pub(super) fn valid_vpc_id(key: &str, v: &str) -> Result<(), ConfigError> {
    let ok = (1..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{v:?}: 1-128 letters, digits, '-' or '_'"),
        ))
    }
}

pub(super) fn compile_rules(
    key: &str,
    rules: &[RuleSection],
    vpcs: &VpcTable,
) -> Result<RuleSet, ConfigError> {
    let mut out = Vec::with_capacity(rules.len());
    for (i, r) in rules.iter().enumerate() {
        let k = |f: &str| format!("{key}[{i}].{f}");
        let matches = match (&r.cidr, &r.vpc_id) {
            (Some(c), None) => Match::Cidr(parse_cidr(&k("cidr"), c)?),
            (None, Some(v)) => Match::Vpc(vpcs.get(v).ok_or_else(|| {
                invalid(
                    k("vpc_id"),
                    format!("unknown VPC {v:?}: declare it in [[networks]] or a private endpoint"),
                )
            })?),
            _ => {
                return Err(invalid(
                    format!("{key}[{i}]"),
                    "a rule needs exactly one of cidr or vpc_id",
                ));
            }
        };
        out.push(Rule {
            priority: r.priority,
            action: r.action,
            matches,
            name: r.name.as_deref().map(Into::into),
        });
    }
    Ok(RuleSet::new(out, vpcs.len()))
}

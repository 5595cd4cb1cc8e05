//! Ingress: where a caller stands, and whether it may reach a function from there.
//!
//! - [`Caller`] is resolved once per connection (not per request) by the
//!   connection layer: its source address and its [`Network`], either the
//!   internet or one configured VPC. Three sources, in this precedence:
//!   a private-endpoint listener (bound to one VPC); a PROXY protocol header from a
//!   trusted proxy (its VPC endpoint TLV, else its source address); the
//!   source-address map ([`networks::NetworkMap`], longest-prefix match).
//!   Request headers such as `X-Forwarded-For` are never consulted.
//! - [`policy::IngressPolicy`] is each function's compiled policy: its VPC
//!   bindings, then its access rules ([`rules::RuleSet`]). Both apply, in that
//!   order; the first refusal answers 403 `AccessDenied`.
//! - [`Origin::Internal`] marks invocations the gateway makes itself (async
//!   retries, later): they are exempt, and only gateway code can build one.

pub mod networks;
pub mod policy;
pub mod rules;

use std::net::IpAddr;
use std::sync::Arc;

/// A VPC, as an index into [`VpcTable`] (interned at config load).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VpcId(pub u16);

/// Where a caller stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    Internet,
    Vpc(VpcId),
}

/// A client, as resolved at connection time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub ip: IpAddr,
    pub network: Network,
}

/// Who asks for an invocation.
#[derive(Debug, Clone, Copy)]
pub enum Origin {
    /// A client connection; subject to ingress policy.
    Client(Caller),
    /// The gateway itself (e.g. an async retry); exempt from ingress policy.
    Internal,
}

/// The VPC ids the configuration knows, interned. A reloaded
/// configuration's table starts from the running one's ([`VpcTable::seeded`]),
/// so a VPC keeps its id for as long as the process lives: connections
/// classified before a reload still name the same VPC after it.
#[derive(Debug, Default, Clone)]
pub struct VpcTable {
    names: Vec<Arc<str>>,
    /// Declared by this configuration (a seeded name may not be).
    known: Vec<bool>,
}

impl VpcTable {
    /// The ids of `running`, none of them declared yet.
    pub fn seeded(running: &VpcTable) -> VpcTable {
        VpcTable {
            names: running.names.clone(),
            known: vec![false; running.names.len()],
        }
    }

    pub fn intern(&mut self, name: &str) -> VpcId {
        if let Some(i) = self.names.iter().position(|n| &**n == name) {
            self.known[i] = true;
            return VpcId(i as u16);
        }
        self.names.push(name.into());
        self.known.push(true);
        VpcId((self.names.len() - 1) as u16)
    }

    /// A VPC this configuration declares.
    pub fn get(&self, name: &str) -> Option<VpcId> {
        (self.names.iter())
            .position(|n| &**n == name)
            .filter(|i| self.known[*i])
            .map(|i| VpcId(i as u16))
    }

    pub fn name(&self, id: VpcId) -> &str {
        &self.names[id.0 as usize]
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The network's name as users write it: `internet` or the VPC id.
    pub fn describe(&self, n: Network) -> &str {
        match n {
            Network::Internet => "internet",
            Network::Vpc(v) => self.name(v),
        }
    }
}

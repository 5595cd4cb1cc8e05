//! The source-network map: which VPC a source address belongs to, and which
//! VPC a VPC endpoint / private link id belongs to.
//!
//! Compiled once at config load into an LC-trie (longest-prefix match, cost
//! independent of the number of CIDRs); never changed afterwards.

use super::{Network, VpcId};
use ipnet::IpNet;
use iptrie::IpLCTrieMap;
use std::collections::HashMap;
use std::net::IpAddr;

pub struct NetworkMap {
    cidrs: IpLCTrieMap<Option<VpcId>>,
    endpoints: HashMap<Box<str>, VpcId>,
}

impl std::fmt::Debug for NetworkMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkMap")
            .field("prefixes", &self.cidrs.len())
            .field("endpoints", &self.endpoints.len())
            .finish()
    }
}

impl NetworkMap {
    /// `cidrs` must not repeat a prefix (config validation guarantees it).
    pub fn new(
        cidrs: impl IntoIterator<Item = (IpNet, VpcId)>,
        endpoints: HashMap<Box<str>, VpcId>,
    ) -> Self {
        let mut trie = iptrie::IpRTrieMap::with_roots(None, None);
        for (net, vpc) in cidrs {
            trie.insert(net.trunc(), Some(vpc));
        }
        NetworkMap {
            cidrs: trie.compress(),
            endpoints,
        }
    }

    pub fn network_of(&self, ip: IpAddr) -> Network {
        match self.cidrs.lookup(&IpNet::from(ip.to_canonical())).1 {
            Some(v) => Network::Vpc(*v),
            None => Network::Internet,
        }
    }

    pub fn endpoint(&self, id: &str) -> Option<VpcId> {
        self.endpoints.get(id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_and_misses_are_internet() {
        let a = VpcId(0);
        let b = VpcId(1);
        let m = NetworkMap::new(
            [
                ("10.0.0.0/8".parse().unwrap(), a),
                ("10.1.0.0/16".parse().unwrap(), b),
                ("127.0.0.2/32".parse().unwrap(), a),
                ("fd00::/8".parse().unwrap(), b),
            ],
            HashMap::from([("vpce-1".into(), b)]),
        );
        let net = |s: &str| m.network_of(s.parse().unwrap());
        assert_eq!(net("10.2.3.4"), Network::Vpc(a));
        assert_eq!(net("10.1.3.4"), Network::Vpc(b));
        assert_eq!(net("127.0.0.2"), Network::Vpc(a));
        assert_eq!(net("127.0.0.3"), Network::Internet);
        assert_eq!(net("fd12::1"), Network::Vpc(b));
        assert_eq!(net("::1"), Network::Internet);
        // An IPv4-mapped IPv6 source is the IPv4 address.
        assert_eq!(net("::ffff:10.1.0.1"), Network::Vpc(b));
        assert_eq!(m.endpoint("vpce-1"), Some(b));
        assert_eq!(m.endpoint("vpce-2"), None);
    }
}

//! Access rules: a priority-ordered allow/deny list of CIDRs and VPCs with an
//! implicit deny-all at its end (Azure's access restrictions).
//!
//! Semantics: rules are ordered by ascending `priority` (ties: the order they
//! are written); the first rule that matches the caller decides; if rules
//! exist and none matches, the implicit deny-all does. No rules: allow.
//!
//! Compiled so that evaluation cost does not depend on the number of rules:
//! - every CIDR rule that contains an address lies on the chain of prefixes
//!   ending at the address's longest-prefix match, so each prefix in an
//!   LC-trie stores the best-ranked rule among itself and all prefixes that
//!   contain it; one lookup gives the first matching CIDR rule;
//! - VPC rules are an array indexed by [`VpcId`]: the best-ranked rule per VPC;
//! - the decision is the better-ranked of the two.

use super::{Caller, Network, VpcId};
use ipnet::IpNet;
use iptrie::IpLCTrieMap;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    Cidr(IpNet),
    Vpc(VpcId),
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub priority: u32,
    pub action: Action,
    pub matches: Match,
    pub name: Option<Arc<str>>,
}

/// The rule that decided, or the implicit deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    NoRules,
    Rule(usize),
    ImplicitDeny,
}

pub struct RuleSet {
    /// Sorted by (priority, written order): the index is the rank.
    rules: Vec<Rule>,
    cidr_best: IpLCTrieMap<Option<u32>>,
    vpc_best: Vec<Option<u32>>,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.rules).finish()
    }
}

impl RuleSet {
    pub fn new(mut rules: Vec<Rule>, vpc_count: usize) -> RuleSet {
        rules.sort_by_key(|r| r.priority); // stable: ties keep written order
        let mut trie = iptrie::IpRTrieMap::with_roots(None, None);
        let cidrs: Vec<(usize, IpNet)> = rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match r.matches {
                Match::Cidr(n) => Some((i, n.trunc())),
                Match::Vpc(_) => None,
            })
            .collect();
        for (_, net) in &cidrs {
            // Best rank among rules whose prefix contains this one (itself included).
            let best = cidrs
                .iter()
                .filter(|(_, outer)| outer.contains(net))
                .map(|(rank, _)| *rank as u32)
                .min();
            trie.insert(*net, best);
        }
        let mut vpc_best = vec![None; vpc_count];
        for (rank, r) in rules.iter().enumerate() {
            if let Match::Vpc(v) = r.matches
                && let Some(slot) = vpc_best.get_mut(v.0 as usize)
            {
                slot.get_or_insert(rank as u32);
            }
        }
        RuleSet {
            rules,
            cidr_best: trie.compress(),
            vpc_best,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn evaluate(&self, caller: &Caller) -> Verdict {
        if self.rules.is_empty() {
            return Verdict::NoRules;
        }
        let by_cidr = *self
            .cidr_best
            .lookup(&IpNet::from(caller.ip.to_canonical()))
            .1;
        let by_vpc = match caller.network {
            Network::Vpc(v) => self.vpc_best.get(v.0 as usize).copied().flatten(),
            Network::Internet => None,
        };
        match by_cidr.into_iter().chain(by_vpc).min() {
            Some(rank) => Verdict::Rule(rank as usize),
            None => Verdict::ImplicitDeny,
        }
    }

    pub fn allows(&self, v: Verdict) -> bool {
        match v {
            Verdict::NoRules => true,
            Verdict::Rule(i) => self.rules[i].action == Action::Allow,
            Verdict::ImplicitDeny => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::IpAddr;

    fn rule(priority: u32, action: Action, m: Match) -> Rule {
        Rule {
            priority,
            action,
            matches: m,
            name: None,
        }
    }

    fn caller(ip: &str, network: Network) -> Caller {
        Caller {
            ip: ip.parse().unwrap(),
            network,
        }
    }

    #[test]
    fn priority_order_first_match_and_implicit_deny() {
        let a = VpcId(0);
        let set = RuleSet::new(
            vec![
                rule(200, Action::Allow, Match::Vpc(a)),
                rule(
                    100,
                    Action::Deny,
                    Match::Cidr("10.1.9.0/24".parse().unwrap()),
                ),
                rule(
                    300,
                    Action::Allow,
                    Match::Cidr("2001:db8::/32".parse().unwrap()),
                ),
                rule(
                    50,
                    Action::Allow,
                    Match::Cidr("10.1.9.7/32".parse().unwrap()),
                ),
            ],
            1,
        );
        let decide = |c: Caller| set.allows(set.evaluate(&c));
        assert!(
            decide(caller("10.1.9.7", Network::Vpc(a))),
            "priority 50 beats 100"
        );
        assert!(
            !decide(caller("10.1.9.8", Network::Vpc(a))),
            "priority 100 beats 200"
        );
        assert!(decide(caller("10.1.1.1", Network::Vpc(a))), "VPC rule");
        assert!(
            decide(caller("2001:db8::5", Network::Internet)),
            "IPv6 rule"
        );
        assert_eq!(
            set.evaluate(&caller("192.0.2.1", Network::Internet)),
            Verdict::ImplicitDeny
        );
        let empty = RuleSet::new(vec![], 1);
        assert_eq!(
            empty.evaluate(&caller("192.0.2.1", Network::Internet)),
            Verdict::NoRules
        );
    }

    /// The first matching rule in (priority, written) order, by a plain scan.
    fn naive(rules: &[Rule], c: &Caller) -> Option<(u32, Action, String)> {
        let mut sorted: Vec<&Rule> = rules.iter().collect();
        sorted.sort_by_key(|r| r.priority);
        sorted
            .into_iter()
            .find(|r| match &r.matches {
                Match::Cidr(n) => n.contains(&c.ip.to_canonical()),
                Match::Vpc(v) => c.network == Network::Vpc(*v),
            })
            .map(|r| (r.priority, r.action, format!("{:?}", r.matches)))
    }

    fn arb_rule() -> impl Strategy<Value = Rule> {
        let v4 =
            (any::<[u8; 4]>(), 0u8..=32).prop_map(|(o, l)| IpNet::new(IpAddr::from(o), l).unwrap());
        let v6 = (any::<[u8; 16]>(), 0u8..=128)
            .prop_map(|(o, l)| IpNet::new(IpAddr::from(o), l).unwrap());
        let m = prop_oneof![
            v4.prop_map(Match::Cidr),
            v6.prop_map(Match::Cidr),
            (0u16..3).prop_map(|v| Match::Vpc(VpcId(v))),
        ];
        (0u32..20, any::<bool>(), m)
            .prop_map(|(p, allow, m)| rule(p, if allow { Action::Allow } else { Action::Deny }, m))
    }

    proptest! {
        /// The compiled lookup agrees with a linear scan, for random rules
        /// (nested and overlapping prefixes, equal priorities, both families).
        #[test]
        fn compiled_rules_match_a_linear_scan(
            rules in proptest::collection::vec(arb_rule(), 0..24),
            // Addresses near the rules' prefixes are likelier to hit them.
            probes in proptest::collection::vec((any::<u32>(), any::<u128>(), 0u16..4, any::<bool>()), 1..32),
        ) {
            let set = RuleSet::new(rules.clone(), 3);
            for (v4, v6, vpc, six) in probes {
                let mut ip: IpAddr = if six { IpAddr::from(v6.to_be_bytes()) } else { IpAddr::from(v4.to_be_bytes()) };
                // Half of the probes are taken inside a random rule's prefix.
                if v4.is_multiple_of(2)
                    && !rules.is_empty()
                    && let Match::Cidr(n) = &rules[(v4 as usize / 2) % rules.len()].matches
                {
                    ip = n.network();
                }
                let network = if vpc == 3 { Network::Internet } else { Network::Vpc(VpcId(vpc)) };
                let c = Caller { ip, network };
                let want = naive(&rules, &c);
                let got = match set.evaluate(&c) {
                    Verdict::Rule(i) => {
                        let r = &set.rules()[i];
                        Some((r.priority, r.action, format!("{:?}", r.matches)))
                    }
                    _ => None,
                };
                // Ties in priority go to the rule written first, in both.
                prop_assert_eq!(want, got, "caller {:?}", c);
            }
        }
    }
}

//! A function's compiled ingress policy and the check run for every
//! invocation, before the body is read or any instance is touched.
//!
//! Order: (1) VPC bindings: when a function is bound to VPCs, only callers in
//! those VPCs pass (Function Compute's "allow only specified VPCs"); (2) access
//! rules: the function's own, or the gateway-wide defaults when it has none.
//! The bindings cover every qualifier: the check does not look at it.

use super::rules::{Action, RuleSet, Verdict};
use super::{Network, Origin, VpcId, VpcTable};
use std::sync::Arc;

/// Function Compute's limit on bound VPCs per function.
pub const MAX_VPC_BINDINGS: usize = 20;

#[derive(Debug)]
pub struct IngressPolicy {
    /// Sorted; empty means "not bound".
    pub vpc_bindings: Vec<VpcId>,
    pub rules: Arc<RuleSet>,
    /// Whether `rules` are the function's own or the gateway defaults.
    pub rules_from_function: bool,
}

/// Why a call was refused. Rendered by each API dialect (FC: 403 `AccessDenied`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// Bound to VPCs; the caller is elsewhere (its network's name).
    VpcBinding { from: Arc<str> },
    /// An explicit deny rule matched.
    Rule {
        name: Option<Arc<str>>,
        priority: u32,
    },
    /// Rules exist and none matched.
    ImplicitDeny,
}

impl Denial {
    /// The bounded `reason` label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::VpcBinding { .. } => "vpc_binding",
            Denial::Rule { .. } | Denial::ImplicitDeny => "access_rule",
        }
    }
}

impl IngressPolicy {
    pub fn allow_all() -> Self {
        IngressPolicy {
            vpc_bindings: Vec::new(),
            rules: Arc::new(RuleSet::new(Vec::new(), 0)),
            rules_from_function: false,
        }
    }

    pub fn check(&self, origin: &Origin, vpcs: &VpcTable) -> Result<(), Denial> {
        let caller = match origin {
            Origin::Internal => return Ok(()),
            Origin::Client(c) => c,
        };
        if !self.vpc_bindings.is_empty() {
            let bound = match caller.network {
                Network::Vpc(v) => self.vpc_bindings.binary_search(&v).is_ok(),
                Network::Internet => false,
            };
            if !bound {
                return Err(Denial::VpcBinding {
                    from: vpcs.describe(caller.network).into(),
                });
            }
        }
        let verdict = self.rules.evaluate(caller);
        if self.rules.allows(verdict) {
            return Ok(());
        }
        Err(match verdict {
            Verdict::Rule(i) => {
                let r = &self.rules.rules()[i];
                debug_assert_eq!(r.action, Action::Deny);
                Denial::Rule {
                    name: r.name.clone(),
                    priority: r.priority,
                }
            }
            Verdict::ImplicitDeny | Verdict::NoRules => Denial::ImplicitDeny,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::Caller;
    use crate::ingress::rules::{Match, Rule};

    #[test]
    fn bindings_then_rules_and_internal_is_exempt() {
        let mut vpcs = VpcTable::default();
        let a = vpcs.intern("vpc-a");
        let b = vpcs.intern("vpc-b");
        let rules = RuleSet::new(
            vec![
                Rule {
                    priority: 100,
                    action: Action::Deny,
                    matches: Match::Cidr("10.1.9.0/24".parse().unwrap()),
                    name: Some("quarantine".into()),
                },
                Rule {
                    priority: 200,
                    action: Action::Allow,
                    matches: Match::Vpc(a),
                    name: None,
                },
            ],
            vpcs.len(),
        );
        let p = IngressPolicy {
            vpc_bindings: vec![a],
            rules: Arc::new(rules),
            rules_from_function: true,
        };
        let c = |ip: &str, network| {
            Origin::Client(Caller {
                ip: ip.parse().unwrap(),
                network,
            })
        };
        assert_eq!(p.check(&c("10.1.1.1", Network::Vpc(a)), &vpcs), Ok(()));
        assert_eq!(
            p.check(&c("10.1.1.1", Network::Internet), &vpcs),
            Err(Denial::VpcBinding {
                from: "internet".into()
            })
        );
        assert_eq!(
            p.check(&c("10.1.1.1", Network::Vpc(b)), &vpcs),
            Err(Denial::VpcBinding {
                from: "vpc-b".into()
            })
        );
        assert_eq!(
            p.check(&c("10.1.9.9", Network::Vpc(a)), &vpcs),
            Err(Denial::Rule {
                name: Some("quarantine".into()),
                priority: 100
            })
        );
        assert_eq!(p.check(&Origin::Internal, &vpcs), Ok(()));
    }
}

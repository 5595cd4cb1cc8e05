//! Instance networking for `--isolation namespaces`: a network namespace per
//! instance, joined to the worker's host by a veth pair, with the function's
//! egress policy and egress metering enforced by the kernel inside it.
//!
//! Addresses. The worker owns one private range (`--instance-subnet`, or
//! else the first of [`CANDIDATE_SUBNETS`] that no other worker on the host
//! holds and no route of the host overlaps), locked against a second
//! worker on the host using it or a range overlapping it. Each instance takes a /30 of it: the host's end of
//! the veth pair is `.1`, the instance's `eth0` is `.2`, its default route
//! points at the host, and it serves the invocation contract on
//! `.2:`[`INSTANCE_PORT`] (`FC_SERVER_PORT` says so, as before). Gateways
//! on the worker's host reach it there directly; the host forwards (and
//! masquerades) what the instance sends beyond.
//!
//! Policy, as rules in the instance's own namespace (`iptables-restore`; the
//! function holds no capability, so it cannot change them), for every
//! packet it sends (TCP, UDP, DNS alike), in order:
//! 1. loopback, and answers on connections made to its serving port
//!    (gateways' calls: neither egress nor metered); DNS to the worker's
//!    forwarder at the host's end of its link ([`crate::dns`]), when its
//!    policy reaches an upstream resolver (counted under that resolver's
//!    network);
//! 2. refused: the worker's range (other instances, the host's veth ends),
//!    link-local addresses (cloud metadata services), and the CIDRs of VPCs
//!    that are not the function's;
//! 3. the function's VPC CIDRs: accepted in `vpc` and `both` modes, refused
//!    otherwise (counted under the VPC id);
//! 4. anything else is the internet: accepted in `internet` and `both`
//!    modes, refused otherwise.
//!
//! A refusal is a TCP reset or an ICMP port-unreachable, so `connect` and a
//! connected UDP socket fail at once, never by time-out. Incoming packets
//! are accepted and counted only from what the policy lets the instance
//! reach. The worker's host adds (with a comment naming the range, removed
//! at exit): forwarding for the range, masquerading of what leaves it, and a
//! refusal of connections from instances to the host itself.
//!
//! Metering: the accepting rules of steps 3 and 4 carry the kernel's byte
//! counters (IP packet lengths: headers included) per direction; the worker
//! reads them (`iptables-save -c` in the namespace) every few seconds and
//! at release, and adds the increase to `fngate_egress_bytes_total`.

use crate::api::{Egress, EgressBytes, EgressMode};
use ipnet::{IpNet, Ipv4Net};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::process::Command;

/// The ranges a worker picks from, in order, when none is configured.
pub const CANDIDATE_SUBNETS: &[&str] = &[
    "10.213.0.0/16",
    "10.212.0.0/16",
    "10.211.0.0/16",
    "10.210.0.0/16",
    "10.209.0.0/16",
    "10.208.0.0/16",
    "10.207.0.0/16",
    "10.206.0.0/16",
    "10.205.0.0/16",
    "10.204.0.0/16",
    "10.203.0.0/16",
    "10.202.0.0/16",
    "10.201.0.0/16",
    "10.200.0.0/16",
];
/// The port an isolated instance serves on (each has its own address).
pub const INSTANCE_PORT: u16 = 9000;

const NETNS_DIR: &str = "/run/netns";
const LOCK_DIR: &str = "/run/fngate";

/// The worker's share of the host's network.
pub struct Network {
    shared: Arc<Shared>,
    lock: (std::fs::File, PathBuf),
}

/// What building an instance's network needs, shared with the pool's
/// refills.
struct Shared {
    subnet: Ipv4Net,
    free: Arc<Mutex<Vec<u32>>>,
    /// The resolvers instances' queries are forwarded to.
    dns: Vec<std::net::SocketAddr>,
    pool: Pool,
}

/// How many policies the pool keeps namespaces for (the most recently
/// started ones).
const POOL_POLICIES: usize = 8;

/// Namespaces made ahead of need, so that a cold start does not wait for
/// `ip` and `iptables-restore`: up to `per_policy` for each of the
/// [`POOL_POLICIES`] egress policies most recently started (the default
/// policy from the worker's start). Taking one starts a refill in the
/// background; one refill runs at a time, so a burst of starts never turns
/// into a burst of processes.
struct Pool {
    per_policy: usize,
    // Cold-path lock: held to take or put one entry, never across an await.
    ready: Mutex<Vec<(Egress, Vec<InstanceNet>)>>,
    refill: tokio::sync::Semaphore,
    closed: AtomicBool,
}

impl Network {
    /// Checks the tools, takes the range (`subnet`, or a free one),
    /// enables forwarding and installs the host's rules. Fails with what is
    /// missing.
    pub fn setup(
        subnet: Option<Ipv4Net>,
        dns: Vec<std::net::SocketAddr>,
        pool: usize,
    ) -> Result<Network, String> {
        for tool in ["ip", "iptables", "iptables-restore", "iptables-save"] {
            let found = std::process::Command::new(tool)
                .arg("-V")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            if found.is_err() {
                return Err(format!(
                    "isolated instances need `{tool}` (Debian: apt-get install iproute2 iptables)"
                ));
            }
        }
        std::fs::create_dir_all(LOCK_DIR).map_err(|e| format!("{LOCK_DIR}: {e}"))?;
        let (subnet, lock, lock_path) = match subnet {
            Some(s) => {
                let s = s.trunc();
                if s.prefix_len() > 29 {
                    return Err(format!("--instance-subnet {s}: needs /29 or larger"));
                }
                if let Some(other) = held_ranges()
                    .into_iter()
                    .find(|h| *h != s && overlap(*h, s))
                {
                    return Err(format!(
                        "--instance-subnet {s} overlaps {other}, the range of another worker on this host: give each worker its own range"
                    ));
                }
                let (lock, path) = take_lock(s)?.ok_or_else(|| {
                    format!(
                        "another worker on this host uses --instance-subnet {s}: give each worker its own range"
                    )
                })?;
                (s, lock, path)
            }
            None => pick_subnet()?,
        };
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| format!("cannot enable IPv4 forwarding: {e}"))?;
        let slots = 1u32 << (32 - subnet.prefix_len() - 2);
        let net = Network {
            shared: Arc::new(Shared {
                subnet,
                free: Arc::new(Mutex::new((0..slots).rev().collect())),
                dns,
                pool: Pool {
                    per_policy: pool,
                    ready: Mutex::new(Vec::new()),
                    refill: tokio::sync::Semaphore::new(1),
                    closed: AtomicBool::new(false),
                },
            }),
            lock: (lock, lock_path),
        };
        // What a killed worker left: of this range, and of ranges no
        // worker holds any more.
        remove_namespaces_in(subnet);
        remove_host_rules(subnet);
        sweep_orphans(&net.lock.1);
        for rule in host_rules(subnet) {
            let out = std::process::Command::new("iptables")
                .args(["-w", "-t", rule.0, "-I"])
                .args(&rule.1)
                .output()
                .map_err(|e| format!("iptables: {e}"))?;
            if !out.status.success() {
                remove_host_rules(subnet);
                return Err(format!(
                    "iptables -t {} -I {}: {}",
                    rule.0,
                    rule.1.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(net)
    }

    pub fn subnet(&self) -> Ipv4Net {
        self.shared.subnet
    }

    pub fn dns_upstreams(&self) -> &[std::net::SocketAddr] {
        &self.shared.dns
    }

    /// Removes the host's rules and gives up the range; at the worker's stop
    /// (after [`Network::drain`]).
    pub fn cleanup(&self) {
        remove_host_rules(self.shared.subnet);
        // Still held: a worker starting on the range now makes a new file.
        let _ = std::fs::remove_file(&self.lock.1);
    }

    /// Makes namespaces for the default policy ahead of the first start.
    pub fn prewarm(&self) {
        Shared::refill(&self.shared, Egress::default());
    }

    /// Removes the pooled namespaces and stops refilling; at the worker's stop.
    pub async fn drain(&self) {
        let pool = &self.shared.pool;
        pool.closed.store(true, Ordering::Release);
        // A refill in progress finishes its one namespace and stops (its
        // processes are idle-priority: on a busy host the stop does not wait
        // for them long; what they leave is swept by the next start).
        let _wait =
            tokio::time::timeout(std::time::Duration::from_secs(2), pool.refill.acquire()).await;
        let all: Vec<InstanceNet> = std::mem::take(&mut *pool.ready.lock().unwrap())
            .into_iter()
            .flat_map(|(_, nets)| nets)
            .collect();
        for n in all {
            n.remove().await;
        }
    }

    /// Namespaces waiting in the pool.
    pub fn pooled(&self) -> usize {
        let ready = self.shared.pool.ready.lock().unwrap();
        ready.iter().map(|(_, n)| n.len()).sum()
    }

    /// Tops the pool up for `egress` in the background: called once the
    /// start that took from it is done, so that the refill's processes do
    /// not compete with that start for the CPU.
    pub fn refill(&self, egress: &Egress) {
        Shared::refill(&self.shared, egress.clone());
    }

    /// An instance's namespace, link and rules: a pooled one for its
    /// policy when there is one, else made now; [`Network::refill`] after.
    pub async fn create(&self, egress: &Egress) -> Result<InstanceNet, String> {
        let pool = &self.shared.pool;
        let taken = {
            let mut ready = pool.ready.lock().unwrap();
            match ready.iter().position(|(e, _)| e == egress) {
                Some(i) => {
                    // Most recently used last.
                    let entry = ready.remove(i);
                    ready.push(entry);
                    ready.last_mut().and_then(|(_, nets)| nets.pop())
                }
                None => None,
            }
        };
        match taken {
            Some(net) => Ok(net),
            None => self.shared.build(egress, false).await,
        }
    }
}

impl Shared {
    /// Tops the pool up for `egress` in the background (one refill at a
    /// time), and forgets the least recently used policies beyond
    /// [`POOL_POLICIES`].
    fn refill(shared: &Arc<Shared>, egress: Egress) {
        if shared.pool.per_policy == 0 || shared.pool.closed.load(Ordering::Acquire) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shared = shared.clone();
        rt.spawn(async move {
            let pool = &shared.pool;
            let Ok(_one) = pool.refill.acquire().await else {
                return;
            };
            loop {
                if pool.closed.load(Ordering::Acquire) {
                    return;
                }
                let have = {
                    let ready = pool.ready.lock().unwrap();
                    ready
                        .iter()
                        .find(|(e, _)| *e == egress)
                        .map_or(0, |(_, n)| n.len())
                };
                if have >= pool.per_policy {
                    break;
                }
                let net = match shared.build(&egress, true).await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot make a pooled instance network");
                        return;
                    }
                };
                if pool.closed.load(Ordering::Acquire) {
                    net.remove().await;
                    return;
                }
                let evicted = {
                    let mut ready = pool.ready.lock().unwrap();
                    match ready.iter_mut().find(|(e, _)| *e == egress) {
                        Some((_, nets)) => nets.push(net),
                        None => ready.push((egress.clone(), vec![net])),
                    }
                    let over = ready.len().saturating_sub(POOL_POLICIES);
                    ready.drain(..over).flat_map(|(_, n)| n).collect::<Vec<_>>()
                };
                for n in evicted {
                    n.remove().await;
                }
            }
        });
    }

    /// Makes an instance's namespace, link and rules.
    /// Makes an instance's namespace, link and rules; `idle`: its processes
    /// run at the idle priority (a refill must not slow the start, or the
    /// first calls, of the instance that just took from the pool).
    async fn build(&self, egress: &Egress, idle: bool) -> Result<InstanceNet, String> {
        let policy = Policy::parse(egress)?;
        let slot = self
            .free
            .lock()
            .unwrap()
            .pop()
            .ok_or_else(|| format!("no address left in {}", self.subnet))?;
        let base = u32::from(self.subnet.network()) + slot * 4;
        let host = Ipv4Addr::from(base + 1);
        let addr = Ipv4Addr::from(base + 2);
        let dns = policy.resolvers(&self.dns, self.subnet);
        let mut net = InstanceNet {
            dns,
            dns_stop: tokio_util::sync::CancellationToken::new(),
            dns_at: None,
            name: format!("fngate-{:08x}", u32::from(addr)),
            host_if: format!("fg{:08x}", u32::from(addr)),
            addr,
            slot,
            free: self.free.clone(),
            fd: Mutex::new(None),
            removed: AtomicBool::new(false),
            policy,
            last: Mutex::new(BTreeMap::new()),
        };
        match net.build(host, self.subnet, idle).await {
            Ok(()) => Ok(net),
            Err(e) => {
                net.remove().await;
                Err(e)
            }
        }
    }
}

/// An egress policy, parsed and checked.
struct Policy {
    mode: EgressMode,
    vpc_id: String,
    vpc: Vec<Ipv4Net>,
    refused: Vec<Ipv4Net>,
}

impl Policy {
    fn parse(e: &Egress) -> Result<Policy, String> {
        let cidrs = |list: &[String], what: &str| -> Result<Vec<Ipv4Net>, String> {
            let mut out = Vec::new();
            for c in list {
                match c.parse::<IpNet>() {
                    // The instance has no IPv6 route: a v6 range needs no rule.
                    Ok(IpNet::V6(_)) => {}
                    Ok(IpNet::V4(n)) => out.push(n.trunc()),
                    Err(e) => return Err(format!("egress {what} {c:?}: {e}")),
                }
            }
            Ok(out)
        };
        let vpc = cidrs(&e.vpc_cidrs, "vpc_cidrs")?;
        let vpc_id = e.vpc_id.clone().unwrap_or_default();
        if matches!(e.mode, EgressMode::Vpc | EgressMode::Both) && vpc_id.is_empty() {
            return Err(format!("egress {:?} needs a vpc_id", e.mode));
        }
        let id_ok = vpc_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !id_ok || vpc_id.len() > 200 {
            return Err(format!(
                "egress vpc_id {vpc_id:?}: [A-Za-z0-9._-]+ expected"
            ));
        }
        Ok(Policy {
            mode: e.mode,
            vpc_id,
            vpc,
            refused: cidrs(&e.refused_cidrs, "refused_cidrs")?,
        })
    }

    /// Which of `upstreams` the instance's DNS may go to, and the network
    /// its queries are counted under: those its own packets could reach. A
    /// resolver on the host's loopback answers for the internet.
    fn resolvers(
        &self,
        upstreams: &[std::net::SocketAddr],
        subnet: Ipv4Net,
    ) -> (Vec<std::net::SocketAddr>, String) {
        let vpc_ok = matches!(self.mode, EgressMode::Vpc | EgressMode::Both);
        let inet_ok = matches!(self.mode, EgressMode::Internet | EgressMode::Both);
        let mut network = String::new();
        let mut out = Vec::new();
        for up in upstreams {
            let std::net::IpAddr::V4(ip) = up.ip() else {
                continue;
            };
            let class = if ip.is_link_local()
                || subnet.contains(&ip)
                || self.refused.iter().any(|c| c.contains(&ip))
            {
                None
            } else if self.vpc.iter().any(|c| c.contains(&ip)) {
                vpc_ok.then(|| self.vpc_id.clone())
            } else {
                inet_ok.then(|| "internet".to_string())
            };
            if let Some(n) = class {
                if network.is_empty() {
                    network = n;
                }
                out.push(*up);
            }
        }
        (out, network)
    }

    /// The instance's `iptables-restore` input; `dns`: the forwarder's
    /// address and the network its queries count under, when it has one.
    fn rules(&self, subnet: Ipv4Net, dns: Option<(Ipv4Addr, &str)>) -> String {
        use std::fmt::Write;
        let mut r = String::with_capacity(2048);
        r.push_str("*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT DROP [0:0]\n");
        r.push_str(":FNGATE-REFUSE - [0:0]\n");
        r.push_str("-A FNGATE-REFUSE -p tcp -j REJECT --reject-with tcp-reset\n");
        r.push_str("-A FNGATE-REFUSE -j REJECT --reject-with icmp-port-unreachable\n");
        let p = INSTANCE_PORT;
        r.push_str("-A OUTPUT -o lo -j ACCEPT\n");
        let _ = writeln!(
            r,
            "-A OUTPUT -p tcp --sport {p} -m conntrack --ctstate ESTABLISHED -j ACCEPT"
        );
        r.push_str("-A INPUT -i lo -j ACCEPT\n");
        let _ = writeln!(r, "-A INPUT -p tcp --dport {p} -j ACCEPT");
        if let Some((at, n)) = dns {
            for proto in ["udp", "tcp"] {
                let _ = writeln!(
                    r,
                    "-A OUTPUT -d {at}/32 -p {proto} --dport 53 -m comment --comment fngate:out:{n} -j ACCEPT"
                );
                let _ = writeln!(
                    r,
                    "-A INPUT -s {at}/32 -p {proto} --sport 53 -m conntrack --ctstate ESTABLISHED -m comment --comment fngate:in:{n} -j ACCEPT"
                );
            }
        }
        let _ = writeln!(r, "-A OUTPUT -d {subnet} -j FNGATE-REFUSE");
        r.push_str("-A OUTPUT -d 169.254.0.0/16 -j FNGATE-REFUSE\n");
        for c in &self.refused {
            let _ = writeln!(r, "-A OUTPUT -d {c} -j FNGATE-REFUSE");
        }
        let vpc_ok = matches!(self.mode, EgressMode::Vpc | EgressMode::Both);
        let inet_ok = matches!(self.mode, EgressMode::Internet | EgressMode::Both);
        for c in &self.vpc {
            match vpc_ok {
                true => {
                    let id = &self.vpc_id;
                    let _ = writeln!(
                        r,
                        "-A OUTPUT -d {c} -m comment --comment fngate:out:{id} -j ACCEPT"
                    );
                    let _ = writeln!(
                        r,
                        "-A INPUT -s {c} -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment fngate:in:{id} -j ACCEPT"
                    );
                }
                false => {
                    let _ = writeln!(r, "-A OUTPUT -d {c} -j FNGATE-REFUSE");
                }
            }
        }
        if inet_ok {
            r.push_str("-A OUTPUT -m comment --comment fngate:out:internet -j ACCEPT\n");
            let _ = writeln!(
                r,
                "-A INPUT ! -s {subnet} -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment fngate:in:internet -j ACCEPT"
            );
        }
        r.push_str("-A OUTPUT -j FNGATE-REFUSE\nCOMMIT\n");
        r
    }
}

/// One instance's namespace: its name, address and counters.
pub struct InstanceNet {
    /// The resolvers its DNS goes to, and the network they count under.
    dns: (Vec<std::net::SocketAddr>, String),
    /// Ends its forwarder's tasks.
    dns_stop: tokio_util::sync::CancellationToken,
    /// Where its forwarder answers, once serving.
    dns_at: Option<Ipv4Addr>,
    name: String,
    host_if: String,
    addr: Ipv4Addr,
    slot: u32,
    free: Arc<Mutex<Vec<u32>>>,
    /// The worker's handle on the namespace, closed at removal (a namespace
    /// lives, with its veth pair, while any handle on it is open).
    fd: Mutex<Option<OwnedFd>>,
    removed: AtomicBool,
    policy: Policy,
    /// The counters' last reading: (network, direction) → bytes.
    last: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl InstanceNet {
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The resolver the instance is given (the worker's forwarder), if any.
    pub fn dns(&self) -> Option<Ipv4Addr> {
        self.dns_at
    }

    /// The networks its traffic can be counted under.
    pub fn networks(&self) -> impl Iterator<Item = &str> {
        let vpc = match self.policy.mode {
            EgressMode::Vpc | EgressMode::Both => Some(self.policy.vpc_id.as_str()),
            _ => None,
        };
        let internet = matches!(self.policy.mode, EgressMode::Internet | EgressMode::Both)
            .then_some("internet");
        internet.into_iter().chain(vpc)
    }

    /// The namespace, for the instance's process to join.
    /// (Valid until [`InstanceNet::remove`]: callers spawn with it before.)
    pub fn fd(&self) -> Option<std::os::fd::RawFd> {
        self.fd.lock().unwrap().as_ref().map(|f| f.as_raw_fd())
    }

    async fn build(&mut self, host: Ipv4Addr, subnet: Ipv4Net, idle: bool) -> Result<(), String> {
        let cmd = |program: &str| {
            let mut c = Command::new(program);
            if idle {
                idle_priority(c.as_std_mut());
            }
            c
        };
        let (ns, hif) = (&self.name, &self.host_if);
        // One `ip` for the namespace and the host's end (each process costs
        // milliseconds of the cold start).
        let host_side = format!(
            "netns add {ns}\nlink add {hif} type veth peer name eth0 netns {ns}\n\
             addr add {host}/30 dev {hif}\nlink set {hif} up\n"
        );
        let made = run(cmd("ip").args(["-batch", "-"]), Some(host_side)).await;
        // Held even when the batch failed part way, so removal finds it.
        let path = PathBuf::from(NETNS_DIR).join(&self.name);
        if let Ok(fd) = std::fs::File::open(&path) {
            *self.fd.lock().unwrap() = Some(fd.into());
        }
        made?;
        if self.fd().is_none() {
            return Err(format!("{}: not made", path.display()));
        }
        // No IPv6 on the host's end: the instance's link-local address
        // reaches nothing of the host's.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{hif}/disable_ipv6"), "1");
        let inside = format!(
            "addr add {}/30 dev eth0\nlink set eth0 up\nlink set lo up\nroute add default via {host}\n",
            self.addr
        );
        run(cmd("ip").args(["-n", ns, "-batch", "-"]), Some(inside)).await?;
        if !self.dns.0.is_empty() {
            match crate::dns::serve(host, self.dns.0.clone(), self.dns_stop.clone()) {
                Ok(()) => self.dns_at = Some(host),
                Err(e) => {
                    tracing::warn!(instance_net = %self.name, error = %e, "no DNS forwarder for this instance (port 53 of its host address is taken)")
                }
            }
        }
        let dns = self.dns_at.map(|a| (a, self.dns.1.as_str()));
        let mut restore = cmd("iptables-restore");
        self.join(&mut restore)?;
        run(&mut restore, Some(self.policy.rules(subnet, dns)))
            .await
            .map(drop)
    }

    /// Runs `cmd` in the instance's network namespace.
    fn join(&self, cmd: &mut Command) -> Result<(), String> {
        let fd = self.fd().ok_or("the instance's network is gone")?;
        join_before_exec(cmd.as_std_mut(), fd);
        Ok(())
    }

    /// Reads the counters; returns the increase since the last reading
    /// (and records it), and the totals.
    pub async fn read(&self) -> Result<(Vec<EgressBytes>, Vec<EgressBytes>), String> {
        if self.removed.load(Ordering::Acquire) {
            return Ok((Vec::new(), self.totals()));
        }
        let mut save = Command::new("iptables-save");
        save.args(["-c", "-t", "filter"]);
        if self.join(&mut save).is_err() {
            return Ok((Vec::new(), self.totals()));
        }
        let text = run(&mut save, None).await?;
        let now = parse_counters(&text);
        let mut last = self.last.lock().unwrap();
        let mut delta = Vec::new();
        for (k, &v) in &now {
            let seen = last.entry(k.clone()).or_insert(0);
            if v > *seen {
                delta.push(EgressBytes {
                    network: k.0.clone(),
                    direction: k.1.to_string(),
                    bytes: v - *seen,
                });
                *seen = v;
            }
        }
        Ok((delta, totals(&last)))
    }

    /// The totals as last read.
    pub fn totals(&self) -> Vec<EgressBytes> {
        totals(&self.last.lock().unwrap())
    }

    /// Deletes the namespace (the process must be gone) and gives the
    /// address back. Idempotent.
    pub async fn remove(&self) {
        if self.removed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.dns_stop.cancel();
        drop(self.fd.lock().unwrap().take());
        let _ = run(Command::new("ip").args(["netns", "del", &self.name]), None).await;
        // The host's end goes with the namespace; only a failed build can
        // have left it alone.
        let left = std::path::Path::new("/sys/class/net").join(&self.host_if);
        if left.exists() {
            let _ = Command::new("ip")
                .args(["link", "del", &self.host_if])
                .stderr(std::process::Stdio::null())
                .status()
                .await;
        }
        self.free.lock().unwrap().push(self.slot);
    }
}

/// The lock file of a range (held by its worker while it lives).
fn lock_path(subnet: Ipv4Net) -> PathBuf {
    PathBuf::from(LOCK_DIR).join(format!(
        "subnet-{}-{}.lock",
        subnet.network(),
        subnet.prefix_len()
    ))
}

/// The host's rules for a range: (table, chain and rule), commented
/// `fngate:<range>`.
fn host_rules(subnet: Ipv4Net) -> Vec<(&'static str, Vec<String>)> {
    let s = subnet.to_string();
    let tag = format!("fngate:{subnet}");
    let v = |a: &[&str]| -> Vec<String> {
        let mut r: Vec<String> = a.iter().map(|x| x.to_string()).collect();
        r.extend(["-m", "comment", "--comment", &tag].map(String::from));
        r
    };
    vec![
        ("filter", v(&["FORWARD", "-s", &s, "-j", "ACCEPT"])),
        (
            "filter",
            v(&[
                "FORWARD",
                "-d",
                &s,
                "-m",
                "conntrack",
                "--ctstate",
                "RELATED,ESTABLISHED",
                "-j",
                "ACCEPT",
            ]),
        ),
        // Instances never open connections to the host itself.
        (
            "filter",
            v(&[
                "INPUT",
                "-s",
                &s,
                "-p",
                "tcp",
                "-m",
                "conntrack",
                "--ctstate",
                "NEW",
                "-j",
                "REJECT",
                "--reject-with",
                "tcp-reset",
            ]),
        ),
        (
            "filter",
            v(&[
                "INPUT",
                "-s",
                &s,
                "-m",
                "conntrack",
                "--ctstate",
                "NEW",
                "-j",
                "REJECT",
                "--reject-with",
                "icmp-port-unreachable",
            ]),
        ),
        (
            "nat",
            v(&["POSTROUTING", "-s", &s, "!", "-d", &s, "-j", "MASQUERADE"]),
        ),
        // ...but for DNS to the worker's forwarder (inserted last, so
        // matched first); each instance's own rules let it reach only its
        // own host address.
        (
            "filter",
            v(&[
                "INPUT", "-s", &s, "-d", &s, "-p", "udp", "--dport", "53", "-j", "ACCEPT",
            ]),
        ),
        (
            "filter",
            v(&[
                "INPUT", "-s", &s, "-d", &s, "-p", "tcp", "--dport", "53", "-j", "ACCEPT",
            ]),
        ),
    ]
}

fn overlap(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Locks a range's file; `None` when another worker holds it. Another
/// worker's start tries every lock file for a moment (to tell held ranges
/// from stale ones, and to remove the stale), so a refusal is tried again
/// for a while before it counts; and a file unlinked by such a sweep
/// between our open and our lock is not ours: the lock is taken again on
/// the file the path names.
fn take_lock(subnet: Ipv4Net) -> Result<Option<(std::fs::File, PathBuf)>, String> {
    use std::os::unix::fs::MetadataExt;
    let path = lock_path(subnet);
    for _ in 0..100 {
        let lock = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            std::thread::sleep(std::time::Duration::from_millis(2));
            continue;
        }
        let same = match (lock.metadata(), std::fs::metadata(&path)) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        if same {
            return Ok(Some((lock, path)));
        }
    }
    Ok(None)
}

/// A range's lock file in [`LOCK_DIR`], and whether its worker lives.
struct LockFile {
    range: Ipv4Net,
    path: PathBuf,
    /// The file, locked by us: nobody held it (its worker is gone). `None`:
    /// its worker holds it.
    stale: Option<std::fs::File>,
}

/// Every range's lock file, each tried for a moment: held ones are other
/// workers' ranges, the rest were left by killed workers (and stay locked
/// by us until dropped).
fn lock_files() -> Vec<LockFile> {
    let Ok(dir) = std::fs::read_dir(LOCK_DIR) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let range = e.file_name().to_str().and_then(parse_lock_name)?;
            let path = e.path();
            let file = std::fs::OpenOptions::new().write(true).open(&path).ok()?;
            // SAFETY: flock on a descriptor we own; closing it unlocks.
            let free = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
            Some(LockFile {
                range,
                path,
                stale: free.then_some(file),
            })
        })
        .collect()
}

/// The ranges other workers on this host hold.
fn held_ranges() -> Vec<Ipv4Net> {
    lock_files()
        .into_iter()
        .filter(|l| l.stale.is_none())
        .map(|l| l.range)
        .collect()
}

/// The host's IPv4 routes (but the default route and fngate's own links).
fn host_routes() -> Vec<Ipv4Net> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 || f[0].starts_with("fg") {
                return None;
            }
            let word = |x: &str| {
                u32::from_str_radix(x, 16)
                    .ok()
                    .map(|w| Ipv4Addr::from(w.to_ne_bytes()))
            };
            let (dest, mask) = (word(f[1])?, word(f[7])?);
            let len = u32::from(mask).count_ones() as u8;
            (len > 0).then(|| Ipv4Net::new(dest, len).ok()).flatten()
        })
        .collect()
}

/// The first candidate range that no other worker holds and no route of
/// the host overlaps, locked.
fn pick_subnet() -> Result<(Ipv4Net, std::fs::File, PathBuf), String> {
    let (held, routes) = (held_ranges(), host_routes());
    for c in CANDIDATE_SUBNETS {
        let c: Ipv4Net = c.parse().expect("candidate range");
        if held.iter().chain(&routes).any(|h| overlap(*h, c)) {
            continue;
        }
        if let Some((lock, path)) = take_lock(c)? {
            return Ok((c, lock, path));
        }
    }
    Err(format!(
        "every candidate instance range ({} to {}) is taken by another worker or a route of this host: give this worker one with --instance-subnet",
        CANDIDATE_SUBNETS[0],
        CANDIDATE_SUBNETS[CANDIDATE_SUBNETS.len() - 1]
    ))
}

/// Removes the host's rules of a range (every copy: a crashed worker's too).
fn remove_host_rules(subnet: Ipv4Net) {
    for (table, rule) in host_rules(subnet) {
        for _ in 0..16 {
            let ok = std::process::Command::new("iptables")
                .args(["-w", "-t", table, "-D"])
                .args(&rule)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                break;
            }
        }
    }
}

/// Removes the instance namespaces of a range (a killed worker's).
fn remove_namespaces_in(subnet: Ipv4Net) {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(addr) = name
            .strip_prefix("fngate-")
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .map(Ipv4Addr::from)
        else {
            continue;
        };
        if subnet.contains(&addr) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &name])
                .status();
        }
    }
}

/// Cleans up after workers killed without their cleanup (their ranges'
/// lock files are not held by anyone): their namespaces, their host rules
/// and the lock file. `own` is this worker's lock file.
fn sweep_orphans(own: &std::path::Path) {
    for lock in lock_files() {
        if lock.path == own || lock.stale.is_none() {
            continue; // ours, or its worker lives
        }
        let subnet = lock.range;
        tracing::info!(instance_subnet = %subnet, "removing what a stopped worker left of its range");
        remove_namespaces_in(subnet);
        remove_host_rules(subnet);
        // While still held: a worker starting on it now gets a new file.
        let _ = std::fs::remove_file(&lock.path);
    }
}

/// `subnet-<network>-<len>.lock` → the range.
fn parse_lock_name(name: &str) -> Option<Ipv4Net> {
    let rest = name.strip_prefix("subnet-")?.strip_suffix(".lock")?;
    let (net, len) = rest.rsplit_once('-')?;
    Ipv4Net::new(net.parse().ok()?, len.parse().ok()?).ok()
}

fn totals(m: &BTreeMap<(String, &'static str), u64>) -> Vec<EgressBytes> {
    m.iter()
        .map(|(k, &bytes)| EgressBytes {
            network: k.0.clone(),
            direction: k.1.to_string(),
            bytes,
        })
        .collect()
}

/// Sums `iptables-save -c` lines tagged `fngate:<direction>:<network>`.
fn parse_counters(text: &str) -> BTreeMap<(String, &'static str), u64> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix('[') else {
            continue;
        };
        let Some((counts, rule)) = rest.split_once(']') else {
            continue;
        };
        let Some(bytes) = counts.split_once(':').and_then(|c| c.1.parse::<u64>().ok()) else {
            continue;
        };
        let Some(tag) = rule
            .split_whitespace()
            .map(|t| t.trim_matches('"'))
            .find_map(|t| t.strip_prefix("fngate:"))
        else {
            continue;
        };
        let (dir, network) = match tag.split_once(':') {
            Some(("out", n)) => ("out", n),
            Some(("in", n)) => ("in", n),
            _ => continue,
        };
        *m.entry((network.to_string(), dir)).or_insert(0) += bytes;
    }
    m
}

/// Runs `cmd` under `SCHED_IDLE`: it gets the CPU only when nothing else
/// wants it.
fn idle_priority(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: sched_setscheduler is async-signal-safe; the parameter lives
    // on the child's stack.
    unsafe {
        cmd.pre_exec(|| {
            let p = libc::sched_param { sched_priority: 0 };
            libc::sched_setscheduler(0, libc::SCHED_IDLE, &p);
            Ok(())
        });
    }
}

/// Installs `setns(fd, CLONE_NEWNET)` on `cmd`, run in the child before exec.
pub fn join_before_exec(cmd: &mut std::process::Command, fd: std::os::fd::RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setns is async-signal-safe; `fd` outlives the spawn (the
    // caller holds it).
    unsafe {
        cmd.pre_exec(move || match libc::setns(fd, libc::CLONE_NEWNET) {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        });
    }
}

async fn run(cmd: &mut Command, stdin: Option<String>) -> Result<String, String> {
    use tokio::io::AsyncWriteExt;
    let what = format!("{:?}", cmd.as_std());
    cmd.stdin(match stdin {
        Some(_) => std::process::Stdio::piped(),
        None => std::process::Stdio::null(),
    })
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("{what}: {e}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|e| format!("{what}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        false => Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_files_name_their_range() {
        let net: Ipv4Net = "10.214.4.0/22".parse().unwrap();
        let name = lock_path(net);
        let name = name.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "subnet-10.214.4.0-22.lock");
        assert_eq!(parse_lock_name(name), Some(net));
        for bad in [
            "subnet-10.0.0.0.lock",
            "x-10.0.0.0-8.lock",
            "subnet-10.0.0.0-40.lock",
        ] {
            assert_eq!(parse_lock_name(bad), None, "{bad}");
        }
    }

    fn policy(mode: EgressMode) -> Policy {
        Policy::parse(&Egress {
            mode,
            vpc_id: Some("vpc-a".into()),
            vpc_cidrs: vec!["10.9.0.0/16".into(), "fd00::/8".into()],
            refused_cidrs: vec!["10.8.0.0/16".into()],
        })
        .unwrap()
    }

    #[test]
    fn rules_follow_the_mode() {
        let s: Ipv4Net = "10.213.0.0/16".parse().unwrap();
        let inet = policy(EgressMode::Internet).rules(s, None);
        assert!(inet.contains("-A OUTPUT -d 10.9.0.0/16 -j FNGATE-REFUSE"));
        assert!(inet.contains("fngate:out:internet -j ACCEPT"));
        let vpc = policy(EgressMode::Vpc).rules(s, None);
        assert!(vpc.contains("-d 10.9.0.0/16 -m comment --comment fngate:out:vpc-a -j ACCEPT"));
        assert!(!vpc.contains("fngate:out:internet"));
        let none = policy(EgressMode::None).rules(s, None);
        assert!(!none.contains("fngate:out"));
        for r in [&inet, &vpc, &none] {
            // Refusals come before anything accepted by class.
            let refuse = r.find("-d 10.8.0.0/16 -j FNGATE-REFUSE").unwrap();
            assert!(r.find("-d 10.213.0.0/16 -j FNGATE-REFUSE").unwrap() < refuse);
            if let Some(acc) = r.find("comment fngate:out") {
                assert!(refuse < acc);
            }
            assert!(r.ends_with("-A OUTPUT -j FNGATE-REFUSE\nCOMMIT\n"));
            assert!(!r.contains("fd00"));
        }
    }

    #[test]
    fn dns_goes_only_where_the_policy_reaches() {
        let s: Ipv4Net = "10.213.0.0/16".parse().unwrap();
        let ups: Vec<std::net::SocketAddr> = [
            "127.0.0.53:53",
            "10.9.0.2:53",
            "10.8.0.2:53",
            "169.254.169.253:53",
            "198.18.0.1:53",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let names = |p: &Policy| {
            let (ups, net) = p.resolvers(&ups, s);
            (ups.iter().map(|u| u.to_string()).collect::<Vec<_>>(), net)
        };
        assert_eq!(
            names(&policy(EgressMode::Internet)),
            (
                vec!["127.0.0.53:53".into(), "198.18.0.1:53".into()],
                "internet".into()
            )
        );
        assert_eq!(
            names(&policy(EgressMode::Vpc)),
            (vec!["10.9.0.2:53".into()], "vpc-a".into())
        );
        assert_eq!(names(&policy(EgressMode::None)), (vec![], String::new()));
        let at: Ipv4Addr = "10.213.0.1".parse().unwrap();
        let r = policy(EgressMode::Vpc).rules(s, Some((at, "vpc-a")));
        let dns = r.find("-d 10.213.0.1/32 -p udp --dport 53 -m comment --comment fngate:out:vpc-a -j ACCEPT").unwrap();
        assert!(dns < r.find("-d 10.213.0.0/16 -j FNGATE-REFUSE").unwrap());
        assert!(r.contains("-A INPUT -s 10.213.0.1/32 -p tcp --sport 53 -m conntrack --ctstate ESTABLISHED -m comment --comment fngate:in:vpc-a -j ACCEPT"));
    }

    #[test]
    fn ranges_overlap() {
        let n = |s: &str| s.parse::<Ipv4Net>().unwrap();
        assert!(overlap(n("10.213.0.0/16"), n("10.213.4.0/22")));
        assert!(overlap(n("10.213.4.0/22"), n("10.213.0.0/16")));
        assert!(!overlap(n("10.213.0.0/16"), n("10.214.0.0/22")));
    }

    #[test]
    fn policies_are_checked() {
        let e = |mode, id: Option<&str>, cidr: &str| Egress {
            mode,
            vpc_id: id.map(String::from),
            vpc_cidrs: vec![cidr.into()],
            refused_cidrs: vec![],
        };
        assert!(Policy::parse(&e(EgressMode::Vpc, None, "10.0.0.0/8")).is_err());
        assert!(Policy::parse(&e(EgressMode::Both, Some("a b"), "10.0.0.0/8")).is_err());
        assert!(Policy::parse(&e(EgressMode::Vpc, Some("v"), "10.0.0/8")).is_err());
        assert!(Policy::parse(&e(EgressMode::Internet, None, "10.0.0.0/8")).is_ok());
    }

    #[test]
    fn counters_are_summed_by_tag() {
        let text = "*filter\n:OUTPUT DROP [3:180]\n\
            [10:1000] -A OUTPUT -d 10.9.0.0/16 -m comment --comment fngate:out:vpc-a -j ACCEPT\n\
            [1:24] -A OUTPUT -d 10.10.0.0/16 -m comment --comment \"fngate:out:vpc-a\" -j ACCEPT\n\
            [5:500] -A INPUT -m comment --comment fngate:in:internet -j ACCEPT\n\
            [7:70] -A OUTPUT -j FNGATE-REFUSE\nCOMMIT\n";
        let m = parse_counters(text);
        assert_eq!(m[&("vpc-a".to_string(), "out")], 1024);
        assert_eq!(m[&("internet".to_string(), "in")], 500);
        assert_eq!(m.len(), 2);
    }
}

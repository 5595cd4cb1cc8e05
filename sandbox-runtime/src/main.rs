//! `sandbox-runtime`: run a sandbox worker on its own (see the crate docs).

use clap::Parser;
use sandbox_runtime::isolation::Isolation;
use sandbox_runtime::memory::MemoryLimitMode;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "fngate sandbox worker: hosts function instances for gateways"
)]
struct Args {
    /// Address of the worker API (plain HTTP; keep it on a private network).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Memory offered to function instances, in MiB.
    #[arg(long, default_value_t = 4096)]
    memory_mb: u64,
    /// Address instances bind and gateways connect to (default: the listen address).
    #[arg(long)]
    instance_host: Option<IpAddr>,
    /// Directory for instance working directories (default: a temp dir).
    #[arg(long)]
    work_root: Option<PathBuf>,
    /// How instance memory sizes are enforced.
    #[arg(long, value_enum, default_value_t = MemoryLimitMode::Auto)]
    memory_limit: MemoryLimitMode,
    /// How instances are isolated: each in its own PID, mount, UTS, IPC and
    /// network namespaces (root; the worker refuses to start where it
    /// cannot), or, only when asked for, as plain processes.
    #[arg(long, value_enum, default_value_t = Isolation::Namespaces)]
    isolation: Isolation,
    /// Processes per instance at most (a cgroup v1 pids limit or v2 pids.max; an error
    /// where there is none). Default: 1024 with --isolation namespaces where
    /// a pids controller (v1 or v2) exists (a warning where none does), else none.
    #[arg(long)]
    max_pids: Option<u32>,
    /// Open files per process of an isolated instance.
    #[arg(long, default_value_t = 1024)]
    max_open_files: u32,
    /// Private range isolated instances take their addresses from (a /30
    /// each; used only inside namespaces this worker creates; one range
    /// per worker on a host). Default: the first of 10.213.0.0/16,
    /// 10.212.0.0/16, ... 10.200.0.0/16 that no other worker holds and no
    /// route of the host overlaps.
    #[arg(long)]
    instance_subnet: Option<ipnet::Ipv4Net>,
    /// The uids (and gids) isolated instances run as, FIRST-LAST: one per
    /// function, none an account of the host.
    #[arg(long, default_value = sandbox_runtime::identity::DEFAULT_RANGE)]
    instance_uids: sandbox_runtime::identity::IdRange,
    /// A resolver isolated instances' DNS queries are forwarded to
    /// (repeat for several; default: the host's, from /etc/resolv.conf).
    #[arg(long = "dns")]
    dns: Vec<std::net::SocketAddr>,
    /// The CA certificates isolated instances see as /etc/ssl/certs.
    #[arg(long, default_value = "/etc/ssl/certs")]
    ca_certs: PathBuf,
    /// Network namespaces kept ready for each of the egress policies most
    /// recently started (0: none; each costs a veth pair and its rules).
    #[arg(long, default_value_t = 2)]
    netns_pool: usize,
    /// Fleet mode: a NATS server of the fleet (repeat for several). The
    /// worker registers in the fleet, so gateways find it, and releases
    /// the instances of gateways whose heartbeat has expired.
    #[arg(long = "fleet-nats-url")]
    fleet_nats_urls: Vec<String>,
    /// The fleet's name (the gateways' `[fleet] name`).
    #[arg(long, default_value = "fngate")]
    fleet_name: String,
    /// This worker's id in the fleet (default: its advertised URL's host and port).
    #[arg(long)]
    fleet_id: Option<String>,
    /// The URL gateways reach this worker's API at (default: http:// and the bound address).
    #[arg(long)]
    advertise_url: Option<String>,
    #[arg(long, default_value_t = 1000)]
    fleet_heartbeat_ms: u64,
    /// The gateways' `member_ttl_ms`: a gateway not heard from this long
    /// has lost its instances here.
    #[arg(long, default_value_t = 5000)]
    fleet_member_ttl_ms: u64,
    /// How long NATS is retried at start; then the worker exits with an error.
    #[arg(long, default_value_t = 30_000)]
    fleet_connect_timeout_ms: u64,
    /// Copies of the fleet's buckets this worker creates, on a JetStream
    /// cluster (the gateways' `[fleet] replicas`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    fleet_replicas: u8,
}

fn main() -> std::process::ExitCode {
    // An isolated instance's keeper: before any thread exists (it forks).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == sandbox_runtime::isolation::INIT_ARG)
    {
        sandbox_runtime::isolation::init_main(&args[2..]);
    }
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(serve()),
        Err(e) => {
            eprintln!("sandbox-runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve() -> std::process::ExitCode {
    sandbox_runtime::cli::init_logging();
    let a = Args::parse();
    let cfg = sandbox_runtime::Config {
        listen: a.listen,
        memory_mb: a.memory_mb,
        instance_host: a.instance_host,
        work_root: a.work_root,
        memory_limit: a.memory_limit,
        isolation: a.isolation,
        max_pids: a
            .max_pids
            .or_else(|| sandbox_runtime::bounds::default_max_pids(a.isolation)),
        max_open_files: a.max_open_files,
        instance_subnet: a.instance_subnet,
        instance_uids: a.instance_uids,
        dns: (!a.dns.is_empty()).then(|| a.dns.clone()),
        ca_certs: a.ca_certs.clone(),
        netns_pool: a.netns_pool,
        fleet: (!a.fleet_nats_urls.is_empty()).then(|| {
            let url = a.advertise_url.clone().unwrap_or_default();
            sandbox_runtime::fleet::WorkerFleet {
                // Empty: derived from the URL once the listener is bound.
                id: a.fleet_id.clone().unwrap_or_default(),
                nats_urls: a.fleet_nats_urls.clone(),
                name: a.fleet_name.clone(),
                url,
                heartbeat: std::time::Duration::from_millis(a.fleet_heartbeat_ms.max(100)),
                member_ttl: std::time::Duration::from_millis(
                    a.fleet_member_ttl_ms.max(2 * a.fleet_heartbeat_ms),
                ),
                engine_timeout: std::time::Duration::from_secs(2),
                connect_timeout: std::time::Duration::from_millis(a.fleet_connect_timeout_ms),
                replicas: usize::from(a.fleet_replicas),
            }
        }),
    };
    match sandbox_runtime::run(cfg, sandbox_runtime::cli::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandbox-runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

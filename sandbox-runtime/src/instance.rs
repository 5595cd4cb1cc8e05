//! One function instance: a child process serving the invocation contract on
//! its own port, in a fresh working directory that dies with it.
//!
//! Lifecycle: [`Instance::start`] spawns the process and waits until it
//! accepts on its port (bounded by the start timeout) or exits; a watcher task
//! records how it ended; [`Instance::release`] kills its process group, removes
//! its cgroup and deletes its working directory. Its output is captured by
//! [`crate::output`].

use crate::api::{ExitInfo, InstanceInfo, InstanceState, MemoryLimit};
use crate::memory::InstanceLimit;
use crate::output::Output;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

pub struct Spec {
    /// Cancelled when the worker stops: a start still waiting for its
    /// instance to listen ends at once (a stop never waits for a start).
    pub stop: tokio_util::sync::CancellationToken,
    pub instance_id: String,
    pub function: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub memory_mb: u32,
    pub start_timeout: Duration,
    /// Address the instance must serve on (what gateways will connect to).
    pub host: std::net::IpAddr,
    pub workdir: PathBuf,
    /// The worker's work root (an isolated instance sees a tmpfs there).
    pub work_root: PathBuf,
    pub isolation: crate::isolation::Isolation,
    /// `RLIMIT_NOFILE` of an isolated instance's processes.
    pub max_open_files: u32,
    pub bounds: crate::bounds::InstanceBounds,
    /// An isolated instance's network namespace (its address replaces `host`).
    pub net: Option<crate::network::InstanceNet>,
    /// Where its egress bytes are counted.
    pub egress_metric: prometheus::IntCounterVec,
    /// Host directories an isolated instance may write.
    pub writable: Vec<PathBuf>,
    /// Host paths an isolated instance may read (beyond its code).
    pub readable: Vec<PathBuf>,
    /// An isolated instance's writable area, MiB.
    pub disk_mb: u32,
    /// The uid and gid an isolated instance runs as.
    pub uid: u32,
    /// Shown to isolated instances as `/etc/ssl/certs`.
    pub ca_certs: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot prepare instance: {0}")]
    Prepare(#[source] std::io::Error),
    #[error("cannot spawn {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("instance {exit} before accepting on its port")]
    Exited { exit: ExitInfo, stderr_tail: String },
    #[error("cannot set up the instance's network: {0}")]
    Network(String),
    #[error("instance did not accept on its port within {0:?}")]
    Timeout(Duration, String),
    #[error(
        "instance listens on {0}, which nothing outside the instance can reach: listen on 0.0.0.0 (or FC_SERVER_HOST) and FC_SERVER_PORT"
    )]
    Loopback(std::net::SocketAddr, String),
    #[error("the worker is stopping")]
    Stopped,
}

impl StartError {
    pub fn stderr_tail(&self) -> &str {
        match self {
            StartError::Exited { stderr_tail, .. }
            | StartError::Timeout(_, stderr_tail)
            | StartError::Loopback(_, stderr_tail) => stderr_tail,
            _ => "",
        }
    }
}

pub struct Instance {
    pub id: String,
    pub function: String,
    pub address: String,
    pub memory_mb: u32,
    pub memory_limit: MemoryLimit,
    pub pid: Option<u32>,
    pub created_unix: u64,
    workdir: PathBuf,
    pub output: Arc<Output>,
    // Cold-path lock: touched at start, exit and release only, never per invocation.
    limit: Mutex<Option<InstanceLimit>>,
    bounds: Mutex<Option<crate::bounds::InstanceBounds>>,
    exit: watch::Receiver<Option<ExitInfo>>,
    released: std::sync::atomic::AtomicBool,
    net: Option<crate::network::InstanceNet>,
    egress_metric: prometheus::IntCounterVec,
    uid: Option<u32>,
}

/// An isolated instance's `PATH` (unless its function sets one).
const ISOLATED_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A socket listening on the instance's own loopback at `port`, when
/// nothing listens where the worker connects: read from the TCP table of
/// the network namespace `pid` is in.
fn loopback_listener(pid: u32, port: u16) -> Option<std::net::SocketAddr> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    let mut loopback = None;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local_address rem_address st ...; 0A is LISTEN.
        if f.len() < 4 || f[3] != "0A" {
            continue;
        }
        let (ip, p) = f[1].split_once(':')?;
        let (ip, p) = (
            u32::from_str_radix(ip, 16).ok()?,
            u16::from_str_radix(p, 16).ok()?,
        );
        if p != port {
            continue;
        }
        // The kernel prints the network-order word as a native integer
        // (127.0.0.1 is 0100007F on little-endian hosts).
        let ip = std::net::Ipv4Addr::from(ip.to_ne_bytes());
        if !ip.is_loopback() {
            return None;
        }
        loopback = Some(std::net::SocketAddr::new(ip.into(), p));
    }
    loopback
}

impl Instance {
    /// Spawns the instance and waits until it is ready.
    pub async fn start(spec: Spec, limit: InstanceLimit) -> Result<Arc<Instance>, StartError> {
        if let Some(n) = &spec.net {
            // Its series exist at zero before its first byte, so that a
            // rate() over them sees that byte.
            for network in n.networks() {
                for direction in ["in", "out"] {
                    spec.egress_metric.with_label_values(&[
                        spec.function.as_str(),
                        network,
                        direction,
                    ]);
                }
            }
        }
        let (host, port) = match &spec.net {
            Some(n) => (
                std::net::IpAddr::V4(n.addr()),
                crate::network::INSTANCE_PORT,
            ),
            None => (
                spec.host,
                free_port(spec.host).map_err(StartError::Prepare)?,
            ),
        };
        if let Err(e) = std::fs::create_dir_all(&spec.workdir) {
            if let Some(n) = &spec.net {
                n.remove().await;
            }
            return Err(StartError::Prepare(e));
        }
        let isolated = spec.isolation == crate::isolation::Isolation::Namespaces;
        let command = match isolated {
            true => crate::rootfs::resolve_command(&spec.command),
            false => spec.command.clone(),
        };
        let program = command.first().cloned().unwrap_or_default();
        let mut cmd = match isolated {
            false => {
                let mut c = tokio::process::Command::new(&program);
                c.args(&command[1..]);
                c
            }
            true => {
                // The instance's keeper: this executable, in new namespaces.
                let exe = std::env::current_exe().map_err(StartError::Prepare)?;
                let hostname: String = spec.instance_id.chars().take(64).collect();
                let addr = spec.net.as_ref().map(|n| n.addr());
                let steps = crate::rootfs::plan(&crate::rootfs::Inputs {
                    hostname: &hostname,
                    addr,
                    uid: spec.uid,
                    gid: spec.uid,
                    dns: spec.net.as_ref().and_then(|n| n.dns()),
                    ca_certs: &spec.ca_certs,
                    command: &command,
                    readable: &spec.readable,
                    writable: &spec.writable,
                });
                let init = crate::isolation::Init {
                    root: spec.workdir.clone(),
                    disk_mb: spec.disk_mb,
                    max_open_files: spec.max_open_files,
                    hostname,
                    uid: spec.uid,
                    gid: spec.uid,
                    steps,
                };
                let mut c = tokio::process::Command::new(exe);
                c.args(crate::isolation::init_args(&init, &command));
                c
            }
        };
        // An isolated instance's world is its own root: the host's PATH
        // (tool managers under /root, say) means nothing there.
        let (path, home) = match isolated {
            true => (
                std::ffi::OsString::from(ISOLATED_PATH),
                PathBuf::from(crate::rootfs::TMP),
            ),
            false => (
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
                spec.workdir.clone(),
            ),
        };
        cmd.current_dir(&spec.workdir)
            .env_clear()
            .env("PATH", path)
            .env("HOME", &home)
            .env("TMPDIR", &home)
            .env("FC_SERVER_PORT", port.to_string())
            .env("PORT", port.to_string())
            .env("FC_SERVER_HOST", host.to_string())
            .env("FC_FUNCTION_NAME", &spec.function)
            .env("FC_INSTANCE_ID", &spec.instance_id)
            .env("FC_FUNCTION_MEMORY_SIZE", spec.memory_mb.to_string())
            // Output reaches the log (and an invocation's log tail) as it is
            // written, not when a buffer fills; a function may override it.
            .env("PYTHONUNBUFFERED", "1")
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group, so release kills whatever the function forked.
            .process_group(0)
            .kill_on_drop(true);
        limit.install(&mut cmd);
        spec.bounds.install(&mut cmd);
        if let Some(fd) = spec.net.as_ref().and_then(|n| n.fd()) {
            crate::network::join_before_exec(cmd.as_std_mut(), fd);
        }
        if isolated {
            // After the cgroup is joined: the namespaces' processes inherit it.
            crate::isolation::unshare_before_exec(cmd.as_std_mut());
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(source) => {
                let _ = std::fs::remove_dir_all(&spec.workdir);
                if let Some(n) = &spec.net {
                    n.remove().await;
                }
                return Err(StartError::Spawn { program, source });
            }
        };
        let pid = child.id();
        let output = Arc::new(Output::default());
        let mut pumps = Vec::with_capacity(2);
        let pipes = [
            (child.stdout.take().map(|p| p.into_owned_fd()), "stdout"),
            (child.stderr.take().map(|p| p.into_owned_fd()), "stderr"),
        ];
        for (pipe, which) in pipes {
            let pumped = match pipe {
                Some(Ok(fd)) => output.pump(fd, &spec.instance_id, which),
                Some(Err(e)) => Err(e),
                None => continue,
            };
            match pumped {
                Ok(p) => pumps.push(p),
                Err(e) => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    let _ = std::fs::remove_dir_all(&spec.workdir);
                    if let Some(n) = &spec.net {
                        n.remove().await;
                    }
                    return Err(StartError::Prepare(e));
                }
            }
        }

        let (exit_tx, exit_rx) = watch::channel(None);
        let limit_kind = limit.kind();
        let instance = Arc::new(Instance {
            id: spec.instance_id.clone(),
            function: spec.function.clone(),
            address: std::net::SocketAddr::new(host, port).to_string(),
            memory_mb: spec.memory_mb,
            memory_limit: limit_kind,
            pid,
            created_unix: unix_now(),
            workdir: spec.workdir.clone(),
            output,
            limit: Mutex::new(Some(limit)),
            bounds: Mutex::new(Some(spec.bounds)),
            exit: exit_rx,
            released: Default::default(),
            net: spec.net,
            egress_metric: spec.egress_metric,
            uid: isolated.then_some(spec.uid),
        });

        // Exit watcher: the only owner of `child`.
        let watcher = instance.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            for p in pumps {
                let _ = p.await;
            }
            let oom = watcher
                .limit
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|l| l.oom_killed());
            let info = ExitInfo {
                code: status.as_ref().ok().and_then(|s| s.code()),
                signal: status.as_ref().ok().and_then(|s| s.signal()),
                oom_killed: oom,
                released: watcher.released.load(std::sync::atomic::Ordering::Acquire),
            };
            let _ = exit_tx.send(Some(info));
        });

        // Ready when it accepts on its port; fail fast when it exits first,
        // or when it listens where only it can reach (its own loopback).
        let deadline = tokio::time::Instant::now() + spec.start_timeout;
        let mut exit = instance.exit.clone();
        let addr = std::net::SocketAddr::new(host, port);
        let mut tries = 0u32;
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(instance);
            }
            tries += 1;
            if isolated
                && tries.is_multiple_of(10)
                && let Some(pid) = pid
                && let Some(lo) = loopback_listener(pid, port)
            {
                let tail = instance.stderr_tail();
                instance.release().await;
                return Err(StartError::Loopback(lo, tail));
            }
            if tokio::time::Instant::now() >= deadline {
                let tail = instance.stderr_tail();
                instance.release().await;
                return Err(StartError::Timeout(spec.start_timeout, tail));
            }
            tokio::select! {
                _ = spec.stop.cancelled() => {
                    instance.release().await;
                    return Err(StartError::Stopped);
                }
                _ = exit.changed() => {
                    let info = exit.borrow().clone().unwrap_or(ExitInfo {
                        code: None, signal: None, oom_killed: false, released: false,
                    });
                    let tail = instance.stderr_tail();
                    instance.release().await;
                    return Err(StartError::Exited { exit: info, stderr_tail: tail });
                }
                // Every millisecond at first (most functions are ready within
                // a few), then every 5.
                _ = tokio::time::sleep(Duration::from_millis(if tries < 50 { 1 } else { 5 })) => {}
            }
        }
    }

    pub fn exit_info(&self) -> Option<ExitInfo> {
        self.exit.borrow().clone()
    }

    pub fn stderr_tail(&self) -> String {
        self.output.stderr_tail()
    }

    pub fn info(&self) -> InstanceInfo {
        let exit = self.exit_info();
        InstanceInfo {
            instance_id: self.id.clone(),
            function: self.function.clone(),
            address: self.address.clone(),
            memory_mb: self.memory_mb,
            memory_limit: self.memory_limit,
            state: if exit.is_some() {
                InstanceState::Exited
            } else {
                InstanceState::Running
            },
            pid: self.pid,
            created_unix: self.created_unix,
            exit,
            stderr_tail: self.stderr_tail(),
            egress: self.net.as_ref().map(|n| n.totals()).unwrap_or_default(),
            uid: self.uid,
        }
    }

    /// Reads an isolated instance's egress counters into the metric.
    pub async fn meter(&self) {
        let Some(net) = &self.net else { return };
        match net.read().await {
            Ok((delta, _)) => {
                for d in delta {
                    self.egress_metric
                        .with_label_values(&[self.function.as_str(), &d.network, &d.direction])
                        .inc_by(d.bytes);
                }
            }
            Err(e) => {
                tracing::warn!(instance = %self.id, error = %e, "cannot read egress counters")
            }
        }
    }

    /// Resolves once the process has ended.
    pub async fn exited(&self) -> ExitInfo {
        let mut rx = self.exit.clone();
        let got = rx.wait_for(|e| e.is_some()).await;
        match got {
            Ok(v) => v.clone().unwrap_or_else(unknown_exit),
            Err(_) => unknown_exit(),
        }
    }

    /// Kills the instance (its whole process group and cgroup), waits for it,
    /// and deletes its working directory. Idempotent.
    pub async fn release(&self) -> ExitInfo {
        if !self
            .released
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            if let Some(pid) = self.pid
                && self.exit_info().is_none()
            {
                // SAFETY: plain syscall on the group this instance leads.
                unsafe { libc::killpg(pid as i32, libc::SIGKILL) };
            }
            let info = match tokio::time::timeout(Duration::from_secs(5), self.exited()).await {
                Ok(info) => info,
                Err(_) => unknown_exit(),
            };
            // The last bytes, then the namespace (its process is gone).
            self.meter().await;
            if let Some(n) = &self.net {
                n.remove().await;
            }
            let limit = self.limit.lock().unwrap().take();
            let bounds = self.bounds.lock().unwrap().take();
            let workdir = self.workdir.clone();
            let _ = tokio::task::spawn_blocking(move || {
                drop(limit);
                drop(bounds);
                let _ = std::fs::remove_dir_all(workdir);
            })
            .await;
            return info;
        }
        self.exited().await
    }
}

fn unknown_exit() -> ExitInfo {
    ExitInfo {
        code: None,
        signal: None,
        oom_killed: false,
        released: true,
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Asks the kernel for a free port. Another process may take it before the
/// instance binds; the instance then fails to start and the gateway retries.
fn free_port(host: std::net::IpAddr) -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind((host, 0))?;
    Ok(l.local_addr()?.port())
}

//! Enforcing an instance's memory size.
//!
//! Preference order: a cgroup v2 `memory.max`, a cgroup v1
//! `memory.limit_in_bytes`, then `RLIMIT_AS`. The mechanism is chosen once at
//! start-up ([`MemoryEnforcer::detect`]) and reported in the worker's capacity
//! and on every instance, so an operator can see what protects the host.
//!
//! Each instance gets its own cgroup under a per-worker parent created beside
//! the worker's own cgroup. The child joins it in `pre_exec` by writing `0` to
//! an already-open `cgroup.procs` (async-signal-safe: no allocation after
//! fork), so it is limited before it runs a single instruction of the function.

use crate::api::MemoryLimit;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Requested mechanism (`--memory-limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MemoryLimitMode {
    /// cgroup v2, else cgroup v1, else rlimit.
    Auto,
    CgroupV2,
    CgroupV1,
    Rlimit,
    None,
}

#[derive(Debug)]
pub struct MemoryEnforcer {
    kind: MemoryLimit,
    /// Parent cgroup directory for this worker's instances (cgroup kinds only).
    parent: Option<PathBuf>,
    /// cgroup v2: the other controllers delegated to the instances' cgroups
    /// (there one cgroup holds every bound; [`crate::bounds`] uses them).
    v2: V2Controllers,
}

/// Which of cgroup v2's `pids` and `cpu` controllers the worker's parent
/// cgroup could delegate to its instances.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct V2Controllers {
    pub pids: bool,
    pub cpu: bool,
}

/// Per-instance enforcement state, held for the instance's lifetime.
#[derive(Debug)]
pub struct InstanceLimit {
    kind: MemoryLimit,
    cgroup: Option<PathBuf>,
    procs_fd: Option<OwnedFd>,
    bytes: u64,
}

impl MemoryEnforcer {
    pub fn detect(mode: MemoryLimitMode) -> io::Result<Self> {
        let tag = format!("fngate-worker-{}", std::process::id());
        let try_v2 = || cgroup_v2_parent(&tag).map(|(p, v2)| (MemoryLimit::CgroupV2, p, v2));
        let try_v1 = || {
            v1_parent("memory", "memory.limit_in_bytes", &tag)
                .map(|p| (MemoryLimit::CgroupV1, p, V2Controllers::default()))
        };
        let found = match mode {
            MemoryLimitMode::Auto => try_v2().or_else(|_| try_v1()).ok(),
            MemoryLimitMode::CgroupV2 => Some(try_v2()?),
            MemoryLimitMode::CgroupV1 => Some(try_v1()?),
            MemoryLimitMode::Rlimit => None,
            MemoryLimitMode::None => {
                return Ok(Self {
                    kind: MemoryLimit::None,
                    parent: None,
                    v2: V2Controllers::default(),
                });
            }
        };
        Ok(match found {
            Some((kind, parent, v2)) => Self {
                kind,
                parent: Some(parent),
                v2,
            },
            None => Self {
                kind: MemoryLimit::Rlimit,
                parent: None,
                v2: V2Controllers::default(),
            },
        })
    }

    /// The cgroup v2 controllers instances' cgroups have besides memory.
    pub fn v2_controllers(&self) -> V2Controllers {
        self.v2
    }

    pub fn kind(&self) -> MemoryLimit {
        self.kind
    }

    /// Prepares the limit for one instance (creates its cgroup).
    pub fn prepare(&self, instance_id: &str, memory_mb: u32) -> io::Result<InstanceLimit> {
        let bytes = u64::from(memory_mb) * 1024 * 1024;
        let mut limit = InstanceLimit {
            kind: self.kind,
            cgroup: None,
            procs_fd: None,
            bytes,
        };
        if let Some(parent) = &self.parent {
            let dir = parent.join(instance_id);
            fs::create_dir(&dir)?;
            limit.cgroup = Some(dir.clone());
            let file = match self.kind {
                MemoryLimit::CgroupV2 => "memory.max",
                _ => "memory.limit_in_bytes",
            };
            fs::write(dir.join(file), bytes.to_string())?;
            if self.kind == MemoryLimit::CgroupV1 {
                // Without this, v1 lets the instance spill into swap instead of
                // being killed; ignore failure where swap accounting is off.
                let _ = fs::write(dir.join("memory.memsw.limit_in_bytes"), bytes.to_string());
            }
            let procs = fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))?;
            limit.procs_fd = Some(procs.into());
        }
        Ok(limit)
    }

    /// Removes the worker's parent cgroup (at shutdown, once instances are gone).
    pub fn cleanup(&self) {
        if let Some(parent) = &self.parent {
            let _ = fs::remove_dir(parent);
        }
    }
}

impl InstanceLimit {
    pub fn kind(&self) -> MemoryLimit {
        self.kind
    }

    /// The instance's cgroup v2 directory (where its other bounds go too).
    pub fn v2_cgroup(&self) -> Option<&Path> {
        match self.kind {
            MemoryLimit::CgroupV2 => self.cgroup.as_deref(),
            _ => None,
        }
    }

    /// Installs the limit in the child between fork and exec.
    pub fn install(&self, cmd: &mut tokio::process::Command) {
        let fd = self.procs_fd.as_ref().map(|f| f.as_raw_fd());
        let rlimit_bytes = (self.kind == MemoryLimit::Rlimit).then_some(self.bytes);
        // Not "parent is init": in a container the worker itself is PID 1.
        let worker = std::process::id() as libc::pid_t;
        // SAFETY: the closure only makes async-signal-safe syscalls
        // (prctl, getppid, write, setrlimit) on values computed before the fork.
        unsafe {
            cmd.pre_exec(move || {
                // An instance dies with the worker that started it, even when
                // the worker is killed outright (no orphans keep ports or memory).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != worker {
                    // The worker died between fork and prctl.
                    return Err(io::Error::other("worker exited"));
                }
                if let Some(fd) = fd
                    && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
                {
                    return Err(io::Error::last_os_error());
                }
                if let Some(bytes) = rlimit_bytes {
                    let lim = libc::rlimit {
                        rlim_cur: bytes,
                        rlim_max: bytes,
                    };
                    if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }

    /// Whether the kernel OOM-killed something in this instance's cgroup.
    pub fn oom_killed(&self) -> bool {
        let Some(dir) = &self.cgroup else {
            return false;
        };
        let (file, key) = match self.kind {
            MemoryLimit::CgroupV2 => ("memory.events", "oom_kill"),
            _ => ("memory.oom_control", "oom_kill"),
        };
        fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|text| {
                text.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == key).then(|| v.trim().parse::<u64>().ok())?
                })
            })
            .is_some_and(|n| n > 0)
    }

    /// Kills whatever is left in the cgroup and removes it.
    pub fn remove(&mut self) {
        self.procs_fd = None;
        if let Some(dir) = self.cgroup.take() {
            kill_and_remove(&dir);
        }
    }
}

/// Kills every process left in the cgroup `dir` and removes it (rmdir
/// fails while the last process is still being reaped: retried briefly).
pub(crate) fn kill_and_remove(dir: &Path) {
    for _ in 0..50 {
        if let Ok(pids) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in pids.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                // SAFETY: plain syscall; a stale pid at worst gets a signal
                // it no longer exists for (ESRCH).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if fs::remove_dir(dir).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Removes the parents that workers no longer running left behind (a
/// worker killed outright cannot remove its own): `fngate-worker-<pid>`
/// beside `dir`, for pids that are gone. Only empty ones go (rmdir).
pub(crate) fn remove_stale_parents(dir: &Path) {
    let Some(base) = dir.parent() else { return };
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix("fngate-worker-"))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = fs::remove_dir(e.path());
        }
    }
}

impl Drop for InstanceLimit {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The worker's own cgroup path in the v1 hierarchy of `controller`
/// (`N:memory:/path`), or in v2 (`0::/path`) for `None`.
fn own_cgroup(controller: Option<&str>) -> io::Result<String> {
    let text = fs::read_to_string("/proc/self/cgroup")?;
    text.lines()
        .find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (id, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            let hit = match controller {
                None => id == "0" && ctrls.is_empty(),
                Some(c) => ctrls.split(',').any(|x| x == c),
            };
            hit.then(|| path.to_string())
        })
        .ok_or_else(|| {
            let which = controller.unwrap_or("v2");
            io::Error::new(io::ErrorKind::NotFound, format!("no {which} cgroup"))
        })
}

/// `/sys/fs/cgroup/<controller>/<the worker's own cgroup there>/<tag>`, the
/// parent of this worker's instances in a v1 hierarchy, which must offer
/// `file` (stale parents of dead workers beside it are removed first).
pub(crate) fn v1_parent(controller: &str, file: &str, tag: &str) -> io::Result<PathBuf> {
    let root = Path::new("/sys/fs/cgroup").join(controller);
    let own = own_cgroup(Some(controller))?;
    let dir = root.join(own.trim_start_matches('/')).join(tag);
    remove_stale_parents(&dir);
    fs::create_dir_all(&dir)?;
    if !dir.join(file).exists() {
        let _ = fs::remove_dir(&dir);
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("no {file}"),
        ));
    }
    Ok(dir)
}

/// The cgroup2 mount: a pure v2 host mounts it at /sys/fs/cgroup, a hybrid
/// host at .../unified.
pub(crate) fn cgroup2_root() -> Option<&'static Path> {
    [
        Path::new("/sys/fs/cgroup"),
        Path::new("/sys/fs/cgroup/unified"),
    ]
    .into_iter()
    .find(|p| p.join("cgroup.controllers").exists())
}

fn cgroup_v2_parent(tag: &str) -> io::Result<(PathBuf, V2Controllers)> {
    let root = cgroup2_root()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup2 mount"))?;
    let own = own_cgroup(None)?;
    let base = root.join(own.trim_start_matches('/'));
    let controllers = fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
    if !controllers.split_whitespace().any(|c| c == "memory") {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "cgroup v2 has no memory controller here",
        ));
    }
    let dir = base.join(tag);
    remove_stale_parents(&dir);
    fs::create_dir_all(&dir)?;
    // One at a time: a controller the parent lacks must not stop the others.
    for c in ["+memory", "+pids", "+cpu"] {
        let _ = fs::write(dir.join("cgroup.subtree_control"), c);
    }
    let enabled = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let has = |name: &str| enabled.split_whitespace().any(|c| c == name);
    if !has("memory") {
        let _ = fs::remove_dir(&dir);
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "cannot delegate the v2 memory controller",
        ));
    }
    Ok((
        dir,
        V2Controllers {
            pids: has("pids"),
            cpu: has("cpu"),
        },
    ))
}

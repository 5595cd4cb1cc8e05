//! Bounding an instance's processes (`--max-pids`): a fork bomb in one
//! instance fails with `EAGAIN` in that instance, and the host and the
//! other instances go on.
//!
//! The bound is a pids cgroup per instance, in cgroup v1's `pids`
//! hierarchy, joined in `pre_exec` like the memory cgroup, so the
//! function's first fork is already counted. (`RLIMIT_NPROC` cannot do
//! this: it counts per user and does not bind root.) cgroup v2 hosts are
//! not supported yet: there an instance's pids and memory limits must share
//! one cgroup, which [`crate::memory`] owns.
//!
//! No mechanism while a bound was asked for is an error at start, never a
//! silent missing limit.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct PidsEnforcer {
    /// The per-worker parent cgroup; `None`: no bound.
    parent: Option<PathBuf>,
    max: u32,
}

/// One instance's pids cgroup, for its lifetime.
#[derive(Debug, Default)]
pub struct PidsLimit {
    dir: Option<PathBuf>,
    procs_fd: Option<OwnedFd>,
}

impl PidsEnforcer {
    /// `max`: the bound per instance, or `None` for no bound.
    pub fn detect(max: Option<u32>) -> io::Result<PidsEnforcer> {
        let Some(max) = max else {
            return Ok(PidsEnforcer {
                parent: None,
                max: 0,
            });
        };
        let tag = format!("fngate-worker-{}", std::process::id());
        let parent = v1_parent(&tag).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("--max-pids needs cgroup v1's pids hierarchy, writable here: {e}"),
            )
        })?;
        Ok(PidsEnforcer {
            parent: Some(parent),
            max,
        })
    }

    pub fn max(&self) -> Option<u32> {
        self.parent.as_ref().map(|_| self.max)
    }

    pub fn prepare(&self, instance_id: &str) -> io::Result<PidsLimit> {
        let Some(parent) = &self.parent else {
            return Ok(PidsLimit::default());
        };
        let dir = parent.join(instance_id);
        fs::create_dir(&dir)?;
        let mut limit = PidsLimit {
            dir: Some(dir.clone()),
            procs_fd: None,
        };
        fs::write(dir.join("pids.max"), self.max.to_string())?;
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))?;
        limit.procs_fd = Some(procs.into());
        Ok(limit)
    }

    /// Removes the worker's parent cgroup (at shutdown).
    pub fn cleanup(&self) {
        if let Some(parent) = &self.parent {
            let _ = fs::remove_dir(parent);
        }
    }
}

impl PidsLimit {
    /// Joins the cgroup in the child between fork and exec.
    pub fn install(&self, cmd: &mut tokio::process::Command) {
        let Some(fd) = self.procs_fd.as_ref().map(|f| f.as_raw_fd()) else {
            return;
        };
        // SAFETY: one write(2) on an fd opened before the fork.
        unsafe {
            cmd.pre_exec(move || match libc::write(fd, b"0".as_ptr().cast(), 1) {
                1 => Ok(()),
                _ => Err(io::Error::last_os_error()),
            });
        }
    }

    /// Kills whatever is left in the cgroup and removes it.
    pub fn remove(&mut self) {
        self.procs_fd = None;
        let Some(dir) = self.dir.take() else { return };
        for _ in 0..50 {
            if let Ok(pids) = fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in pids.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                    // SAFETY: plain syscall on a pid of this instance.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            if fs::remove_dir(&dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

impl Drop for PidsLimit {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The bound when none was asked for: 1024 for isolated instances where
/// cgroup v1's pids hierarchy exists; elsewhere none, said loudly.
pub fn default_bound(isolation: crate::isolation::Isolation) -> Option<u32> {
    if isolation != crate::isolation::Isolation::Namespaces {
        return None;
    }
    if Path::new("/sys/fs/cgroup/pids/pids.max").exists()
        || Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists()
    {
        return Some(1024);
    }
    tracing::warn!(
        "no cgroup v1 pids hierarchy: isolated instances' process counts are NOT bounded (a fork bomb can exhaust the host); see --max-pids"
    );
    None
}

/// `/sys/fs/cgroup/pids/<the worker's own pids cgroup>/<tag>`.
fn v1_parent(tag: &str) -> io::Result<PathBuf> {
    let root = Path::new("/sys/fs/cgroup/pids");
    let text = fs::read_to_string("/proc/self/cgroup")?;
    let own = text
        .lines()
        .find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            ctrls
                .split(',')
                .any(|c| c == "pids")
                .then(|| path.to_string())
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no pids cgroup"))?;
    let dir = root.join(own.trim_start_matches('/')).join(tag);
    fs::create_dir_all(&dir)?;
    if !dir.join("pids.max").exists() {
        let _ = fs::remove_dir(&dir);
        return Err(io::Error::new(io::ErrorKind::Unsupported, "no pids.max"));
    }
    Ok(dir)
}

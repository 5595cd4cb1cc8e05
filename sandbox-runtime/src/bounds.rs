//! An instance's process count and CPU share, through cgroup v1's `pids`
//! and `cpu` hierarchies (its memory is [`crate::memory`]'s).
//!
//! - **Processes** (`--max-pids`): a fork bomb in one instance fails with
//!   `EAGAIN` in that instance; the host and the other instances go on.
//!   (`RLIMIT_NPROC` cannot do this: it counts per user and does not bind
//!   root.)
//! - **CPU** (isolated instances, where the `cpu` hierarchy exists):
//!   `cpu.shares` proportional to the instance's memory, 1024 per GiB, as
//!   Function Compute sizes CPU with memory; under contention an instance
//!   gets CPU in proportion to its memory, idle CPU is anyone's.
//!
//! Each instance gets a cgroup per controller under a per-worker parent,
//! joined in `pre_exec` like the memory cgroup (writing `0` to an
//! already-open `cgroup.procs`), so the function's first instruction and
//! first fork are already counted. cgroup v2 hosts are not supported yet:
//! there these limits must share the instance's one cgroup, which
//! [`crate::memory`] owns. A bound asked for explicitly and not available
//! is an error at start; a default that cannot apply is a loud warning.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

#[derive(Debug, Default)]
pub struct Bounds {
    /// The pids parent cgroup and the bound.
    pids: Option<(PathBuf, u32)>,
    /// The cpu parent cgroup.
    cpu: Option<PathBuf>,
}

/// One instance's cgroups (other than memory), for its lifetime.
#[derive(Debug, Default)]
pub struct InstanceBounds {
    joined: Vec<(PathBuf, OwnedFd)>,
}

impl Bounds {
    /// `max_pids`: the process bound per instance (`None`: none);
    /// `cpu_shares`: give instances CPU shares by memory (where possible).
    pub fn detect(max_pids: Option<u32>, cpu_shares: bool) -> io::Result<Bounds> {
        let tag = format!("fngate-worker-{}", std::process::id());
        let pids = match max_pids {
            None => None,
            Some(max) => Some((
                crate::memory::v1_parent("pids", "pids.max", &tag).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("--max-pids needs cgroup v1's pids hierarchy, writable here: {e}"),
                    )
                })?,
                max,
            )),
        };
        let cpu = match cpu_shares {
            false => None,
            true => match crate::memory::v1_parent("cpu", "cpu.shares", &tag) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, "no cgroup v1 cpu hierarchy: instances' CPU is NOT shared by memory size");
                    None
                }
            },
        };
        Ok(Bounds { pids, cpu })
    }

    pub fn max_pids(&self) -> Option<u32> {
        self.pids.as_ref().map(|p| p.1)
    }

    pub fn cpu_shares(&self) -> bool {
        self.cpu.is_some()
    }

    pub fn prepare(&self, instance_id: &str, memory_mb: u32) -> io::Result<InstanceBounds> {
        let mut b = InstanceBounds::default();
        if let Some((parent, max)) = &self.pids {
            b.join(parent, instance_id, "pids.max", &max.to_string())?;
        }
        if let Some(parent) = &self.cpu {
            let shares = memory_mb.max(2);
            b.join(parent, instance_id, "cpu.shares", &shares.to_string())?;
        }
        Ok(b)
    }

    /// Removes the worker's parent cgroups (at shutdown).
    pub fn cleanup(&self) {
        for parent in self.pids.iter().map(|p| &p.0).chain(&self.cpu) {
            let _ = fs::remove_dir(parent);
        }
    }
}

impl InstanceBounds {
    /// Creates the instance's cgroup under `parent` with `file = value`.
    fn join(&mut self, parent: &Path, id: &str, file: &str, value: &str) -> io::Result<()> {
        let dir = parent.join(id);
        fs::create_dir(&dir)?;
        let procs = fs::write(dir.join(file), value).and_then(|_| {
            fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
        });
        match procs {
            Ok(f) => {
                self.joined.push((dir, f.into()));
                Ok(())
            }
            Err(e) => {
                let _ = fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    /// Joins the cgroups in the child between fork and exec.
    pub fn install(&self, cmd: &mut tokio::process::Command) {
        for fd in self.joined.iter().map(|(_, f)| f.as_raw_fd()) {
            // SAFETY: one write(2) on an fd opened before the fork.
            unsafe {
                cmd.pre_exec(move || match libc::write(fd, b"0".as_ptr().cast(), 1) {
                    1 => Ok(()),
                    _ => Err(io::Error::last_os_error()),
                });
            }
        }
    }

    /// Kills whatever is left in the cgroups and removes them.
    pub fn remove(&mut self) {
        for (dir, fd) in self.joined.drain(..) {
            drop(fd);
            crate::memory::kill_and_remove(&dir);
        }
    }
}

impl Drop for InstanceBounds {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The process bound when none was asked for: 1024 for isolated instances
/// where cgroup v1's pids hierarchy exists; elsewhere none, said loudly.
pub fn default_max_pids(isolation: crate::isolation::Isolation) -> Option<u32> {
    if isolation != crate::isolation::Isolation::Namespaces {
        return None;
    }
    if Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists() {
        return Some(1024);
    }
    tracing::warn!(
        "no cgroup v1 pids hierarchy: isolated instances' process counts are NOT bounded (a fork bomb can exhaust the host); see --max-pids"
    );
    None
}

//! An instance's process count and CPU share, through cgroup v1's `pids`
//! and `cpu` hierarchies, or cgroup v2's `pids` and `cpu` controllers (its
//! memory is [`crate::memory`]'s).
//!
//! - **Processes** (`--max-pids`): a fork bomb in one instance fails with
//!   `EAGAIN` in that instance; the host and the other instances go on.
//!   (`RLIMIT_NPROC` cannot do this: it counts per user and does not bind
//!   root.)
//! - **CPU** (isolated instances, where the `cpu` hierarchy exists):
//!   `cpu.shares` proportional to the instance's memory, 1024 per GiB (v2:
//!   `cpu.weight`, 100 per GiB, 100 being v2's default as 1024 is v1's), as
//!   Function Compute sizes CPU with memory; under contention an instance
//!   gets CPU in proportion to its memory, idle CPU is anyone's.
//!
//! cgroup v1: each instance gets a cgroup per controller under a per-worker
//! parent, joined in `pre_exec` like the memory cgroup (writing `0` to an
//! already-open `cgroup.procs`), so the function's first instruction and
//! first fork are already counted. cgroup v2 has one cgroup per process:
//! the instance's, which [`crate::memory`] creates and joins; its `pids.max`
//! and `cpu.weight` are written there before the process joins (where the
//! worker's parent cgroup could delegate `pids` and `cpu`). A bound asked
//! for explicitly and not available is an error at start; a default that
//! cannot apply is a loud warning.

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
    /// cgroup v2: the bounds written in the instance's own cgroup.
    v2_pids: Option<u32>,
    v2_cpu: bool,
}

/// `cpu.weight` for an instance of `memory_mb`: 100 (v2's default) per GiB,
/// within v2's 1..=10000.
pub fn cpu_weight(memory_mb: u32) -> u32 {
    (memory_mb.saturating_mul(100) / 1024).clamp(1, 10_000)
}

/// One instance's cgroups (other than memory), for its lifetime.
#[derive(Debug, Default)]
pub struct InstanceBounds {
    joined: Vec<(PathBuf, OwnedFd)>,
}

impl Bounds {
    /// `max_pids`: the process bound per instance (`None`: none);
    /// `cpu_shares`: give instances CPU shares by memory (where possible);
    /// `memory`: the memory enforcer, whose cgroup v2 instances' cgroups
    /// carry the bounds on a v2 host.
    pub fn detect(
        max_pids: Option<u32>,
        cpu_shares: bool,
        memory: &crate::memory::MemoryEnforcer,
    ) -> io::Result<Bounds> {
        if memory.kind() == crate::api::MemoryLimit::CgroupV2 {
            let v2 = memory.v2_controllers();
            if max_pids.is_some() && !v2.pids {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "--max-pids needs cgroup v2's pids controller delegated to the worker's cgroup",
                ));
            }
            if cpu_shares && !v2.cpu {
                tracing::warn!(
                    "no cgroup v2 cpu controller here: instances' CPU is NOT shared by memory size"
                );
            }
            return Ok(Bounds {
                v2_pids: max_pids,
                v2_cpu: cpu_shares && v2.cpu,
                ..Bounds::default()
            });
        }
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
        Ok(Bounds {
            pids,
            cpu,
            ..Bounds::default()
        })
    }

    pub fn max_pids(&self) -> Option<u32> {
        self.pids.as_ref().map(|p| p.1).or(self.v2_pids)
    }

    pub fn cpu_shares(&self) -> bool {
        self.cpu.is_some() || self.v2_cpu
    }

    /// The instance's bounds; `v2_cgroup` is its cgroup v2 directory (from
    /// its memory limit) on a v2 host.
    pub fn prepare(
        &self,
        instance_id: &str,
        memory_mb: u32,
        v2_cgroup: Option<&Path>,
    ) -> io::Result<InstanceBounds> {
        let mut b = InstanceBounds::default();
        if let Some(dir) = v2_cgroup {
            if let Some(max) = self.v2_pids {
                fs::write(dir.join("pids.max"), max.to_string())?;
            }
            if self.v2_cpu {
                fs::write(dir.join("cpu.weight"), cpu_weight(memory_mb).to_string())?;
            }
        }
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
/// where cgroup v1's pids hierarchy or a cgroup v2 pids controller exists;
/// elsewhere none, said loudly.
pub fn default_max_pids(isolation: crate::isolation::Isolation) -> Option<u32> {
    if isolation != crate::isolation::Isolation::Namespaces {
        return None;
    }
    let v2_pids = crate::memory::cgroup2_root().is_some_and(|root| {
        fs::read_to_string(root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "pids"))
    });
    if Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists() || v2_pids {
        return Some(1024);
    }
    tracing::warn!(
        "no cgroup pids controller (v1 or v2): isolated instances' process counts are NOT bounded (a fork bomb can exhaust the host); see --max-pids"
    );
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_weight_is_proportional_to_memory_within_v2s_range() {
        use super::cpu_weight;
        assert_eq!(cpu_weight(1024), 100);
        assert_eq!(cpu_weight(128), 12);
        assert_eq!(cpu_weight(3072), 300);
        assert_eq!(cpu_weight(0), 1);
        assert_eq!(cpu_weight(u32::MAX), 10_000);
    }
}

//! An isolated instance's root file system: a fresh tmpfs that holds only
//! what a language runtime needs, planned here by the worker as plain data
//! ([`plan`]) and built by the instance's PID 1 ([`crate::isolation`])
//! before it `pivot_root`s into it. Nothing of the host is visible unless
//! a step below names it.
//!
//! What an instance sees:
//! - `/usr`, `/bin`, `/sbin`, `/lib*`: read-only binds of the host's (or the
//!   same symbolic links, on a merged-`/usr` host);
//! - `/etc`: generated `passwd`, `group` (the function's own user,
//!   [`USER`]), `hosts`, `resolv.conf` (the worker's DNS forwarder) and
//!   `nsswitch.conf`, plus read-only binds of a few files every runtime
//!   reads and nobody keeps secrets in ([`ETC_FILES`]), and
//!   `/etc/ssl/certs` (the worker's `--ca-certs`);
//! - `/dev`: `null`, `zero`, `full`, `random`, `urandom`, `tty` (binds of
//!   the host's nodes), `shm`, a private `pts`, and the usual links;
//! - a fresh `/proc` (its `sys` read-only), a private `/tmp` (also `HOME`
//!   and the working directory);
//! - the function's code: the directory of every absolute path its
//!   `command` names (read-only, at the same path), its `readable_paths`
//!   (read-only) and `writable_paths` (read-write), each at its own path.
//!
//! Not there: `/run` (and so `/var/run` and every daemon's socket),
//! `/root`, `/home`, `/sys`, `/var`, the rest of `/etc`, the worker's and
//! gateway's files, other functions' code.
//!
//! The tmpfs is the instance's whole writable area apart from its
//! `writable_paths`: its size is the function's `disk_mb`, so writing past
//! it fails with `ENOSPC`. Its pages are memory, counted in the instance's
//! memory cgroup as well.

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The user name a function runs as (its uid and gid are the worker's
/// choice, [`crate::identity`]).
pub const USER: &str = "sbx_user";

/// The instance's home, working directory and `TMPDIR`.
pub const TMP: &str = "/tmp";

/// Host directories a runtime needs: bound read-only, or recreated as the
/// same symbolic link.
const SYSTEM: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// Files of the host's `/etc` that runtimes read and that hold no secret:
/// the dynamic linker's cache, service and protocol names, the time zone,
/// MIME types, OpenSSL's configuration, and the alternatives links.
const ETC_FILES: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/services",
    "/etc/protocols",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/mime.types",
    "/etc/os-release",
    "/etc/ssl/openssl.cnf",
    "/etc/alternatives",
];

/// Device nodes bound from the host's `/dev`.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Directories of the instance's own skeleton: no `readable_paths` /
/// `writable_paths` entry may be one of them (but may be under the first
/// two), nor under the rest.
const RESERVED: &[&str] = &["/etc", "/tmp"];
const RESERVED_UNDER: &[&str] = &["/proc", "/dev", "/sys"];

/// One step of building the root, in order; paths are the instance's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// A directory, root's, with this mode.
    Dir { path: PathBuf, mode: u32 },
    /// A symbolic link at `path` to `target`.
    Link { path: PathBuf, target: PathBuf },
    /// A file with these contents, root's, mode 0644.
    File { path: PathBuf, contents: String },
    /// The host's `source` at `path`: read-only unless `writable`; device
    /// nodes work only where `device`. Never `suid`.
    Bind {
        source: PathBuf,
        path: PathBuf,
        writable: bool,
        device: bool,
    },
    /// A fresh `/proc` (the instance's PID namespace), `/proc/sys` read-only.
    Proc,
    /// A private `devpts` at `/dev/pts`.
    Devpts,
}

/// What the plan depends on.
pub struct Inputs<'a> {
    pub hostname: &'a str,
    /// The instance's own address (in `/etc/hosts` under its hostname, so
    /// a lookup of its own name never leaves the instance).
    pub addr: Option<Ipv4Addr>,
    pub uid: u32,
    pub gid: u32,
    /// The resolver in `/etc/resolv.conf` (the worker's forwarder), if any.
    pub dns: Option<Ipv4Addr>,
    /// The host directory shown as `/etc/ssl/certs`.
    pub ca_certs: &'a Path,
    /// The function's command (absolute paths in it are its code).
    pub command: &'a [String],
    pub readable: &'a [PathBuf],
    pub writable: &'a [PathBuf],
}

/// Checks a `readable_paths` / `writable_paths` entry: absolute, no `..`,
/// and not `/` or a part of the instance's own skeleton.
pub fn check_path(p: &str) -> Result<PathBuf, &'static str> {
    let path = PathBuf::from(p);
    if !path.is_absolute() || p.split('/').any(|c| c == "..") {
        return Err("must be absolute, without \"..\"");
    }
    if path == Path::new("/")
        || RESERVED.iter().any(|r| path == Path::new(r))
        || RESERVED_UNDER.iter().any(|r| path.starts_with(r))
    {
        return Err("must not be /, /etc, /tmp, nor under /proc, /dev or /sys");
    }
    if SYSTEM.iter().any(|s| path.starts_with(s)) {
        return Err("is a system directory, visible read-only already");
    }
    Ok(path)
}

/// The command as the instance runs it: each absolute path outside the
/// system directories that exists is made canonical (no `..`, no symbolic
/// link), since only what it names is in the instance's root: a path that
/// walks through `..` or a link needs the directories it walks.
pub fn resolve_command(command: &[String]) -> Vec<String> {
    command
        .iter()
        .map(|a| {
            let p = Path::new(a);
            if !a.starts_with('/') || SYSTEM.iter().any(|s| p.starts_with(s)) {
                return a.clone();
            }
            match std::fs::canonicalize(p) {
                Ok(c) => c.to_string_lossy().into_owned(),
                Err(_) => a.clone(),
            }
        })
        .collect()
}

/// The directories (or single files) a command's absolute paths need:
/// an existing file's directory, or the file alone where that directory is
/// `/` or part of the skeleton (binding the host's `/tmp` would show all of
/// it); an existing directory itself. Paths the system directories already
/// show need nothing.
fn code_paths(command: &[String]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for a in command {
        if !a.starts_with('/') || a.split('/').any(|c| c == "..") {
            continue;
        }
        let p = Path::new(a);
        if SYSTEM.iter().any(|s| p.starts_with(s)) {
            continue;
        }
        let Ok(meta) = std::fs::metadata(p) else {
            continue;
        };
        let fits = |q: &Path| check_path(&q.to_string_lossy()).is_ok();
        match p.parent() {
            _ if meta.is_dir() => {
                if fits(p) {
                    out.push(p.to_path_buf());
                }
            }
            Some(dir) if fits(dir) => out.push(dir.to_path_buf()),
            _ => out.push(p.to_path_buf()),
        }
    }
    out
}

/// A host path shown as it is on the host: the same symbolic link, or a
/// read-only bind (of a directory only, where `dirs_only`); nothing where
/// it does not exist.
fn as_on_host(p: &Path, dirs_only: bool) -> Option<Step> {
    let m = std::fs::symlink_metadata(p).ok()?;
    if m.file_type().is_symlink() {
        return Some(Step::Link {
            path: p.into(),
            target: std::fs::read_link(p).ok()?,
        });
    }
    (m.is_dir() || !dirs_only).then(|| Step::Bind {
        source: p.into(),
        path: p.into(),
        writable: false,
        device: false,
    })
}

/// The steps that build an instance's root, in order.
pub fn plan(i: &Inputs<'_>) -> Vec<Step> {
    let mut s = Vec::with_capacity(64);
    let dir = |path: &str, mode| Step::Dir {
        path: path.into(),
        mode,
    };
    let ro = |source: &Path, path: &Path| Step::Bind {
        source: source.to_path_buf(),
        path: path.to_path_buf(),
        writable: false,
        device: false,
    };
    s.extend(SYSTEM.iter().filter_map(|d| as_on_host(Path::new(d), true)));
    s.push(dir("/etc", 0o755));
    s.push(dir("/etc/ssl", 0o755));
    let file = |path: &str, contents: String| Step::File {
        path: path.into(),
        contents,
    };
    s.push(file(
        "/etc/passwd",
        format!(
            "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n\
             {USER}:x:{}:{}:fngate function:{TMP}:/usr/sbin/nologin\n\
             nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
            i.uid, i.gid
        ),
    ));
    s.push(file(
        "/etc/group",
        format!(
            "root:x:0:\ntty:x:5:\n{USER}:x:{}:\nnogroup:x:65534:\n",
            i.gid
        ),
    ));
    let own = match i.addr {
        Some(a) => format!("{a}\t{}\n", i.hostname),
        None => format!("127.0.1.1\t{}\n", i.hostname),
    };
    s.push(file(
        "/etc/hosts",
        format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{own}"),
    ));
    s.push(file(
        "/etc/resolv.conf",
        match i.dns {
            Some(ns) => format!("nameserver {ns}\noptions timeout:2 attempts:2\n"),
            None => String::new(),
        },
    ));
    s.push(file(
        "/etc/nsswitch.conf",
        "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n\
         protocols: files\nservices: files\nethers: files\nrpc: files\n"
            .into(),
    ));
    s.extend(
        ETC_FILES
            .iter()
            .filter_map(|f| as_on_host(Path::new(f), false)),
    );
    if i.ca_certs.is_dir() {
        s.push(ro(i.ca_certs, Path::new("/etc/ssl/certs")));
    }
    s.push(dir("/dev", 0o755));
    for d in DEVICES {
        let p = Path::new("/dev").join(d);
        if p.exists() {
            s.push(Step::Bind {
                source: p.clone(),
                path: p,
                writable: true,
                device: true,
            });
        }
    }
    s.push(dir("/dev/shm", 0o1777));
    s.push(dir("/dev/pts", 0o755));
    s.push(Step::Devpts);
    for (link, target) in [
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        s.push(Step::Link {
            path: link.into(),
            target: target.into(),
        });
    }
    s.push(dir("/proc", 0o555));
    s.push(Step::Proc);
    s.push(dir(TMP, 0o1777));
    // The function's own paths, parents before children; a path both
    // readable and writable is writable.
    let mut own: Vec<(PathBuf, bool)> = Vec::new();
    for (p, writable) in i
        .writable
        .iter()
        .map(|p| (p.clone(), true))
        .chain(i.readable.iter().map(|p| (p.clone(), false)))
        .chain(code_paths(i.command).into_iter().map(|p| (p, false)))
    {
        if !own.iter().any(|(q, _)| *q == p) {
            own.push((p, writable));
        }
    }
    own.sort_by_key(|(p, _)| p.components().count());
    for (p, writable) in own {
        s.push(Step::Bind {
            source: p.clone(),
            path: p,
            writable,
            device: false,
        });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>(command: &'a [String], w: &'a [PathBuf], r: &'a [PathBuf]) -> Inputs<'a> {
        Inputs {
            hostname: "i-1",
            addr: Some(Ipv4Addr::new(10, 213, 0, 2)),
            uid: 2_000_000_123,
            gid: 2_000_000_123,
            dns: Some(Ipv4Addr::new(10, 213, 0, 1)),
            ca_certs: Path::new("/etc/ssl/certs"),
            command,
            readable: r,
            writable: w,
        }
    }

    fn binds(steps: &[Step]) -> Vec<(PathBuf, bool)> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Bind {
                    path,
                    writable,
                    device: false,
                    ..
                } => Some((path.clone(), *writable)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn paths_are_checked() {
        for good in ["/srv/data", "/tmp/x", "/etc/app"] {
            assert!(check_path(good).is_ok(), "{good}");
        }
        for bad in [
            "rel",
            "/",
            "/a/../etc",
            "/proc/1",
            "/dev",
            "/etc",
            "/tmp",
            "/sys/fs",
            "/usr/lib",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_root_holds_only_what_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let code = dir.path().join("code");
        std::fs::create_dir(&code).unwrap();
        std::fs::write(code.join("main.py"), "").unwrap();
        let data = dir.path().join("data");
        let command = vec![
            "python3".to_string(),
            code.join("main.py").display().to_string(),
            "/usr/bin/env".into(),
            "/does/not/exist".into(),
            "/etc/hostname".into(),
            "/tmp".into(),
        ];
        let w = vec![data.clone()];
        let steps = plan(&inputs(&command, &w, &[]));
        let b = binds(&steps);
        // The code's directory read-only, the data read-write; a file of
        // /etc alone (never its directory); nothing for paths the system
        // directories cover or that do not exist.
        assert!(b.contains(&(code.clone(), false)), "{b:?}");
        assert!(b.contains(&(data.clone(), true)), "{b:?}");
        assert!(b.contains(&("/etc/hostname".into(), false)), "{b:?}");
        assert!(!b.iter().any(|(p, _)| p.starts_with("/does")), "{b:?}");
        for hidden in ["/run", "/var", "/root", "/home", "/sys", "/etc", "/tmp"] {
            assert!(
                !b.iter().any(|(p, _)| p == Path::new(hidden)),
                "{hidden} in {b:?}"
            );
        }
        let passwd = steps
            .iter()
            .find_map(|s| match s {
                Step::File { path, contents } if path == Path::new("/etc/passwd") => {
                    Some(contents.clone())
                }
                _ => None,
            })
            .unwrap();
        assert!(
            passwd.contains("sbx_user:x:2000000123:2000000123:"),
            "{passwd}"
        );
        // Mount points exist before what is mounted under them.
        let at = |p: &str| {
            steps
                .iter()
                .position(|s| matches!(s, Step::Dir { path, .. } if path == Path::new(p)))
        };
        let proc = steps.iter().position(|s| *s == Step::Proc).unwrap();
        assert!(at("/proc").unwrap() < proc);
        assert!(at("/dev/pts").unwrap() < steps.iter().position(|s| *s == Step::Devpts).unwrap());
    }

    #[test]
    fn command_paths_are_made_canonical_outside_the_system_directories() {
        let dir = tempfile::tempdir().unwrap();
        let code = dir.path().canonicalize().unwrap().join("code");
        std::fs::create_dir(&code).unwrap();
        std::fs::write(code.join("main.py"), "").unwrap();
        let walked = format!("{}/../code/main.py", code.display());
        let got = resolve_command(&["/usr/bin/python3".into(), walked, "-v".into()]);
        assert_eq!(got[0], "/usr/bin/python3");
        assert_eq!(got[1], code.join("main.py").display().to_string());
        assert_eq!(got[2], "-v");
    }

    #[test]
    fn a_path_both_readable_and_writable_is_writable_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().to_path_buf();
        std::fs::write(p.join("f.py"), "").unwrap();
        let command = vec![p.join("f.py").display().to_string()];
        let w = vec![p.clone()];
        let r = vec![p.clone(), p.join("sub")];
        let b = binds(&plan(&inputs(&command, &w, &r)));
        let own: Vec<_> = b.iter().filter(|(q, _)| q.starts_with(&p)).collect();
        assert_eq!(own, vec![&(p.clone(), true), &(p.join("sub"), false)]);
    }
}

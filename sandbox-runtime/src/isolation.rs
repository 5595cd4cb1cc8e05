//! Instance isolation: `--isolation namespaces` (the default) runs each
//! instance in its own PID, mount, UTS, IPC and network namespaces, as an
//! unprivileged user, in a root file system of its own; `process`, only
//! when asked for, runs it as a plain child process. A worker that cannot
//! isolate refuses to start rather than fall back.
//!
//! How an isolated instance starts. The worker spawns its own executable
//! with [`INIT_ARG`], the instance's [`Init`] (JSON) and its command,
//! having unshared the mount, UTS, IPC and PID namespaces in `pre_exec`
//! (after joining the instance's cgroups and network namespace, which
//! everything below inherits). That process, the instance's *keeper*
//! ([`init_main`]), forks once: its child is PID 1 of the new PID
//! namespace, which builds the instance's world and execs the function:
//! - every mount is made private, then a tmpfs of `disk_mb` is mounted on
//!   the instance's directory and filled by the steps of
//!   [`crate::rootfs::plan`] (read-only binds of the system directories
//!   and the function's code, a generated `/etc`, a minimal `/dev`, a
//!   fresh `/proc` with `/proc/sys` read-only, a private `/tmp`);
//! - it `pivot_root`s into it and detaches the host's mounts: nothing of
//!   the host the plan does not name exists in the instance's view;
//! - the hostname is the instance id; `no_new_privs` is set, so nothing it
//!   execs gains privileges; `RLIMIT_NOFILE` is `--max-open-files`;
//! - every capability is dropped from the bounding set, and it becomes its
//!   function's unprivileged uid and gid ([`crate::identity`]), with no
//!   supplementary groups: it holds no capability after its exec, and file
//!   modes bind it like any other user;
//! - a seccomp filter (seccompiler) answers `EPERM` to the system calls a
//!   function never needs ([`deny_syscalls`]).
//!
//! The keeper forwards SIGTERM, SIGINT, SIGHUP and SIGQUIT to PID 1, waits
//! for it and ends the way it ended (its exit code, or the same signal), so
//! the worker's exit watcher sees the function's own end. PID 1 is killed
//! when its keeper dies (`PR_SET_PDEATHSIG`), and the kernel kills every
//! process of the namespace with its PID 1.
//!
//! The process count and CPU share are [`crate::bounds`]' (`--max-pids`,
//! `cpu.shares` by memory).
//!
//! The network namespace (and the egress policy in it) is
//! [`crate::network`]'s: made before the process, joined in `pre_exec`.

use std::ffi::{CStr, CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

/// The first argument that makes a fngate binary an instance's keeper.
pub const INIT_ARG: &str = "__fngate-instance-init";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// A plain child process (shares the host's process table and files).
    Process,
    /// Its own PID, mount, UTS, IPC and network namespaces (Linux, root).
    #[default]
    Namespaces,
}

const FLAGS: libc::c_int =
    libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;

/// Whether this process may create the namespaces: spawns `true` in them.
pub fn probe() -> Result<(), String> {
    let mut cmd = std::process::Command::new("/bin/true");
    unshare_before_exec(&mut cmd);
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("a process in new namespaces ended {s}")),
        Err(e) => Err(format!(
            "cannot create PID, mount, UTS and IPC namespaces ({e}): run the worker as root (or with CAP_SYS_ADMIN), or with --isolation process"
        )),
    }
}

/// What the keeper needs to know.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Init {
    /// The host directory the instance's root tmpfs is mounted on (in its
    /// own mount namespace; on the host it stays an empty directory).
    pub root: PathBuf,
    /// The root tmpfs's size: the instance's writable area.
    pub disk_mb: u32,
    pub max_open_files: u32,
    pub hostname: String,
    pub uid: u32,
    pub gid: u32,
    pub steps: Vec<crate::rootfs::Step>,
}

/// The keeper's arguments after the executable: [`INIT_ARG`], the
/// [`Init`] as JSON, `--`, the command.
pub fn init_args(init: &Init, command: &[String]) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        INIT_ARG.into(),
        serde_json::to_string(init).unwrap_or_default().into(),
        "--".into(),
    ];
    a.extend(command.iter().map(OsString::from));
    a
}

/// Installs the namespaces' creation on `cmd` (run in the child before exec).
/// (A tokio command passes its `as_std_mut()`.)
pub fn unshare_before_exec(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: unshare is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| match libc::unshare(FLAGS) {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        });
    }
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let child = CHILD.load(Ordering::Relaxed);
    if child > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(child, sig) };
    }
}

fn die(what: &str) -> ! {
    let e = std::io::Error::last_os_error();
    eprintln!("fngate instance init: {what}: {e}");
    std::process::exit(126)
}

/// The keeper: `args` are those after [`INIT_ARG`]. Never returns.
pub fn init_main(args: &[OsString]) -> ! {
    let init = args
        .first()
        .and_then(|a| a.to_str())
        .and_then(|j| serde_json::from_str::<Init>(j).ok());
    let (Some(init), Some(sep)) = (init, args.iter().position(|a| a == "--")) else {
        eprintln!("fngate instance init: bad arguments");
        std::process::exit(126)
    };
    let command = &args[sep + 1..];
    if command.is_empty() {
        eprintln!("fngate instance init: no command");
        std::process::exit(126)
    }
    // SAFETY: fork in a process that has started no thread yet.
    match unsafe { libc::fork() } {
        -1 => die("fork"),
        0 => instance(&init, command),
        child => keep(child),
    }
}

fn keep(child: libc::pid_t) -> ! {
    CHILD.store(child, Ordering::Relaxed);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: installs an async-signal-safe handler.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(child, &mut status, 0) };
        if r == child {
            break;
        }
        if r == -1 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            die("waitpid");
        }
    }
    if libc::WIFEXITED(status) {
        std::process::exit(libc::WEXITSTATUS(status));
    }
    let sig = libc::WTERMSIG(status);
    // End by the same signal, so the worker reports it as the function's.
    // SAFETY: resets a handler and signals this process.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::kill(libc::getpid(), sig);
    }
    std::process::exit(128 + sig)
}

fn cstr(p: &[u8]) -> CString {
    CString::new(p).unwrap_or_default()
}

/// The highest capability number the filter drops (the kernel ignores, with
/// EINVAL, those it does not know).
const CAP_LAST: u32 = 63;

/// System calls a function never needs, answered `EPERM`: namespaces and
/// mounts, kernel modules and images, tracing other processes, the clock,
/// keyrings, BPF and perf, swap, reboot. Everything else is allowed (a deny
/// list: functions run arbitrary language runtimes).
fn deny_syscalls() -> Result<(), seccompiler::Error> {
    use seccompiler::{SeccompAction, SeccompFilter, TargetArch};
    let mut denied: Vec<libc::c_long> = vec![
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_open_tree,
        libc::SYS_move_mount,
        libc::SYS_fsopen,
        libc::SYS_fsmount,
        libc::SYS_fsconfig,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_ptrace,
        libc::SYS_process_vm_writev,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_sethostname,
        libc::SYS_setdomainname,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_syslog,
        libc::SYS_vhangup,
    ];
    #[cfg(target_arch = "x86_64")]
    denied.extend([libc::SYS_iopl, libc::SYS_ioperm, libc::SYS_uselib]);
    let arch = TargetArch::try_from(std::env::consts::ARCH)?;
    let rules = denied.into_iter().map(|s| (s, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?;
    let program: seccompiler::BpfProgram = filter.try_into()?;
    seccompiler::apply_filter(&program)
}

fn sys(r: libc::c_int, what: &dyn Fn() -> String) {
    if r != 0 {
        die(&what())
    }
}

fn c_path(p: &Path) -> CString {
    cstr(p.as_os_str().as_bytes())
}

fn mount(
    src: Option<&CString>,
    target: &CString,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> libc::c_int {
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY: every pointer is a NUL-terminated string that outlives the call, or null.
    unsafe {
        libc::mount(
            src.map_or(null, |s| s.as_ptr()),
            target.as_ptr(),
            fstype.map_or(null, |s| s.as_ptr()),
            flags,
            data.map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    }
}

/// `path` of the instance inside the host directory `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Carries out one step of the plan inside `root` (still the host's path).
fn build(root: &Path, step: &crate::rootfs::Step) {
    use crate::rootfs::Step;
    use std::os::unix::fs::PermissionsExt;
    let io = |what: &str, r: std::io::Result<()>| {
        if let Err(e) = r {
            eprintln!("fngate instance init: {what}: {e}");
            std::process::exit(126)
        }
    };
    match step {
        Step::Dir { path, mode } => {
            let p = under(root, path);
            io(
                &format!("making {}", path.display()),
                std::fs::create_dir_all(&p).and_then(|_| {
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))
                }),
            );
        }
        Step::Link { path, target } => {
            let p = under(root, path);
            io(
                &format!("linking {}", path.display()),
                p.parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|_| std::os::unix::fs::symlink(target, &p)),
            );
        }
        Step::File { path, contents } => {
            let p = under(root, path);
            io(
                &format!("writing {}", path.display()),
                std::fs::write(&p, contents),
            );
        }
        Step::Bind {
            source,
            path,
            writable,
            device,
        } => {
            let p = under(root, path);
            // The mount point: a directory for a directory, an empty file
            // for anything else.
            let made = match std::fs::metadata(source) {
                Ok(m) if m.is_dir() => std::fs::create_dir_all(&p),
                Ok(_) => p
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|_| {
                        std::fs::OpenOptions::new()
                            .create(true)
                            .truncate(false)
                            .write(true)
                            .open(&p)
                            .map(drop)
                    }),
                Err(e) => Err(e),
            };
            io(&format!("mount point for {}", source.display()), made);
            let (src, target) = (c_path(source), c_path(&p));
            sys(
                mount(Some(&src), &target, None, libc::MS_BIND, None),
                &|| format!("binding {}", source.display()),
            );
            let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID;
            if !device {
                flags |= libc::MS_NODEV;
            }
            if !writable {
                flags |= libc::MS_RDONLY;
            }
            sys(mount(None, &target, None, flags, None), &|| {
                format!("remounting {}", path.display())
            });
        }
        Step::Proc => {
            let p = c_path(&under(root, Path::new("/proc")));
            let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            sys(
                mount(Some(&cstr(b"proc")), &p, Some(c"proc"), flags, None),
                &|| "mounting /proc".into(),
            );
            // The kernel's tunables stay read-only (as in container runtimes).
            let s = c_path(&under(root, Path::new("/proc/sys")));
            let ro = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | flags;
            sys(
                mount(Some(&s), &s, None, libc::MS_BIND | libc::MS_REC, None),
                &|| "binding /proc/sys".into(),
            );
            sys(mount(None, &s, None, ro, None), &|| {
                "making /proc/sys read-only".into()
            });
        }
        Step::Devpts => {
            let p = c_path(&under(root, Path::new("/dev/pts")));
            sys(
                mount(
                    Some(&cstr(b"devpts")),
                    &p,
                    Some(c"devpts"),
                    libc::MS_NOSUID | libc::MS_NOEXEC,
                    Some(c"newinstance,ptmxmode=0666,mode=0620"),
                ),
                &|| "mounting /dev/pts".into(),
            );
        }
    }
}

/// PID 1 of the instance's namespace: its world, then the function.
fn instance(init: &Init, command: &[OsString]) -> ! {
    // SAFETY: plain system calls on this single-threaded child.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::umask(0o022);
    }
    sys(
        mount(
            None,
            &cstr(b"/"),
            None,
            libc::MS_REC | libc::MS_PRIVATE,
            None,
        ),
        &|| "making mounts private".into(),
    );
    let root = c_path(&init.root);
    let opts = cstr(format!("size={}m,mode=0755", init.disk_mb.max(1)).as_bytes());
    sys(
        mount(
            Some(&cstr(b"tmpfs")),
            &root,
            Some(c"tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(&opts),
        ),
        &|| "mounting the instance's root".into(),
    );
    for step in &init.steps {
        build(&init.root, step);
    }
    // SAFETY: plain system calls; "." is the new root, the old one is
    // stacked on it by pivot_root(".", ".") and detached at once.
    unsafe {
        sys(libc::chdir(root.as_ptr()), &|| "entering the root".into());
        sys(
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int,
            &|| "pivot_root".into(),
        );
        sys(libc::umount2(c".".as_ptr(), libc::MNT_DETACH), &|| {
            "detaching the host's mounts".into()
        });
        let tmp = cstr(crate::rootfs::TMP.as_bytes());
        sys(libc::chdir(tmp.as_ptr()), &|| "entering /tmp".into());
        let h = init.hostname.as_bytes();
        sys(libc::sethostname(h.as_ptr().cast(), h.len()), &|| {
            "sethostname".into()
        });
        sys(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), &|| {
            "no_new_privs".into()
        });
        let files = libc::rlimit {
            rlim_cur: init.max_open_files.into(),
            rlim_max: init.max_open_files.into(),
        };
        sys(libc::setrlimit(libc::RLIMIT_NOFILE, &files), &|| {
            "RLIMIT_NOFILE".into()
        });
        // No capability survives: none in the bounding set, and the change
        // of uid below clears the permitted and effective sets.
        for cap in 0..=libc::c_ulong::from(CAP_LAST) {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
                && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
            {
                die("dropping capabilities");
            }
        }
        let (uid, gid) = (init.uid, init.gid);
        sys(libc::setgroups(0, std::ptr::null()), &|| "setgroups".into());
        sys(libc::setresgid(gid, gid, gid), &|| "setresgid".into());
        sys(libc::setresuid(uid, uid, uid), &|| "setresuid".into());
        if libc::getuid() != uid || libc::geteuid() != uid || libc::getegid() != gid {
            die("changing to the function's user");
        }
        // A change of credentials clears the parent-death signal: armed
        // again (a keeper that died in between is caught by the release,
        // which kills whatever is left in the instance's cgroups).
        sys(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL), &|| {
            "PR_SET_PDEATHSIG".into()
        });
    }
    if let Err(e) = deny_syscalls() {
        eprintln!("fngate instance init: seccomp filter: {e}");
        std::process::exit(126)
    }
    let err = std::os::unix::process::CommandExt::exec(
        std::process::Command::new(&command[0]).args(&command[1..]),
    );
    eprintln!("fngate instance init: cannot run {:?}: {err}", command[0]);
    std::process::exit(127)
}

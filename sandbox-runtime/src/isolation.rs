//! Instance isolation: `--isolation namespaces` (the default) runs each
//! instance in its own PID, mount, UTS, IPC and network namespaces;
//! `process`, only when asked for, runs it as a plain child process. A
//! worker that cannot isolate refuses to start rather than fall back.
//!
//! How an isolated instance starts. The worker spawns its own executable
//! with [`INIT_ARG`] and the instance's command, having unshared the mount,
//! UTS, IPC and PID namespaces in `pre_exec` (after joining the memory
//! cgroup, which everything below inherits). That process, the instance's
//! *keeper* ([`init_main`]), forks once: its child is PID 1 of the new PID
//! namespace, prepares the instance's view of the machine and execs the
//! function:
//! - every mount of the host is remounted read-only (in the instance's own
//!   mount namespace: the host's mounts are untouched);
//! - a fresh `/proc` shows the namespace's processes only;
//! - a size-bounded tmpfs is mounted over the worker's work root, hiding
//!   every other instance's directory, and the instance's working directory
//!   is made in it: its one writable place, gone when the instance ends;
//! - `/proc/sys` is read-only;
//! - the hostname is the instance id; `no_new_privs` is set, so nothing it
//!   execs gains privileges; `RLIMIT_NOFILE` is `--max-open-files`;
//! - every capability is dropped from the bounding set, so the function
//!   (uid 0 or not) holds none after its exec: it cannot remount its view;
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

use std::ffi::{CString, OsString};
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
pub struct Init<'a> {
    pub work_root: &'a Path,
    pub workdir: &'a Path,
    pub tmpfs_mb: u32,
    pub max_open_files: u32,
    pub hostname: &'a str,
    /// Host directories the instance may write (bind-mounted read-write).
    pub writable: &'a [PathBuf],
}

/// The keeper's arguments after [`INIT_ARG`].
pub fn init_args(init: &Init<'_>, command: &[String]) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        INIT_ARG.into(),
        init.work_root.into(),
        init.workdir.into(),
        init.tmpfs_mb.to_string().into(),
        init.max_open_files.to_string().into(),
        init.hostname.into(),
    ];
    a.extend(init.writable.iter().map(|p| p.as_os_str().to_owned()));
    a.push("--".into());
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
    let sep = args.iter().position(|a| a == "--");
    let (Some(sep), true) = (sep, args.len() >= 7 && sep.is_some_and(|s| s >= 5)) else {
        eprintln!("fngate instance init: bad arguments");
        std::process::exit(126)
    };
    let work_root = PathBuf::from(&args[0]);
    let workdir = PathBuf::from(&args[1]);
    let number = |a: &OsString| a.to_str().and_then(|s| s.parse::<u32>().ok());
    let tmpfs_mb = number(&args[2]).unwrap_or(64);
    let max_open_files = number(&args[3]).unwrap_or(1024);
    let hostname = args[4].clone();
    let writable = &args[5..sep];
    let command = &args[sep + 1..];
    if command.is_empty() {
        eprintln!("fngate instance init: no command");
        std::process::exit(126)
    }
    // SAFETY: fork in a process that has started no thread yet.
    match unsafe { libc::fork() } {
        -1 => die("fork"),
        0 => instance(
            &work_root,
            &workdir,
            tmpfs_mb,
            max_open_files,
            &hostname,
            writable,
            command,
        ),
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

/// The mount points of this mount namespace, in mount order.
fn mount_points() -> Vec<(Vec<u8>, libc::c_ulong)> {
    let text = std::fs::read("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        if fields.len() < 6 {
            continue;
        }
        let mut flags = 0;
        for o in fields[5].split(|&b| b == b',') {
            flags |= match o {
                b"nosuid" => libc::MS_NOSUID,
                b"nodev" => libc::MS_NODEV,
                b"noexec" => libc::MS_NOEXEC,
                b"noatime" => libc::MS_NOATIME,
                b"nodiratime" => libc::MS_NODIRATIME,
                b"relatime" => libc::MS_RELATIME,
                _ => 0,
            };
        }
        out.push((unescape(fields[4]), flags));
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && i + 3 < s.len() && s[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (s[i + 1] - b'0') * 64 + (s[i + 2] - b'0') * 8 + (s[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
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

/// PID 1 of the instance's namespace: its view, then the function.
fn instance(
    work_root: &Path,
    workdir: &Path,
    tmpfs_mb: u32,
    max_open_files: u32,
    hostname: &OsString,
    writable: &[OsString],
    command: &[OsString],
) -> ! {
    let null = std::ptr::null::<libc::c_char>();
    let no_data = std::ptr::null::<libc::c_void>();
    // SAFETY: plain system calls on this single-threaded child.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::mount(
            null,
            c"/".as_ptr(),
            null,
            libc::MS_REC | libc::MS_PRIVATE,
            no_data,
        ) != 0
        {
            die("making mounts private");
        }
        for (point, flags) in mount_points() {
            let p = cstr(&point);
            let f = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | flags;
            if libc::mount(null, p.as_ptr(), null, f, no_data) != 0 {
                die(&format!(
                    "remounting {} read-only",
                    String::from_utf8_lossy(&point)
                ));
            }
        }
        // The function's writable host directories: a bind of each, made
        // read-write again (the mount flag is per mount, the file system
        // itself is the host's).
        for w in writable {
            let p = cstr(w.as_bytes());
            let rw = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NODEV;
            if libc::mount(
                p.as_ptr(),
                p.as_ptr(),
                null,
                libc::MS_BIND | libc::MS_REC,
                no_data,
            ) != 0
                || libc::mount(null, p.as_ptr(), null, rw, no_data) != 0
            {
                die(&format!("making {} writable", w.to_string_lossy()));
            }
        }
        let proc_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            proc_flags,
            no_data,
        ) != 0
        {
            die("mounting /proc");
        }
        // The kernel's tunables stay read-only (as in container runtimes).
        let sys = c"/proc/sys".as_ptr();
        let ro = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | proc_flags;
        if libc::mount(sys, sys, null, libc::MS_BIND | libc::MS_REC, no_data) != 0
            || libc::mount(null, sys, null, ro, no_data) != 0
        {
            die("making /proc/sys read-only");
        }
        let root = cstr(work_root.as_os_str().as_bytes());
        let opts = cstr(format!("size={tmpfs_mb}m,mode=0755").as_bytes());
        let tmp_flags = libc::MS_NOSUID | libc::MS_NODEV;
        if libc::mount(
            c"tmpfs".as_ptr(),
            root.as_ptr(),
            c"tmpfs".as_ptr(),
            tmp_flags,
            opts.as_ptr().cast(),
        ) != 0
        {
            die("mounting the instance's tmpfs");
        }
    }
    if let Err(e) =
        std::fs::create_dir_all(workdir).and_then(|_| std::env::set_current_dir(workdir))
    {
        eprintln!("fngate instance init: working directory: {e}");
        std::process::exit(126)
    }
    // SAFETY: plain system calls.
    unsafe {
        let h = hostname.as_bytes();
        if libc::sethostname(h.as_ptr().cast(), h.len()) != 0 {
            die("sethostname");
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            die("no_new_privs");
        }
        let files = libc::rlimit {
            rlim_cur: max_open_files.into(),
            rlim_max: max_open_files.into(),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &files) != 0 {
            die("RLIMIT_NOFILE");
        }
        // No capability survives the exec: root in the namespace cannot
        // remount, change the kernel's settings or reach past its view.
        for cap in 0..=libc::c_ulong::from(CAP_LAST) {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
                && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
            {
                die("dropping capabilities");
            }
        }
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

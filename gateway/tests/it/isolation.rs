//! Isolated instances (`sandbox-runtime --isolation namespaces`): each in its
//! own PID, mount, UTS and IPC namespaces, with a read-only view of the host
//! and a private tmpfs as its only writable place. As root, on this machine.

use crate::harness::*;
use std::path::Path;
use std::time::Duration;

/// A Python function that reports what it can see and do.
const PROBE: &str = r#"
import ctypes, http.server, json, os, socket
libc = ctypes.CDLL(None, use_errno=True)
def errno_of(rc):
    return ctypes.get_errno() if rc != 0 else 0
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        r = {"pids": sorted(p for p in os.listdir("/proc") if p.isdigit()),
             "hostname": socket.gethostname(), "cwd": os.getcwd(),
             "siblings": sorted(os.listdir(os.path.dirname(os.getcwd())))}
        for what, path in [("etc", "/etc/fngate-probe"), ("tmp", "/tmp/fngate-probe-escape")]:
            try:
                open(path, "w").write("x")
                r[what] = "written"
            except OSError as e:
                r[what] = e.errno
        shared = os.environ.get("PROBE_SHARED")
        if shared:
            try:
                open(os.path.join(shared, os.environ["FC_INSTANCE_ID"]), "w").write("x")
                r["shared"] = "written"
            except OSError as e:
                r["shared"] = e.errno
        open("here.txt", "w").write("ok")
        r["cwd_write"] = open("here.txt").read()
        # MS_REMOUNT | MS_BIND: making its view writable again.
        r["remount"] = errno_of(libc.mount(None, b"/", None, ctypes.c_ulong(32 | 4096), None))
        r["unshare"] = errno_of(libc.unshare(0x00020000))
        # PTRACE_TRACEME needs no privilege: only the seccomp filter refuses it.
        r["ptrace"] = errno_of(libc.ptrace(0, 0, None, None))
        try:
            open("/proc/sys/vm/drop_caches", "w").write("1")
            r["sysctl"] = "written"
        except OSError as e:
            r["sysctl"] = e.errno
        r["cap_eff"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
        cpu = [l.strip().split(":", 2) for l in open("/proc/self/cgroup")]
        cpu = [c[2] for c in cpu if "cpu" in c[1].split(",")]
        r["cpu_shares"] = int(open(f"/sys/fs/cgroup/cpu{cpu[0]}/cpu.shares").read()) if cpu else None
        b = json.dumps(r).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
http.server.HTTPServer((os.environ["FC_SERVER_HOST"], int(os.environ["FC_SERVER_PORT"])), H).serve_forever()
"#;

/// Processes whose command line names `needle`.
fn processes_naming(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains(needle))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_instance_sees_only_itself_and_writes_only_its_own_tmpfs() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("probe.py");
    std::fs::write(&script, PROBE).unwrap();
    let work_root = dir.path().join("work");
    let worker = start_worker_with(
        1024,
        &[
            "--isolation",
            "namespaces",
            "--work-root",
            work_root.to_str().unwrap(),
        ],
    );
    // One host directory the functions may write (`writable_paths`).
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let function = |name: &str| {
        format!(
            "[[functions]]\nname = \"{name}\"\ncommand = [\"python3\", \"{}\"]\nwritable_paths = [\"{1}\"]\nenv = {{ PROBE_SHARED = \"{1}\" }}\n",
            script.display(),
            shared.display()
        )
    };
    let mut gw = Gateway::start(
        "",
        &(format!("[[workers]]\nurl = \"{}\"\n", worker.url) + &function("a") + &function("b")),
    );
    let mut c = gw.h1().await;
    let mut seen = Vec::new();
    for f in ["a", "b"] {
        let r = c.invoke(f, "x").await;
        assert_eq!(r.status, 200, "{}\n{}", r.text(), worker.proc.log());
        let id = r.header("x-fc-instance-id").unwrap().to_string();
        let v = r.json();
        // Its own PID namespace: the function is PID 1 and alone.
        assert_eq!(v["pids"], serde_json::json!(["1"]), "{v}");
        assert_eq!(v["hostname"], id.as_str());
        // Other instances' directories are hidden; the host is read-only
        // (EROFS), /tmp included; its working directory is writable.
        assert_eq!(v["siblings"], serde_json::json!([id.as_str()]), "{v}");
        assert_eq!(v["etc"], 30, "{v}");
        assert_eq!(v["tmp"], 30, "{v}");
        assert_eq!(v["cwd_write"], "ok");
        // Its writable host directory is, and what it wrote there stays.
        assert_eq!(v["shared"], "written", "{v}");
        assert!(shared.join(&id).exists());
        // No capability, and the calls that could undo the view are refused
        // (EPERM); the kernel's tunables are read-only (EROFS).
        assert_eq!(v["cap_eff"], "0000000000000000", "{v}");
        assert_eq!(v["remount"], libc::EPERM, "{v}");
        assert_eq!(v["unshare"], libc::EPERM, "{v}");
        assert_eq!(v["ptrace"], libc::EPERM, "{v}");
        assert_eq!(v["sysctl"], libc::EROFS, "{v}");
        // CPU shared by memory: 128 MiB, 128 shares (1024 per GiB).
        assert_eq!(v["cpu_shares"], 128, "{v}");
        // What it wrote lives in its tmpfs, not on the host.
        let host_dir = Path::new(v["cwd"].as_str().unwrap());
        assert!(host_dir.starts_with(&work_root), "{v}");
        assert!(!host_dir.join("here.txt").exists());
        seen.push(id);
    }
    assert!(!Path::new("/tmp/fngate-probe-escape").exists());
    assert_eq!(
        processes_naming(script.to_str().unwrap()),
        2 * 2,
        "a keeper and a function each"
    );

    // Released with the gateway: every process of both namespaces ends.
    gw.proc.signal(libc::SIGTERM);
    assert!(gw.proc.wait_exit(Duration::from_secs(30)).is_some());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while processes_naming(script.to_str().unwrap()) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "instance processes outlived their release"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for id in seen {
        assert!(
            !work_root.join(id).exists(),
            "the instance's directory is removed"
        );
    }
}

/// Without the privilege to create namespaces (CAP_SYS_ADMIN dropped), a
/// worker asked for them refuses to start, and says why.
#[test]
fn a_worker_that_cannot_create_namespaces_refuses_to_start() {
    let out = std::process::Command::new("setpriv")
        .args(["--bounding-set=-sys_admin", "--inh-caps=-sys_admin"])
        .arg(workspace_bin("sandbox-runtime"))
        .args(["--listen", "127.0.0.1:0", "--isolation", "namespaces"])
        .output()
        .expect("setpriv (util-linux)");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot create PID, mount, UTS and IPC namespaces")
            && err.contains("--isolation process"),
        "{err}"
    );
}

/// What a flood function reports: how many processes it could fork and how
/// many files it could open before the instance's bounds said no.
const FLOOD: &str = r#"
import http.server, json, os, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        r = {"forks": 0, "files": 0}
        try:
            for _ in range(500):
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
                r["forks"] += 1
        except OSError as e:
            r["fork_error"] = e.errno
        held = []
        try:
            for _ in range(100000):
                held.append(open("/dev/null"))
        except OSError as e:
            r["files"], r["open_error"] = len(held), e.errno
        for f in held:
            f.close()
        b = json.dumps(r).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
http.server.HTTPServer((os.environ["FC_SERVER_HOST"], int(os.environ["FC_SERVER_PORT"])), H).serve_forever()
"#;

/// A fork flood and a file-descriptor flood in one instance hit that
/// instance's bounds (`--max-pids`, `--max-open-files`); the other functions
/// keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_and_file_flood_stays_inside_its_instance() {
    let dir = tempfile::tempdir().unwrap();
    let (flood, probe) = (dir.path().join("flood.py"), dir.path().join("probe.py"));
    std::fs::write(&flood, FLOOD).unwrap();
    std::fs::write(&probe, PROBE).unwrap();
    let worker = start_worker_with(
        1024,
        &[
            "--isolation",
            "namespaces",
            "--max-pids",
            "32",
            "--max-open-files",
            "64",
        ],
    );
    let function = |name: &str, script: &Path| {
        format!(
            "[[functions]]\nname = \"{name}\"\ncommand = [\"python3\", \"{}\"]\n",
            script.display()
        )
    };
    let gw = Gateway::start(
        "",
        &(format!("[[workers]]\nurl = \"{}\"\n", worker.url)
            + &function("flood", &flood)
            + &function("other", &probe)),
    );
    let mut c = gw.h1().await;
    let r = c.invoke("flood", "go").await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), worker.proc.log());
    let v = r.json();
    // The keeper and the server count too: fewer than 32 forks.
    assert!(v["forks"].as_u64().unwrap() < 32, "{v}");
    assert_eq!(v["fork_error"], libc::EAGAIN, "{v}");
    assert!(v["files"].as_u64().unwrap() < 64, "{v}");
    assert_eq!(v["open_error"], libc::EMFILE, "{v}");
    for _ in 0..3 {
        assert_eq!(c.invoke("other", "still here").await.status, 200);
    }
}

/// The gateway's embedded worker isolates its instances the same way
/// (`embedded_worker_isolation = "namespaces"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_worker_isolates_too() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("probe.py");
    std::fs::write(&script, PROBE).unwrap();
    let gw = Gateway::start(
        &format!(
            "embedded_worker_isolation = \"namespaces\"\nembedded_worker_subnet = \"{}\"",
            instance_subnet()
        ),
        &format!(
            "[[functions]]\nname = \"p\"\ncommand = [\"python3\", \"{}\"]\n",
            script.display()
        ),
    );
    let r = gw.h1().await.invoke("p", "x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["pids"], serde_json::json!(["1"]), "{v}");
    assert_eq!(v["etc"], 30, "{v}");
}

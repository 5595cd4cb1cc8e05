//! Isolated instances (`sandbox-runtime --isolation namespaces`): each in its
//! own PID, mount, UTS and IPC namespaces, with a read-only view of the host
//! and a private tmpfs as its only writable place. As root, on this machine.

use crate::harness::*;
use std::path::Path;
use std::time::Duration;

/// A Python function that reports what it can see and do; its payload
/// names the paths to try (`read`, `write`, `connect`: a Unix socket).
const PROBE: &str = r#"
import ctypes, hashlib, http.server, json, os, socket, sqlite3, ssl, subprocess
libc = ctypes.CDLL(None, use_errno=True)
def errno_of(rc):
    return ctypes.get_errno() if rc != 0 else 0
def attempt(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return e.errno
def connect(p):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(p)
    finally:
        s.close()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        try:
            req = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        except ValueError:
            req = {}
        r = {"pids": sorted(p for p in os.listdir("/proc") if p.isdigit()),
             "hostname": socket.gethostname(), "cwd": os.getcwd(), "home": os.environ.get("HOME"),
             "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
             "root": sorted(os.listdir("/")),
             "visible": {p: os.path.exists(p) for p in ["/run", "/var/run", "/root", "/home", "/sys", "/var"]},
             "read": {p: attempt(lambda: open(p, "rb").read(1)) for p in req.get("read", [])},
             "write": {p: attempt(lambda: open(p, "w").write("x")) for p in req.get("write", [])},
             "connect": {p: attempt(lambda: connect(p)) for p in req.get("connect", [])},
             "id": subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip(),
             "stdlib": [ssl.OPENSSL_VERSION[:7], sqlite3.sqlite_version != "", hashlib.sha256(b"").hexdigest()[:4]]}
        open("here.txt", "w").write("ok")
        r["cwd_write"] = open("here.txt").read()
        # MS_REMOUNT | MS_BIND: making its view writable again.
        r["remount"] = errno_of(libc.mount(None, b"/", None, ctypes.c_ulong(32 | 4096), None))
        r["unshare"] = errno_of(libc.unshare(0x00020000))
        # PTRACE_TRACEME needs no privilege: only the seccomp filter refuses it.
        r["ptrace"] = errno_of(libc.ptrace(0, 0, None, None))
        r["sysctl"] = attempt(lambda: open("/proc/sys/vm/drop_caches", "w").write("1"))
        r["cap_eff"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
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

fn private(path: &Path, contents: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The CPU shares of the cgroup a host process is in (cgroup v1).
fn cpu_shares_of(pid: i32) -> Option<u64> {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = cg.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        ctrls
            .split(',')
            .any(|c| c == "cpu")
            .then(|| path.to_string())
    })?;
    std::fs::read_to_string(format!("/sys/fs/cgroup/cpu{path}/cpu.shares"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// An isolated instance runs as an unprivileged user of its function's own
/// in a root of its own: the host's root-only files and sockets (the
/// gateway's TLS key, `secret_file` credentials) are out of its reach,
/// other functions' code and the host's `/run`, `/root` and `/home` are not
/// there, and it writes only its `/tmp` and its `writable_paths`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_instance_runs_unprivileged_in_a_root_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (code_a, code_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir(&code_a).unwrap();
    std::fs::create_dir(&code_b).unwrap();
    std::fs::write(code_a.join("probe.py"), PROBE).unwrap();
    std::fs::write(code_b.join("probe.py"), PROBE).unwrap();
    // Root's, beside a's code (so visible to it) and elsewhere.
    private(&code_a.join("key.pem"), "secret", 0o600);
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let (tls_crt, tls_key) = self_signed_pair(&keys);
    private(&tls_key, &std::fs::read_to_string(&tls_key).unwrap(), 0o600);
    let secret_file = keys.join("access-key-secret");
    private(&secret_file, "s3cr3t", 0o600);
    // A root-only socket (a daemon's, as Docker's is), where a can see it.
    let sock = code_a.join("daemon.sock");
    let _daemon = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o660)).unwrap();
    }
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
    // One host directory the functions may write (`writable_paths`): root's,
    // 0700, as a temporary directory is.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let function = |name: &str, code: &Path| {
        format!(
            "[[functions]]\nname = \"{name}\"\ncommand = [\"python3\", \"{}\"]\nwritable_paths = [\"{}\"]\n",
            code.join("probe.py").display(),
            shared.display()
        )
    };
    let mut gw = Gateway::start(
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            tls_crt.display(),
            tls_key.display()
        ),
        &(format!(
            "[[credentials]]\naccess_key_id = \"AK1\"\nsecret_file = \"{}\"\n\n[[workers]]\nurl = \"{}\"\n",
            secret_file.display(),
            worker.url
        ) + &function("a", &code_a)
            + &function("b", &code_b)),
    );
    let mut c = Client::connect(gw.https, &tls_crt, ClientOpts::default()).await;
    let s = |p: &Path| p.display().to_string();
    let mut seen = Vec::new();
    for (f, own, other) in [("a", &code_a, &code_b), ("b", &code_b, &code_a)] {
        let ask = serde_json::json!({
            "read": [s(&code_a.join("key.pem")), s(&tls_key), s(&secret_file),
                     s(&other.join("probe.py")), s(&own.join("probe.py")), "/etc/shadow"],
            "write": ["/etc/passwd", "/fngate-escape", "/usr/fngate-escape",
                      s(&own.join("new.py")), s(&shared.join(f)), "/tmp/x"],
            "connect": [s(&sock), "/var/run/docker.sock", "/run/systemd/private"],
        });
        let r = c.invoke(f, ask.to_string()).await;
        assert_eq!(r.status, 200, "{}\n{}", r.text(), worker.proc.log());
        let id = r.header("x-fc-instance-id").unwrap().to_string();
        let v = r.json();
        // Its own PID namespace: the function is PID 1 and alone.
        assert_eq!(v["pids"], serde_json::json!(["1"]), "{v}");
        assert_eq!(v["hostname"], id.as_str());
        // Not root, on the host's side too (no user namespace maps it): the
        // worker reports the same uid, and it is an account of nobody there.
        let uid = v["uid"].as_u64().unwrap();
        assert_ne!(uid, 0, "{v}");
        assert_eq!(v["gid"], uid, "{v}");
        let (status, info) = plain_get(
            worker.url.trim_start_matches("http://").parse().unwrap(),
            &format!("/v1/instances/{id}"),
        )
        .await;
        assert_eq!(status, 200);
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["uid"], uid, "{info}");
        let pid = info["pid"].as_i64().unwrap();
        let host_uid = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next().map(str::to_string))
            .and_then(|child| std::fs::read_to_string(format!("/proc/{child}/status")).ok())
            .and_then(|st| {
                st.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
            });
        assert_eq!(
            host_uid,
            Some(uid.to_string()),
            "the function's uid seen from the host"
        );
        assert_eq!(v["id"], "sbx_user", "{v}");
        // Only what a runtime needs is there: no /run, /root, /home, /sys.
        assert_eq!(
            v["root"],
            serde_json::json!([
                "bin", "dev", "etc", "lib", "lib64", "proc", "sbin", "tmp", "usr"
            ]),
            "{v}"
        );
        for (p, there) in v["visible"].as_object().unwrap() {
            assert_eq!(there, false, "{p} is visible: {v}");
        }
        let read = &v["read"];
        // Root's 0600 file where it is visible: refused (EACCES); the TLS key,
        // a secret_file, the other function's code, /etc/shadow: not there.
        if f == "a" {
            assert_eq!(read[s(&code_a.join("key.pem"))], libc::EACCES, "{v}");
        }
        for p in [s(&tls_key), s(&secret_file), s(&other.join("probe.py"))] {
            assert_eq!(read[&p], libc::ENOENT, "{p}: {v}");
        }
        assert_eq!(read["/etc/shadow"], libc::ENOENT, "{v}");
        assert_eq!(read[s(&own.join("probe.py"))], "ok", "{v}");
        // The root-only socket: refused where visible; the host's /run is not.
        let conn = &v["connect"];
        if f == "a" {
            assert_eq!(conn[s(&sock)], libc::EACCES, "{v}");
        }
        assert_eq!(conn["/var/run/docker.sock"], libc::ENOENT, "{v}");
        assert_eq!(conn["/run/systemd/private"], libc::ENOENT, "{v}");
        // It writes its /tmp (its working directory and home) and its
        // writable path, nothing else.
        let w = &v["write"];
        for p in ["/etc/passwd", "/fngate-escape"] {
            assert_eq!(w[p], libc::EACCES, "{p}: {v}");
        }
        for p in ["/usr/fngate-escape".to_string(), s(&own.join("new.py"))] {
            let e = w[&p].as_i64().unwrap_or(0);
            assert!(
                e == libc::EROFS as i64 || e == libc::EACCES as i64,
                "{p}: {v}"
            );
        }
        assert_eq!(w["/tmp/x"], "ok", "{v}");
        assert_eq!(w[s(&shared.join(f))], "ok", "{v}");
        assert_eq!(
            (v["cwd"].as_str(), v["home"].as_str()),
            (Some("/tmp"), Some("/tmp"))
        );
        assert_eq!(v["cwd_write"], "ok");
        // What it wrote in its writable path is on the host, as its user's.
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(shared.join(f)).unwrap().uid() as u64, uid);
        // Python and its standard library (ssl, sqlite3) run.
        assert_eq!(v["stdlib"][1], true, "{v}");
        // No capability, and the calls that could undo the view are refused
        // (EPERM); the kernel's tunables are read-only.
        assert_eq!(v["cap_eff"], "0000000000000000", "{v}");
        assert_eq!(v["remount"], libc::EPERM, "{v}");
        assert_eq!(v["unshare"], libc::EPERM, "{v}");
        assert_eq!(v["ptrace"], libc::EPERM, "{v}");
        let sysctl = v["sysctl"].as_i64().unwrap_or(0);
        assert!(
            sysctl == libc::EROFS as i64 || sysctl == libc::EACCES as i64,
            "{v}"
        );
        // CPU shared by memory: 128 MiB, 128 shares (1024 per GiB).
        if let Some(shares) = cpu_shares_of(pid as i32) {
            assert_eq!(shares, 128);
        }
        // What it wrote in /tmp lives in its own root, not on the host.
        assert!(!Path::new("/tmp/x").exists() || !work_root.join(&id).join("tmp/x").exists());
        assert!(!Path::new("/fngate-escape").exists());
        seen.push(id);
    }
    // This test's own (other tests run scripts named probe.py too).
    assert_eq!(
        processes_naming(code_a.to_str().unwrap()) + processes_naming(code_b.to_str().unwrap()),
        2 * 2,
        "a keeper and a function each"
    );

    // Released with the gateway: every process of both namespaces ends.
    gw.proc.signal(libc::SIGTERM);
    assert!(gw.proc.wait_exit(Duration::from_secs(30)).is_some());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while processes_naming(code_a.to_str().unwrap()) + processes_naming(code_b.to_str().unwrap())
        > 0
    {
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

/// A self-signed certificate for localhost (the gateway's own, here):
/// (certificate, key) paths.
fn self_signed_pair(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// A function that fills its `/tmp`, then tells how far it got.
const FILLER: &str = r#"
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        n = int(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or 0)
        written, err = 0, 0
        try:
            with open("/tmp/fill", "wb") as f:
                for _ in range(n):
                    f.write(b"\0" * (1 << 20))
                    f.flush()
                    written += 1
        except OSError as e:
            err = e.errno
        os.remove("/tmp/fill")
        b = f"{written} {err}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
http.server.HTTPServer((os.environ["FC_SERVER_HOST"], int(os.environ["FC_SERVER_PORT"])), H).serve_forever()
"#;

/// An instance's writable area is bounded by its function's `disk_mb`:
/// writing past it fails with ENOSPC, and the instance goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_past_disk_mb_fails_with_enospc_and_the_instance_serves_on() {
    if !isolated_suite() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        "",
        &python_fn(dir.path(), "fill", FILLER, "memory_mb = 256\ndisk_mb = 16"),
    );
    let mut c = gw.h1().await;
    let r = c.invoke("fill", "64").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (written, err) = r
        .text()
        .split_once(' ')
        .map(|(a, b)| (a.parse::<u32>().unwrap(), b.parse::<i32>().unwrap()))
        .unwrap();
    assert_eq!(err, libc::ENOSPC, "{written} MiB written");
    assert!((8..16).contains(&written), "{written} MiB written of 16");
    let id = r.header("x-fc-instance-id").unwrap().to_string();
    // Within the bound, on the same instance.
    let r = c.invoke("fill", "4").await;
    assert_eq!((r.status, r.text()), (200, "4 0".to_string()));
    assert_eq!(r.header("x-fc-instance-id"), Some(id.as_str()));
}

/// A function that listens on its own loopback, which nothing outside the
/// instance can reach.
const LOOPBACK: &str = r#"
import http.server, os
http.server.HTTPServer(("127.0.0.1", int(os.environ["FC_SERVER_PORT"])), http.server.BaseHTTPRequestHandler).serve_forever()
"#;

/// A function bound to 127.0.0.1 is refused within two seconds, with a
/// message that says what to change (not after the 30 s start timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_listening_on_loopback_is_refused_at_once_saying_why() {
    if !isolated_suite() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start("", &python_fn(dir.path(), "lo", LOOPBACK, ""));
    let mut c = gw.h1().await;
    let t = std::time::Instant::now();
    let r = c.invoke("lo", "x").await;
    let took = t.elapsed();
    // The start fails: FC's CAExited, naming the cause.
    assert_eq!(r.status, 412, "{}", r.text());
    assert!(
        r.text().contains("listens on 127.0.0.1:9000") && r.text().contains("0.0.0.0"),
        "{}",
        r.text()
    );
    // Python's start itself takes some of it on a loaded machine.
    assert!(took < Duration::from_secs(2) + PYTHON_START, "{took:?}");
}

/// What a cold Python start may take on a loaded two-core machine.
const PYTHON_START: Duration = Duration::from_secs(3);

/// Two workers started without `--instance-subnet` on one host both
/// serve, each on a range of its own, and say which in their log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_without_a_range_pick_their_own() {
    if !isolated_suite() {
        return;
    }
    let args = ["--isolation", "namespaces", "--instance-subnet", "auto"];
    let (w1, w2) = (start_worker_with(512, &args), start_worker_with(512, &args));
    let range = |w: &WorkerProc| {
        let log = w.proc.log();
        let r = log.split("instance_subnet=Some(\"").nth(1).unwrap();
        r[..r.find('"').unwrap()].parse::<ipnet::Ipv4Net>().unwrap()
    };
    let (r1, r2) = (range(&w1), range(&w2));
    assert!(
        !r1.contains(&r2.network()) && !r2.contains(&r1.network()),
        "{r1} {r2}"
    );
    let gw = Gateway::start(
        "",
        &format!(
            "[[workers]]\nurl = \"{}\"\n[[workers]]\nurl = \"{}\"\n{}",
            w1.url,
            w2.url,
            echo_fn("e", "instance_concurrency = 1")
        ),
    );
    // Two calls held at once need two instances; placement spreads them
    // only when one worker is full, so fill both: 512 MiB each, 128 each.
    let c = gw.h2().await;
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let mut c = c.clone();
            tokio::spawn(async move { c.invoke("e", "fngate:sleep:300").await })
        })
        .collect();
    for call in calls {
        let r = call.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let workers: std::collections::BTreeSet<String> = gw
        .instances()
        .await
        .iter()
        .map(|i| i["worker"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        workers,
        [w1.url.clone(), w2.url.clone()].into(),
        "both serve"
    );
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
    let r = gw.h1().await.invoke("p", "{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["pids"], serde_json::json!(["1"]), "{v}");
    assert_ne!(v["uid"], 0, "{v}");
    assert_eq!(v["visible"]["/root"], false, "{v}");
}

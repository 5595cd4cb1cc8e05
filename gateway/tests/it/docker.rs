//! The docker setup: the image builds here (FROM scratch, from the static
//! binaries of scripts/build-static.sh) and serves invocations over TLS from a
//! gateway container and a worker container; and docker-compose.yml names only
//! files, ports and flags that exist and agree with the configs and the
//! binaries' `--help`. (`scripts/test.sh` installs and starts the engine and
//! sets DOCKER_HOST.)

use crate::harness::*;
use std::process::Command;
use std::time::Duration;
use yaml_rust2::{Yaml, YamlLoader};

fn yaml(path: &str) -> Yaml {
    let text = std::fs::read_to_string(repo().join(path)).unwrap();
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

fn strs(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .unwrap_or_else(|| panic!("not a list: {y:?}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn help(cmd: &mut Command) -> String {
    let out = cmd.arg("--help").output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `--flag` or `--flag=value` → `--flag`.
fn flags(args: &[String]) -> Vec<String> {
    args.iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap().to_string())
        .collect()
}

fn flag_value(args: &[String], flag: &str) -> String {
    if let Some(v) = args
        .iter()
        .find_map(|a| a.strip_prefix(&format!("{flag}=")))
    {
        return v.to_string();
    }
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} not in {args:?}"));
    args[i + 1].clone()
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// A TOML file of the repository.
fn toml_file(path: &str) -> toml::Value {
    toml::from_str(&std::fs::read_to_string(repo().join(path)).unwrap()).unwrap()
}

#[test]
fn fleet_compose_file_agrees_with_the_repository() {
    let c = yaml("docker-compose.fleet.yml");
    let s = &c["services"];
    let worker_help = help(&mut Command::new(workspace_bin("sandbox-runtime")));
    let gateway_help = help(&mut Command::new(env!("CARGO_BIN_EXE_gateway")));
    let nats_args = strs(&s["nats"]["command"]);
    let nats = format!(
        "nats://{}:{}",
        flag_value(&nats_args, "-a"),
        flag_value(&nats_args, "-p")
    );
    assert!(nats_args.contains(&"-js".to_string()), "JetStream on");
    let redis_args = strs(&s["redis"]["command"]);
    let redis = format!(
        "redis://{}:{}",
        flag_value(&redis_args, "--bind"),
        flag_value(&redis_args, "--port")
    );
    let mut workers = Vec::new();
    for w in ["worker-1", "worker-2"] {
        assert_eq!(s[w]["network_mode"].as_str(), Some("host"));
        let args = [strs(&s[w]["entrypoint"]), strs(&s[w]["command"])].concat();
        assert_eq!(args[0], "/fngate/sandbox-runtime");
        for f in flags(&args) {
            assert!(worker_help.contains(&f), "sandbox-runtime has no {f}");
        }
        assert_eq!(flag_value(&args, "--fleet-nats-url"), nats, "{w}");
        workers.push(flag_value(&args, "--listen"));
    }
    let mut admins = Vec::new();
    let mut listens = Vec::new();
    for g in ["gateway-1", "gateway-2", "gateway-3"] {
        let args = strs(&s[g]["command"]);
        for f in flags(&args) {
            assert!(gateway_help.contains(&f), "gateway has no {f}");
        }
        // The config it names is the one it mounts, valid, in the fleet.
        let in_container = flag_value(&args, "--config");
        let file = in_container.rsplit('/').next().unwrap();
        let mount = strs(&s[g]["volumes"])
            .into_iter()
            .find(|v| v.starts_with("./config/docker/fleet:"))
            .expect("the fleet's configs mounted");
        assert!(in_container.starts_with(mount.split(':').nth(1).unwrap()));
        let path = format!("config/docker/fleet/{file}");
        let config_path = repo().join(&path);
        gateway_cli([
            std::ffi::OsStr::new("--check"),
            "--config".as_ref(),
            config_path.as_os_str(),
        ]);
        let gw = toml_file(&path);
        assert_eq!(gw["fleet"]["id"].as_str(), Some(g));
        assert_eq!(gw["fleet"]["nats_urls"][0].as_str(), Some(nats.as_str()));
        assert_eq!(gw["fleet"]["redis_url"].as_str(), Some(redis.as_str()));
        assert!(
            gw.get("workers").is_none(),
            "{g}: workers come from the fleet"
        );
        admins.push(gw["gateway"]["admin_listen"].as_str().unwrap().to_string());
        listens.push(gw["gateway"]["listen"].as_str().unwrap().to_string());
    }
    let mut all: Vec<&String> = admins.iter().chain(&listens).chain(&workers).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 8, "every listener on its own port");
    // Prometheus scrapes every gateway and every worker.
    let prom_args = strs(&s["prometheus"]["command"]);
    let mount = s["prometheus"]["volumes"][0].as_str().unwrap();
    assert_eq!(
        mount.split(':').next(),
        Some("./config/prometheus-fleet.yml")
    );
    assert_eq!(
        flag_value(&prom_args, "--config.file"),
        mount.split(':').nth(1).unwrap()
    );
    let prom = yaml("config/prometheus-fleet.yml");
    let targets = |job: &str| {
        let j = prom["scrape_configs"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|j| j["job_name"].as_str() == Some(job))
            .unwrap();
        let mut t = strs(&j["static_configs"][0]["targets"]);
        t.sort();
        t
    };
    admins.sort();
    workers.sort();
    assert_eq!(targets("fngate-gateway"), admins);
    assert_eq!(targets("fngate-sandbox"), workers);
    for svc in ["prometheus", "grafana"] {
        for v in s[svc]["volumes"].as_vec().unwrap() {
            let src = v.as_str().unwrap().split(':').next().unwrap();
            assert!(
                repo().join(src.trim_start_matches("./")).exists(),
                "{svc} mounts missing {src}"
            );
        }
    }
}

#[test]
fn compose_file_agrees_with_the_repository() {
    let c = yaml("docker-compose.yml");
    let s = &c["services"];
    // Files and folders it mounts or builds from exist.
    assert!(repo().join("Dockerfile").exists());
    assert_eq!(s["worker"]["build"].as_str(), Some("."));
    for svc in ["gateway", "worker", "prometheus", "grafana"] {
        assert_eq!(s[svc]["network_mode"].as_str(), Some("host"), "{svc}");
        if let Some(vols) = s[svc]["volumes"].as_vec() {
            for v in vols {
                let src = v.as_str().unwrap().split(':').next().unwrap();
                if let Some(rel) = src.strip_prefix("./") {
                    assert!(repo().join(rel).exists(), "{svc} mounts missing {src}");
                }
            }
        }
    }
    // The Dockerfile's inputs exist (or are what build-static.sh builds).
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let build_static = std::fs::read_to_string(repo().join("scripts/build-static.sh")).unwrap();
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY")) {
        let src = line.split_whitespace().rev().nth(1).unwrap();
        if src.starts_with("target/") {
            assert!(
                build_static.contains("x86_64-unknown-linux-gnu")
                    && src.contains("x86_64-unknown-linux-gnu/release/")
            );
            assert!(
                ignore.contains(&format!("!{src}")),
                ".dockerignore must let {src} through"
            );
        } else {
            assert!(repo().join(src).exists(), "Dockerfile copies missing {src}");
        }
    }
    let config_in_image = "config/docker/gateway.toml";
    assert!(dockerfile.contains(&format!(
        "COPY {config_in_image} /fngate/config/gateway.toml"
    )));

    // Flags exist in the binaries' --help.
    let worker_args = [
        strs(&s["worker"]["entrypoint"]),
        strs(&s["worker"]["command"]),
    ]
    .concat();
    assert_eq!(worker_args[0], "/fngate/sandbox-runtime");
    let worker_help = help(&mut Command::new(workspace_bin("sandbox-runtime")));
    for f in flags(&worker_args) {
        assert!(worker_help.contains(&f), "sandbox-runtime has no {f}");
    }
    let gateway_args = strs(&s["gateway"]["command"]);
    let gateway_help = help(&mut Command::new(env!("CARGO_BIN_EXE_gateway")));
    for f in flags(&gateway_args) {
        assert!(gateway_help.contains(&f), "gateway has no {f}");
    }
    assert_eq!(
        flag_value(&gateway_args, "--config"),
        "/fngate/config/gateway.toml"
    );
    let prom_args = strs(&s["prometheus"]["command"]);
    let prom_help = {
        let out = Command::new("prometheus")
            .arg("--help")
            .output()
            .expect("prometheus installed by scripts/test.sh");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    for f in flags(&prom_args) {
        assert!(prom_help.contains(&f), "prometheus has no {f}");
    }

    // The gateway config in the image is valid, and the ports agree.
    let config_path = repo().join(config_in_image);
    gateway_cli([
        std::ffi::OsStr::new("--check"),
        "--config".as_ref(),
        config_path.as_os_str(),
    ]);
    let gw: toml::Value =
        toml::from_str(&std::fs::read_to_string(repo().join(config_in_image)).unwrap()).unwrap();
    let worker_listen = flag_value(&worker_args, "--listen");
    assert_eq!(
        host_port(gw["workers"][0]["url"].as_str().unwrap()),
        worker_listen,
        "gateway → worker"
    );
    let prom = yaml("config/prometheus.yml");
    let targets: Vec<(String, String)> = prom["scrape_configs"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["job_name"].as_str().unwrap().to_string(),
                j["static_configs"][0]["targets"][0]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    let target = |job: &str| targets.iter().find(|(j, _)| j == job).unwrap().1.clone();
    assert_eq!(
        target("fngate-gateway"),
        gw["gateway"]["admin_listen"].as_str().unwrap()
    );
    assert_eq!(target("fngate-sandbox"), worker_listen);
    let mount = s["prometheus"]["volumes"][0].as_str().unwrap();
    assert!(mount.starts_with("./config/prometheus.yml:"));
    assert_eq!(
        flag_value(&prom_args, "--config.file"),
        mount.split(':').nth(1).unwrap()
    );
    // Grafana reads the Prometheus it runs beside, and the dashboards it mounts.
    let ds = yaml("dashboards/provisioning/datasources.yml");
    assert_eq!(
        host_port(ds["datasources"][0]["url"].as_str().unwrap()),
        flag_value(&prom_args, "--web.listen-address")
    );
    let dash = yaml("dashboards/provisioning/dashboards.yml");
    let path = dash["providers"][0]["options"]["path"].as_str().unwrap();
    let vols = strs(&s["grafana"]["volumes"]);
    assert!(
        vols.iter()
            .any(|v| v.starts_with("./dashboards:") && v.split(':').nth(1) == Some(path))
    );
    for v in &vols {
        let (src, dst) = (v.split(':').next().unwrap(), v.split(':').nth(1).unwrap());
        if src.ends_with("datasources.yml") {
            assert!(dst.starts_with("/etc/grafana/provisioning/datasources/"));
        }
        if src.ends_with("dashboards.yml") {
            assert!(dst.starts_with("/etc/grafana/provisioning/dashboards/"));
        }
    }
    assert!(repo().join("dashboards/fngate-overview.json").exists());
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker").args(args).output().expect(
        "docker is not installed: run the tests with scripts/test.sh, which installs and starts it",
    )
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes the named containers when dropped.
struct Containers(Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        for c in &self.0 {
            let _ = docker(&["rm", "-f", c]);
        }
    }
}

/// Polls `docker logs` of `name` for a line containing `needle`.
fn docker_log_line(name: &str, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = docker(&["logs", name]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(l) = text.lines().find(|l| l.contains(needle)) {
            return l.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} in the logs of {name}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_builds_and_serves_tls_from_a_gateway_and_a_worker_container() {
    for bin in ["gateway", "sandbox-runtime", "fngate-echo"] {
        let p = repo()
            .join("target/x86_64-unknown-linux-gnu/release")
            .join(bin);
        assert!(
            p.exists(),
            "{} is missing: run scripts/build-static.sh (scripts/test.sh does)",
            p.display()
        );
    }
    let tag = format!("fngate:it-{}", std::process::id());
    docker_ok(&["build", "-q", "-t", &tag, repo().to_str().unwrap()]);
    let worker = format!("fngate-it-worker-{}", std::process::id());
    let gateway = format!("fngate-it-gateway-{}", std::process::id());
    let _cleanup = Containers(vec![worker.clone(), gateway.clone()]);

    // The worker container, on a free loopback port (host networking).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &worker,
        "--network",
        "host",
        "--entrypoint",
        "/fngate/sandbox-runtime",
        &tag,
        "--listen",
        &listen,
        "--memory-mb",
        "1024",
        "--work-root",
        "/data/work",
        // Isolating instances needs a privileged container.
        "--isolation",
        "process",
    ]);
    docker_log_line(&worker, "sandbox-runtime listening");

    // The gateway container, configured from a mounted folder it can write to.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nself_signed_cert_path = \"/data/out/ca.pem\"\n\
             [[workers]]\nurl = \"http://{listen}\"\n[[functions]]\nname = \"echo\"\ncommand = [\"{{bin_dir}}/fngate-echo\"]\n"
        ),
    )
    .unwrap();
    let mount = format!("{}:/data/out", dir.path().display());
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &gateway,
        "--network",
        "host",
        "-v",
        &mount,
        &tag,
        "--config",
        "/data/out/gateway.toml",
    ]);
    let line = docker_log_line(&gateway, "fngate listening");
    let https: std::net::SocketAddr = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("https="))
        .unwrap()
        .parse()
        .unwrap();

    // From the host, over TLS.
    let mut c = Client::connect(https, &dir.path().join("ca.pem"), ClientOpts::default()).await;
    let r = c.invoke("echo", "through docker").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "through docker");
    // The instance ran in the worker container, as a non-root user.
    docker_log_line(&worker, "instance started");
    let user = docker_ok(&["inspect", "-f", "{{.Config.User}}", &tag]);
    assert_eq!(user.trim(), "65534:65534");
    let _ = docker(&["rmi", "-f", &tag]);
}

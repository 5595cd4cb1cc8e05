use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/fngate"))
}

const FN: &str = "[[functions]]\nname = \"echo\"\ncommand = [\"/bin/echo-fn\"]\n";

#[test]
fn defaults_apply() {
    let c = parse(FN).unwrap();
    assert_eq!(c.gateway.listen.to_string(), "127.0.0.1:8443");
    assert_eq!(c.gateway.admin_listen.to_string(), "127.0.0.1:9464");
    assert_eq!(c.gateway.limits.max_body_bytes, 32 * 1024 * 1024);
    assert!(c.workers.is_empty());
    let f = &c.functions[0];
    assert_eq!(
        (
            f.memory_mb,
            f.timeout.as_secs(),
            f.instance_concurrency,
            f.idle_timeout.as_secs(),
            f.min_instances
        ),
        (128, 60, 1, 300, 0)
    );
    assert!(matches!(
        c.gateway.tls,
        TlsSource::SelfSigned {
            validity_days: 30,
            ..
        }
    ));
}

#[test]
fn an_async_payload_is_never_larger_than_a_sync_one() {
    let c = parse(&format!("[gateway]\nmax_body_bytes = 1000\n{FN}")).unwrap();
    assert_eq!(c.gateway.asynchronous.max_body_bytes, 1000);
    assert_eq!(
        parse(FN).unwrap().gateway.asynchronous.max_body_bytes,
        128 * 1024
    );
}

#[test]
fn placeholders_and_relative_paths_resolve() {
    let c = parse(
        "[gateway]\ntls_cert = \"c.pem\"\ntls_key = \"/abs/k.pem\"\n[[functions]]\nname = \"p\"\ncommand = [\"python3\", \"{config_dir}/f.py\"]\n",
    )
    .unwrap();
    assert_eq!(c.functions[0].command[1], "/etc/fngate/f.py");
    match &c.gateway.tls {
        TlsSource::Files { cert, key } => {
            assert_eq!(cert, Path::new("/etc/fngate/c.pem"));
            assert_eq!(key, Path::new("/abs/k.pem"));
        }
        other => panic!("{other:?}"),
    }
}

/// Each invalid configuration fails, and the message names the key.
#[test]
fn invalid_configs_name_the_key() {
    let cases: &[(&str, &str)] = &[
        ("[gateway]\nlisten = \"nope\"\n", "gateway.listen"),
        (
            "[gateway]\nadmin_listen = \"1.2.3.4\"\n",
            "gateway.admin_listen",
        ),
        ("[gateway]\nbogus = 1\n", "bogus"),
        ("[gateway]\ntls_cert = \"c.pem\"\n", "gateway.tls_key"),
        ("[gateway]\nmax_body_bytes = 0\n", "gateway.max_body_bytes"),
        ("[gateway]\nthreads = 0\n", "gateway.threads"),
        (
            "[gateway]\nmax_header_bytes = 100\n",
            "gateway.max_header_bytes",
        ),
        (
            "[gateway]\nself_signed_validity_days = 9999\n",
            "gateway.self_signed_validity_days",
        ),
        ("[[workers]]\nurl = \"ftp://x\"\n", "workers[0].url"),
        (
            "[[functions]]\nname = \"9bad\"\ncommand = [\"x\"]\n",
            "functions[0].name",
        ),
        (
            "[[functions]]\nname = \"a\"\ncommand = [\"x\"]\n[[functions]]\nname = \"a\"\ncommand = [\"x\"]\n",
            "functions[1].name",
        ),
        (
            "[[functions]]\nname = \"a\"\ncommand = []\n",
            "functions[0].command",
        ),
        (
            "[[functions]]\nname = \"a\"\ncommand = [\"x\"]\nmemory_mb = 32\n",
            "functions[0].memory_mb",
        ),
        (
            "[[functions]]\nname = \"a\"\ncommand = [\"x\"]\ntimeout_s = 0\n",
            "functions[0].timeout_s",
        ),
        (
            "[[functions]]\nname = \"a\"\ncommand = [\"x\"]\ninstance_concurrency = 201\n",
            "functions[0].instance_concurrency",
        ),
        (
            "[[functions]]\nname = \"a\"\ncommand = [\"x\"]\nidle_timeout_s = 0\n",
            "functions[0].idle_timeout_s",
        ),
        (
            "[[functions]]\nname = \"a\"\ncommand = [\"x\"]\nmin_instances = 301\n",
            "functions[0].min_instances",
        ),
        (
            "[[functions]]\nname = \"a\"\ncommand = [\"x\"]\nmemroy_mb = 128\n",
            "memroy_mb",
        ),
        ("[[functions]]\nname = \"a\"\n", "command"),
        (
            "[[functions]]\nname = \"a\"\ncommand = [\"x\"]\nrate_limit = { per_second = 0.0, burst = 5 }\n",
            "functions[0].rate_limit",
        ),
        (
            "[[functions]]\nname = \"a\"\ncommand = [\"x\"]\ncaller_rate_limit = { per_second = 5.0, burst = 0 }\n",
            "functions[0].caller_rate_limit",
        ),
        (
            "[[functions]]\nname = \"a\"\ncommand = [\"x\"]\nrate_limit = { per_second = 5.0 }\n",
            "burst",
        ),
        (
            "[[functions]]\nname = \"a\"\ncommand = [\"x\"]\nmax_concurrency = 0\n",
            "functions[0].max_concurrency",
        ),
        ("[gateway]\nmax_instances = 0\n", "gateway.max_instances"),
        ("[gateway]\ncaller_key = \"cookie\"\n", "cookie"),
        (
            "[gateway]\ncaller_rate_limit = { per_second = -1.0, burst = 1 }\n",
            "gateway.caller_rate_limit",
        ),
    ];
    for (text, key) in cases {
        let err = parse(text).expect_err(text).to_string();
        assert!(
            err.contains(key),
            "error for {text:?} should name {key:?}: {err}"
        );
    }
}

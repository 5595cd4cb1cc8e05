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
fn the_async_store_defaults_to_a_durable_file_beside_the_config() {
    let c = parse(FN).unwrap();
    let a = &c.gateway.asynchronous;
    assert_eq!(a.store, AsyncStoreKind::Embedded);
    assert_eq!(a.store_path, Path::new("/etc/fngate/fngate-async.redb"));
    assert_eq!((a.max_queued, a.max_queued_bytes), (100_000, 1 << 30));
    let f = &c.functions[0].asynchronous;
    assert_eq!((f.max_retries, f.max_concurrency), (3, 10));
    assert!(f.on_success.is_none() && f.on_failure.is_none());
    let c = parse(&format!(
        "[gateway]\nasync_store = \"memory\"\n{FN}on_failure = \"https://hooks.example/x\"\n"
    ))
    .unwrap();
    assert_eq!(c.gateway.asynchronous.store, AsyncStoreKind::Memory);
    assert_eq!(
        c.functions[0]
            .asynchronous
            .on_failure
            .as_ref()
            .map(|u| u.to_string()),
        Some("https://hooks.example/x".to_string())
    );
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
            "[gateway]\nembedded_worker_subnet = \"10.0.0.0\"\n",
            "gateway.embedded_worker_subnet",
        ),
        (
            "[[functions]]\nname = \"f\"\ncommand = [\"x\"]\negress = \"vpc\"\n",
            "functions[0].vpc_id",
        ),
        (
            "[[functions]]\nname = \"f\"\ncommand = [\"x\"]\negress = \"both\"\nvpc_id = \"nowhere\"\n",
            "functions[0].vpc_id",
        ),
        (
            "[[functions]]\nname = \"f\"\ncommand = [\"x\"]\negress = \"everywhere\"\n",
            "unknown variant",
        ),
        (
            "[[functions]]\nname = \"f\"\ncommand = [\"x\"]\nwritable_paths = [\"/ok\", \"rel/dir\"]\n",
            "functions[0].writable_paths[1]",
        ),
        (
            "[[functions]]\nname = \"f\"\ncommand = [\"x\"]\nwritable_paths = [\"/a/../etc\"]\n",
            "functions[0].writable_paths[0]",
        ),
        ("[gateway]\nasync_store = \"sqlite\"\n", "unknown variant"),
        (
            "[gateway]\nmax_async_queued_bytes = 0\n",
            "gateway.max_async_queued_bytes",
        ),
        (
            "[[functions]]\nname = \"a\"\ncommand = [\"x\"]\non_success = \"ftp://h/x\"\n",
            "functions[0].on_success",
        ),
        (
            "[[functions]]\nname = \"a\"\ncommand = [\"x\"]\non_failure = \"/relative\"\n",
            "functions[0].on_failure",
        ),
        (
            "[[functions]]\nname = \"a\"\ncommand = [\"x\"]\nasync_max_concurrency = 0\n",
            "functions[0].async_max_concurrency",
        ),
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

const CREDS: &str = "[[credentials]]\naccess_key_id = \"AK1\"\nsecret = \"sekrit-one\"\n";

#[test]
fn credentials_keys_and_auth_resolve() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s2"), "from-a-file\n").unwrap();
    let text = format!(
        "[gateway]\nauth = \"signature\"\ncaller_key = \"access_key\"\n{CREDS}\
         [[credentials]]\naccess_key_id = \"AK2\"\nsecret_file = \"s2\"\n\
         [[credentials]]\naccess_key_id = \"AK3\"\nsecret_env = \"PATH\"\n\
         [lambda]\naccount_id = \"123456789012\"\n\
         [azure]\nhost_keys = [{{ name = \"master\", value = \"hk\" }}]\n\
         {FN}\
         [[functions]]\nname = \"open\"\ncommand = [\"x\"]\nauth = \"none\"\n\
         [[functions]]\nname = \"keyed\"\ncommand = [\"x\"]\nauth = \"none\"\nauth_level = \"function\"\nfunction_keys = [{{ name = \"k\", value = \"v\" }}]\n"
    );
    let c = Config::parse(&text, dir.path()).unwrap();
    let creds = &c.auth.credentials;
    assert_eq!(creds.len(), 3);
    assert_eq!(
        creds.secret(creds.get("AK2").unwrap()).expose(),
        b"from-a-file"
    );
    assert_eq!(
        creds.secret(creds.get("AK3").unwrap()).expose(),
        std::env::var("PATH").unwrap().as_bytes()
    );
    assert_eq!(c.auth.host_keys.len(), 1);
    assert_eq!(c.lambda.account_id.as_deref(), Some("123456789012"));
    let f = |name: &str| {
        c.functions
            .iter()
            .find(|f| &*f.name == name)
            .unwrap()
            .clone()
    };
    // The gateway's mode by default; a key at the Azure door then too.
    assert_eq!(
        (f("echo").auth, f("echo").auth_level),
        (AuthMode::Signature, AuthLevel::Function)
    );
    assert_eq!(
        (f("open").auth, f("open").auth_level),
        (AuthMode::None, AuthLevel::Anonymous)
    );
    assert_eq!(f("keyed").function_keys.len(), 1);
    // No secret in the configuration's debug output.
    let debug = format!("{c:?}");
    for secret in ["sekrit-one", "from-a-file", "\"hk\"", "\"v\""] {
        assert!(!debug.contains(secret), "{secret}");
    }
}

#[test]
fn credential_errors_name_the_key() {
    let cases = [
        (
            format!("[gateway]\nauth = \"signature\"\n{FN}"),
            "functions[0].auth",
        ),
        (
            format!("{CREDS}[[credentials]]\naccess_key_id = \"AK1\"\nsecret = \"x\"\n{FN}"),
            "credentials[1].access_key_id",
        ),
        (
            format!("[[credentials]]\naccess_key_id = \"AK1\"\n{FN}"),
            "credentials[0]",
        ),
        (
            format!(
                "[[credentials]]\naccess_key_id = \"AK1\"\nsecret = \"a\"\nsecret_env = \"PATH\"\n{FN}"
            ),
            "credentials[0]",
        ),
        (
            format!(
                "[[credentials]]\naccess_key_id = \"AK1\"\nsecret_file = \"/nonexistent/fngate\"\n{FN}"
            ),
            "credentials[0].secret_file",
        ),
        (
            format!(
                "[[credentials]]\naccess_key_id = \"AK1\"\nsecret_env = \"FNGATE_TEST_UNSET_VARIABLE\"\n{FN}"
            ),
            "credentials[0].secret_env",
        ),
        (
            format!("[[credentials]]\naccess_key_id = \"a/b\"\nsecret = \"x\"\n{FN}"),
            "credentials[0].access_key_id",
        ),
        (
            format!("[gateway]\nauth = \"signature\"\n{CREDS}{FN}auth_level = \"anonymous\"\n"),
            "functions[0].auth_level",
        ),
        (
            format!("{FN}auth_level = \"function\"\n"),
            "functions[0].auth_level",
        ),
        (
            format!(
                "{FN}function_keys = [{{ name = \"a\", value = \"1\" }}, {{ name = \"a\", value = \"2\" }}]\n"
            ),
            "functions[0].function_keys[1].name",
        ),
        (
            format!("[gateway]\nsignature_max_skew_s = 0\n{FN}"),
            "gateway.signature_max_skew_s",
        ),
        (
            format!("[lambda]\naccount_id = \"12\"\n{FN}"),
            "lambda.account_id",
        ),
        (format!("[gateway]\nauth = \"sometimes\"\n{FN}"), "auth"),
        (
            format!("[lambda]\naccount = \"123456789012\"\n{FN}"),
            "account",
        ),
    ];
    for (text, key) in cases {
        let err = parse(&text).expect_err(&text).to_string();
        assert!(err.contains(key), "{key}: {err}\n{text}");
    }
}

#[test]
fn egress_names_its_vpc_and_refuses_the_others() {
    let c = parse(
        "[[networks]]\nvpc_id = \"a\"\ncidrs = [\"10.1.0.0/16\"]\n\
         [[networks]]\nvpc_id = \"b\"\ncidrs = [\"10.2.0.0/16\", \"10.3.0.0/16\"]\n\
         [[functions]]\nname = \"f\"\ncommand = [\"x\"]\negress = \"both\"\nvpc_id = \"a\"\n\
         [[functions]]\nname = \"g\"\ncommand = [\"x\"]\n",
    )
    .unwrap();
    let e = &c.functions[0].egress;
    assert_eq!(e.mode, sandbox_runtime::api::EgressMode::Both);
    assert_eq!(e.vpc_id.as_deref(), Some("a"));
    assert_eq!(e.vpc_cidrs, ["10.1.0.0/16"]);
    assert_eq!(e.refused_cidrs, ["10.2.0.0/16", "10.3.0.0/16"]);
    // The default: FC's, the internet (every VPC's range refused).
    let g = &c.functions[1].egress;
    assert_eq!(g.mode, sandbox_runtime::api::EgressMode::Internet);
    assert_eq!(g.refused_cidrs.len(), 3);
}

#[test]
fn fleet_section_is_checked() {
    assert!(parse(FN).unwrap().fleet.is_none());
    let ok = format!("{FN}[fleet]\nid = \"gw-1\"\nnats_urls = [\"nats://127.0.0.1:4222\"]\n");
    let f = parse(&ok).unwrap().fleet.unwrap();
    assert_eq!((f.id.as_str(), f.name.as_str()), ("gw-1", "fngate"));
    assert_eq!(f.member_ttl, Duration::from_secs(5));
    assert_eq!(f.replicas, 1);
    let bad = |extra: &str, key: &str| {
        let text = format!("{FN}[fleet]\nnats_urls = [\"nats://127.0.0.1:4222\"]\n{extra}\n");
        match parse(&text) {
            Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{extra}"),
            other => panic!("{extra}: {other:?}"),
        }
    };
    bad("id = \"a.b\"", "fleet.id");
    bad(
        "id = \"a\"\nheartbeat_ms = 1000\nmember_ttl_ms = 1500",
        "fleet.member_ttl_ms",
    );
    bad("id = \"a\"\nnats_user = \"u\"", "fleet");
    bad(
        "id = \"a\"\nnats_token = \"t\"\nnats_user = \"u\"\nnats_password = \"p\"",
        "fleet",
    );
    bad(
        "id = \"a\"\nnats_token_env = \"FNGATE_TEST_UNSET_TOKEN\"",
        "fleet.nats_token.nats_token_env",
    );
    bad("id = \"a\"\nreplicas = 0", "fleet.replicas");
    bad("id = \"a\"\nreplicas = 6", "fleet.replicas");
    // A Redis given with split limits would be unused: refused, as the
    // README's table says.
    bad(
        "id = \"a\"\nredis_url = \"redis://127.0.0.1:6379\"",
        "fleet.redis_url",
    );
    bad("id = \"a\"\nrate_limits = \"redis\"", "fleet.redis_url");
}

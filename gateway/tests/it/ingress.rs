//! Ingress policy over real TLS, with callers on distinct loopback source
//! addresses (and PROXY headers) standing in different networks.

use crate::harness::*;
use std::net::SocketAddr;

fn proxy_v1(src: &str, port: u16) -> Vec<u8> {
    format!("PROXY TCP4 {src} 127.0.0.1 {port} 8444\r\n").into_bytes()
}

fn proxy_v2(src: SocketAddr, endpoint: Option<(u8, Vec<u8>)>) -> Vec<u8> {
    use ppp::v2::{Builder, Command, IPv4, IPv6, Protocol, Version};
    let addrs: ppp::v2::Addresses = match src {
        SocketAddr::V4(s) => {
            IPv4::new(*s.ip(), std::net::Ipv4Addr::LOCALHOST, s.port(), 8444).into()
        }
        SocketAddr::V6(s) => {
            IPv6::new(*s.ip(), std::net::Ipv6Addr::LOCALHOST, s.port(), 8444).into()
        }
    };
    let mut b = Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, addrs);
    if let Some((kind, value)) = endpoint {
        b = b.write_tlv(kind, &value).unwrap();
    }
    b.build().unwrap()
}

fn aws_tlv(id: &str) -> Option<(u8, Vec<u8>)> {
    let mut v = vec![0x01];
    v.extend_from_slice(id.as_bytes());
    Some((0xEA, v))
}

fn azure_tlv(link_id: u32) -> Option<(u8, Vec<u8>)> {
    let mut v = vec![0x01];
    v.extend_from_slice(&link_id.to_le_bytes());
    Some((0xEE, v))
}

const NETWORKS: &str = r#"
[[networks]]
vpc_id = "vpc-a"
cidrs = ["127.0.0.2/32", "127.0.1.0/24", "10.1.0.0/16"]
endpoint_ids = ["vpce-0abc", "424242"]

[[networks]]
vpc_id = "vpc-c"
cidrs = ["127.0.0.4/32"]
"#;

const LISTENERS: &str = r#"
trusted_proxies = ["127.0.0.1/32"]
[[gateway.private_endpoints]]
listen = "127.0.0.3:0"
vpc_id = "vpc-b"
[[gateway.proxy_listeners]]
listen = "127.0.0.1:0"
"#;

fn vpc_gateway() -> Gateway {
    let functions =
        echo_fn("payroll", "vpc_bindings = [\"vpc-a\", \"vpc-b\"]") + &echo_fn("open", "");
    Gateway::start(LISTENERS, &format!("{NETWORKS}\n{functions}"))
}

async fn call(gw: &Gateway, addr: SocketAddr, opts: ClientOpts, function: &str) -> Resp {
    let mut c = Client::connect(addr, &gw.ca, opts).await;
    c.invoke(function, "payload").await
}

fn assert_bound_by_vpc(r: &Resp, from: &str) {
    assert_eq!(r.status, 403, "{}", r.text());
    let v = r.json();
    assert_eq!(v["Code"], "AccessDenied");
    assert_eq!(v["RequestId"], r.header("x-fc-request-id").unwrap());
    let msg = v["Message"].as_str().unwrap();
    assert!(msg.starts_with("Resource access is bound by VPC"), "{msg}");
    assert!(msg.contains(from), "{msg} should name {from}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vpc_bound_function_accepts_its_vpcs_only() {
    let gw = vpc_gateway();
    let public = gw.https;
    let private = gw.listener("private_endpoint");
    let proxied = gw.listener("proxy");

    // Accepted: vpc-a by source map, vpc-b by private endpoint, vpc-a by PROXY v2 TLV
    // (AWS vpce id and Azure LINKID), and by a PROXY header's source address.
    let ok = [
        (public, ClientOpts::from("127.0.0.2")),
        (private, ClientOpts::from("127.0.0.1")),
        (
            proxied,
            ClientOpts::default().preamble(proxy_v2(
                "203.0.113.9:4000".parse().unwrap(),
                aws_tlv("vpce-0abc"),
            )),
        ),
        (
            proxied,
            ClientOpts::default().preamble(proxy_v2(
                "203.0.113.9:4000".parse().unwrap(),
                azure_tlv(424242),
            )),
        ),
        (
            proxied,
            ClientOpts::default().preamble(proxy_v1("10.1.2.3", 5555)),
        ),
    ];
    for (addr, opts) in ok {
        let r = call(&gw, addr, opts, "payroll").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "payload");
    }

    // Refused: the internet (direct, or by a PROXY source outside every VPC,
    // or an unknown endpoint id), and another VPC.
    let refused = [
        (public, ClientOpts::from("127.0.0.1"), "internet"),
        (public, ClientOpts::from("127.0.0.4"), "vpc-c"),
        (
            proxied,
            ClientOpts::default().preamble(proxy_v2("198.51.100.1:1".parse().unwrap(), None)),
            "internet",
        ),
        (
            proxied,
            ClientOpts::default().preamble(proxy_v2(
                "10.1.0.1:1".parse().unwrap(),
                aws_tlv("vpce-other"),
            )),
            "internet",
        ),
    ];
    let mut denied = 0.0;
    for (addr, opts, from) in refused {
        let r = call(&gw, addr, opts, "payroll").await;
        assert_bound_by_vpc(&r, from);
        denied += 1.0;
    }

    // The binding covers every qualifier.
    for q in ["LATEST", "prod", "1"] {
        let mut outside = Client::connect(public, &gw.ca, ClientOpts::from("127.0.0.1")).await;
        assert_bound_by_vpc(&outside.invoke_q("payroll", q, "x").await, "internet");
        denied += 1.0;
        let mut inside = Client::connect(public, &gw.ca, ClientOpts::from("127.0.0.2")).await;
        assert_eq!(inside.invoke_q("payroll", q, "x").await.status, 200);
    }

    // An unbound function accepts everyone.
    for (addr, opts) in [
        (public, ClientOpts::from("127.0.0.1")),
        (public, ClientOpts::from("127.0.0.4")),
        (private, ClientOpts::from("127.0.0.3")),
    ] {
        assert_eq!(call(&gw, addr, opts, "open").await.status, 200);
    }

    assert_eq!(
        gw.metric("fngate_ingress_denials_total{function=\"payroll\",reason=\"vpc_binding\"}")
            .await,
        denied
    );
    assert_eq!(
        gw.metric("fngate_ingress_denials_total{function=\"open\",reason=\"vpc_binding\"}")
            .await,
        0.0
    );
    let (_, f) = gw.admin_get("/admin/functions").await;
    let f: serde_json::Value = serde_json::from_str(&f).unwrap();
    let payroll = f
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "payroll")
        .unwrap();
    assert_eq!(
        payroll["ingress"]["vpc_bindings"],
        serde_json::json!(["vpc-a", "vpc-b"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_rules_priority_first_match_and_implicit_deny() {
    let rules = r#"access_rules = [
  { priority = 100, action = "deny",  cidr = "127.0.1.9/32", name = "quarantine" },
  { priority = 200, action = "allow", vpc_id = "vpc-a" },
  { priority = 10,  action = "deny",  cidr = "127.0.0.6", name = "blocked-first" },
  { priority = 150, action = "allow", cidr = "127.0.0.6/32", name = "partner" },
  { priority = 120, action = "allow", cidr = "fd00:1::/32", name = "v6-partner" },
]"#;
    // Keys of [gateway] before LISTENERS, whose [[...]] tables end the section.
    let gateway = format!(
        "access_rules = [{{ priority = 1, action = \"allow\", cidr = \"127.0.0.8/32\" }}]\n{LISTENERS}"
    );
    let functions = echo_fn("guarded", rules)
        + &echo_fn("defaults", "")
        + &echo_fn("none", "access_rules = []");
    let gw = Gateway::start(&gateway, &format!("{NETWORKS}\n{functions}"));
    let public = gw.https;
    let proxied = gw.listener("proxy");

    let cases: Vec<(SocketAddr, ClientOpts, &str, Result<(), &str>)> = vec![
        (public, ClientOpts::from("127.0.0.2"), "guarded", Ok(())),
        (public, ClientOpts::from("127.0.1.10"), "guarded", Ok(())),
        (
            public,
            ClientOpts::from("127.0.1.9"),
            "guarded",
            Err("'quarantine' (priority 100)"),
        ),
        (
            public,
            ClientOpts::from("127.0.0.6"),
            "guarded",
            Err("'blocked-first' (priority 10)"),
        ),
        (
            public,
            ClientOpts::from("127.0.0.7"),
            "guarded",
            Err("implicit deny"),
        ),
        (
            proxied,
            ClientOpts::default().preamble(proxy_v2("[fd00:1::5]:1".parse().unwrap(), None)),
            "guarded",
            Ok(()),
        ),
        (
            proxied,
            ClientOpts::default().preamble(proxy_v2("[fd00:2::5]:1".parse().unwrap(), None)),
            "guarded",
            Err("implicit deny"),
        ),
        // No rules of its own: the gateway-wide defaults.
        (public, ClientOpts::from("127.0.0.8"), "defaults", Ok(())),
        (
            public,
            ClientOpts::from("127.0.0.2"),
            "defaults",
            Err("implicit deny"),
        ),
        // An explicit empty list: no rules, everyone.
        (public, ClientOpts::from("127.0.0.7"), "none", Ok(())),
    ];
    for (addr, opts, function, want) in cases {
        let src = format!("{:?}", opts.source);
        let r = call(&gw, addr, opts, function).await;
        match want {
            Ok(()) => assert_eq!(r.status, 200, "{function} from {src}: {}", r.text()),
            Err(text) => {
                assert_eq!(r.status, 403, "{function} from {src}");
                let v = r.json();
                assert_eq!(v["Code"], "AccessDenied");
                let msg = v["Message"].as_str().unwrap();
                assert!(msg.contains(text), "{function} from {src}: {msg}");
            }
        }
    }
    assert_eq!(
        gw.metric("fngate_ingress_denials_total{function=\"guarded\",reason=\"access_rule\"}")
            .await,
        4.0
    );
    let (_, f) = gw.admin_get("/admin/functions").await;
    let f: serde_json::Value = serde_json::from_str(&f).unwrap();
    let by = |n: &str| {
        f.as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(by("guarded")["ingress"]["access_rules_source"], "function");
    assert_eq!(
        by("guarded")["ingress"]["access_rules"][0]["name"],
        "blocked-first"
    );
    assert_eq!(by("defaults")["ingress"]["access_rules_source"], "gateway");
    assert_eq!(by("none")["ingress"]["access_rules_source"], "none");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_callers_and_rules() {
    let functions = echo_fn(
        "v6ok",
        "access_rules = [{ priority = 1, action = \"allow\", cidr = \"::1/128\" }]",
    ) + &echo_fn(
        "v6no",
        "access_rules = [{ priority = 1, action = \"deny\", cidr = \"::1\", name = \"no-loopback6\" }, { priority = 2, action = \"allow\", cidr = \"::/0\" }]",
    );
    let gw = Gateway::start("listen = \"[::1]:0\"", &functions);
    assert!(gw.https.is_ipv6());
    let mut c = gw.client(ClientOpts::from("::1")).await;
    assert_eq!(c.invoke("v6ok", "x").await.status, 200);
    let r = c.invoke("v6no", "x").await;
    assert_eq!(r.status, 403);
    assert!(
        r.json()["Message"]
            .as_str()
            .unwrap()
            .contains("no-loopback6")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_is_honoured_only_from_trusted_peers_and_when_well_formed() {
    let gw = vpc_gateway();
    let proxied = gw.listener("proxy");
    let v2 = proxy_v2("10.1.2.3:1".parse().unwrap(), None);

    // Trusted peer (127.0.0.1), v1 and v2: honoured (10.1.2.3 is in vpc-a).
    for preamble in [proxy_v1("10.1.2.3", 1), v2.clone()] {
        let r = call(
            &gw,
            proxied,
            ClientOpts::from("127.0.0.1").preamble(preamble),
            "payroll",
        )
        .await;
        assert_eq!(r.status, 200);
    }
    // Untrusted peer: closed, even with a well-formed header claiming vpc-a.
    let untrusted = Client::try_connect(
        proxied,
        &gw.ca,
        ClientOpts::from("127.0.0.9").preamble(v2.clone()),
    )
    .await;
    assert!(
        untrusted.is_err(),
        "an untrusted peer's PROXY header must not be honoured"
    );
    // Malformed headers: closed.
    for bad in [
        b"PROXY TCP4 10.1.2.3 nope 1 2\r\n".to_vec(),
        b"PROXY TCP4 10.1.2.3\r\n".to_vec(),
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        {
            let mut t = v2.clone();
            t[12] = 0x31; // version 3
            t
        },
    ] {
        let r = Client::try_connect(
            proxied,
            &gw.ca,
            ClientOpts::from("127.0.0.1").preamble(bad.clone()),
        )
        .await;
        assert!(
            r.is_err(),
            "malformed header {:?} must close the connection",
            String::from_utf8_lossy(&bad)
        );
    }
    // Missing header (TLS straight away): closed.
    assert!(
        Client::try_connect(proxied, &gw.ca, ClientOpts::from("127.0.0.1"))
            .await
            .is_err()
    );

    let m = |r: &str| format!("fngate_proxy_protocol_rejections_total{{reason=\"{r}\"}}");
    gw.until(
        "rejections counted",
        std::time::Duration::from_secs(5),
        || async {
            gw.metric(&m("untrusted_peer")).await == 1.0
                && gw.metric(&m("malformed")).await == 4.0
                && gw.metric(&m("missing")).await == 1.0
        },
    )
    .await;
    // X-Forwarded-For is never used to decide the network.
    let mut c = gw.client(ClientOpts::from("127.0.0.1")).await;
    let mut req = invoke_request("payroll", "x".into());
    req.headers_mut()
        .insert("x-forwarded-for", "127.0.0.2".parse().unwrap());
    req.headers_mut()
        .insert("forwarded", "for=127.0.0.2".parse().unwrap());
    assert_eq!(c.send(req).await.unwrap().status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_requests_are_cheap_and_never_reach_an_instance() {
    let gw = vpc_gateway();
    // A large body from outside (HTTP/1.1, `Expect: 100-continue`, as clients
    // send large uploads): answered from the head alone, no `100 Continue`,
    // so the body is never even sent.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // From 127.0.0.1: the internet, for this gateway's network map.
        let mut tls = raw_tls(&gw).await;
        let head = format!(
            "POST {} HTTP/1.1\r\nhost: localhost\r\ncontent-length: 8388608\r\nexpect: 100-continue\r\n\r\n",
            invoke_path("payroll")
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 403"), "{text}");
        assert!(text.contains("Resource access is bound by VPC"), "{text}");
    }
    // Over HTTP/2 too.
    let mut c2 = gw
        .client(ClientOpts {
            h2: true,
            ..ClientOpts::from("127.0.0.1")
        })
        .await;
    assert_bound_by_vpc(
        &c2.invoke("payroll", vec![b'y'; 4 * 1024 * 1024]).await,
        "internet",
    );
    assert!(gw.instances_of("payroll").await.is_empty());
    assert_eq!(
        gw.metric("fngate_instance_starts_total{function=\"payroll\",result=\"ok\"}")
            .await,
        0.0
    );
    assert_eq!(
        gw.metric("fngate_instance_starts_total{function=\"payroll\",result=\"failed\"}")
            .await,
        0.0
    );

    // A small denied body is drained: the same HTTP/1.1 connection serves the
    // caller's next request.
    let mut c = gw.client(ClientOpts::from("127.0.0.1")).await;
    assert_bound_by_vpc(&c.invoke("payroll", vec![b'z'; 1000]).await, "internet");
    let r = c.invoke("open", "next").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "next");
}

#[test]
fn ingress_config_errors_name_the_key() {
    let fn_with =
        |extra: &str| format!("[[functions]]\nname = \"f\"\ncommand = [\"x\"]\n{extra}\n");
    let many: Vec<String> = (0..21).map(|i| format!("\"vpc-{i}\"")).collect();
    let networks: String = (0..21)
        .map(|i| format!("[[networks]]\nvpc_id = \"vpc-{i}\"\n"))
        .collect();
    let cases = [
        (
            format!(
                "{networks}{}",
                fn_with(&format!("vpc_bindings = [{}]", many.join(",")))
            ),
            "functions[0].vpc_bindings",
        ),
        (
            "[[networks]]\nvpc_id = \"a\"\ncidrs = [\"10.0.0.0/33\"]\n".to_string(),
            "networks[0].cidrs[0]",
        ),
        (
            "[[networks]]\nvpc_id = \"a\"\ncidrs = [\"not-a-cidr\"]\n".to_string(),
            "networks[0].cidrs[0]",
        ),
        (
            fn_with("access_rules = [{ priority = 1, action = \"allow\" }]"),
            "functions[0].access_rules[0]",
        ),
        (
            fn_with(
                "access_rules = [{ priority = 1, action = \"allow\", cidr = \"1.2.3.4/8\", vpc_id = \"a\" }]",
            ),
            "functions[0].access_rules[0]",
        ),
        (
            fn_with("access_rules = [{ priority = 1, action = \"maybe\", cidr = \"10.0.0.0/8\" }]"),
            "maybe",
        ),
        (
            fn_with("vpc_bindings = [\"vpc-nope\"]"),
            "functions[0].vpc_bindings[0]",
        ),
        (
            "[gateway]\n[[gateway.proxy_listeners]]\nlisten = \"127.0.0.1:0\"\n".to_string(),
            "gateway.trusted_proxies",
        ),
        (
            "[gateway]\ntrusted_proxies = [\"bad\"]\n".to_string(),
            "gateway.trusted_proxies[0]",
        ),
    ];
    for (text, key) in cases {
        assert_config_error(&text, key);
    }
}

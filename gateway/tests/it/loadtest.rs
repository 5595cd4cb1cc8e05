//! The load generator against a real gateway: its JSON report's counts
//! match the gateway's own /metrics counters exactly.

use crate::harness::*;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_second_scenario_reports_what_the_gateway_counted() {
    let cfg = "[[networks]]\nvpc_id = \"vpc-a\"\ncidrs = [\"127.0.0.2/32\"]\n".to_string()
        + &echo_fn("echo", "instance_concurrency = 50")
        + &echo_fn(
            "private",
            "instance_concurrency = 50\nvpc_bindings = [\"vpc-a\"]",
        )
        + &echo_fn(
            "throttled",
            "instance_concurrency = 50\nrate_limit = { per_second = 50.0, burst = 10 }",
        )
        + &echo_fn("later", "instance_concurrency = 50");
    let gw = Gateway::start("", &cfg);
    let scenario = format!(
        "target = \"https://{}\"\ncacert = \"{}\"\nduration = \"2s\"\nconnections = 8\n\
         [[functions]]\nname = \"echo\"\nweight = 4\npayload_bytes = 300\n\
         [[functions]]\nname = \"private\"\nweight = 2\npayload_bytes = 1000\n\
         [[functions]]\nname = \"throttled\"\nweight = 2\n\
         [[functions]]\nname = \"later\"\nweight = 1\ninvocation = \"async\"\n\
         [[functions]]\nname = \"echo\"\nweight = 2\ndialect = \"lambda\"\n\
         [[functions]]\nname = \"later\"\nweight = 1\ninvocation = \"async\"\ndialect = \"lambda\"\n\
         [[functions]]\nname = \"echo\"\nweight = 2\ndialect = \"azure\"\n\
         [[sources]]\naddress = \"127.0.0.1\"\n[[sources]]\naddress = \"127.0.0.2\"\n",
        gw.https,
        gw.ca.display()
    );
    let path = gw.dir.path().join("scenario.toml");
    std::fs::write(&path, scenario).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(workspace_bin("loadtest"))
            .args(["--json", "--scenario"])
            .arg(&path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["errors"], 0);
    let status = |s: &str| r["statuses"][s].as_u64().unwrap_or(0);

    let (_, text) = gw.admin_get("/metrics").await;
    // Runs of asynchronous calls are the gateway's own (network "internal"):
    // no client sent or saw them.
    let total = |pred: &dyn Fn(&str) -> bool| -> u64 {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.contains("(unknown)"))
            .filter(|l| !l.contains("network=\"internal\"") && pred(l))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>() as u64
    };
    assert!(
        status("200") > 0 && status("202") > 0 && status("403") > 0 && status("429") > 0,
        "{r}"
    );
    let outcome = |o: &str| {
        let needle = format!("outcome=\"{o}\"}}");
        total(&|l: &str| l.starts_with("fngate_invocations_total{") && l.contains(&needle))
    };
    let sum = |prefix: &str| total(&|l: &str| l.starts_with(prefix));
    assert_eq!(status("202"), outcome("accepted"));
    assert_eq!(status("200"), outcome("success"));
    assert_eq!(status("403"), outcome("denied"));
    assert_eq!(status("429"), outcome("throttled"));
    assert_eq!(
        r["requests"].as_u64().unwrap(),
        sum("fngate_invocations_total{")
    );
    // Every door served its share of the mix.
    for api in ["fc", "lambda", "azure"] {
        let needle = format!("api=\"{api}\",function=\"echo\"");
        let served = total(&|l: &str| {
            l.starts_with("fngate_invocations_total{")
                && l.contains(&needle)
                && l.contains("outcome=\"success\"")
        });
        assert!(served > 0, "{api}");
    }
    // The client sees the cold starts of synchronous calls only.
    assert_eq!(
        r["cold_starts"].as_u64().unwrap(),
        total(&|l: &str| l.starts_with("fngate_cold_starts_total{") && !l.contains("\"later\""))
    );
    assert_eq!(
        r["bytes_out"].as_u64().unwrap(),
        sum("fngate_traffic_bytes_total{direction=\"in\"")
    );
    assert_eq!(
        r["bytes_in"].as_u64().unwrap(),
        sum("fngate_traffic_bytes_total{direction=\"out\"")
    );
}

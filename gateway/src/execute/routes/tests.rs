//! The choice of backends: weights, fallback order, ejection and probing.
//! (Calls themselves are tested against real servers in tests/it/backends.rs.)

use super::*;
use crate::config::Config;

fn routes(gateway: &str, backends: &str) -> Routes {
    let text = format!(
        "[gateway]\n{gateway}\n[[functions]]\nname = \"f\"\ncommand = [\"true\"]\n{backends}"
    );
    let cfg = Config::parse(&text, std::path::Path::new(".")).unwrap();
    let outbound = client::Outbound::new(None).unwrap();
    let families = BackendFamilies::new(&Registry::new());
    Routes::new(
        &cfg.functions[0],
        &cfg.gateway.backends,
        &outbound,
        &families,
        &cfg.ingress.vpcs,
    )
    .unwrap()
    .unwrap()
}

fn http(name: &str, extra: &str) -> String {
    format!(
        "[[functions.backends]]\nname = \"{name}\"\nkind = \"http\"\nurl = \"https://{name}.invalid/\"\n{extra}\n"
    )
}

fn names(r: &Routes, plan: &[usize]) -> Vec<String> {
    plan.iter()
        .map(|&i| r.backends[i].cfg.name.to_string())
        .collect()
}

#[test]
fn weights_share_the_first_choice_and_fallbacks_follow_in_order() {
    let r = routes(
        "",
        &(http("a", "weight = 3")
            + &http("b", "weight = 1")
            + &http("z", "weight = 0\nfallback = 2")
            + &http("y", "weight = 0\nfallback = 1")),
    );
    let mut a = 0;
    for _ in 0..10_000 {
        let plan = names(&r, &r.plan());
        assert_eq!(plan.len(), 3, "{plan:?}");
        assert_eq!(plan[1..], ["y", "z"], "fallbacks in their order");
        if plan[0] == "a" {
            a += 1;
        } else {
            assert_eq!(plan[0], "b");
        }
    }
    // Binomial(10000, 0.75): sd 43; ±300 is 7 sd.
    assert!((7200..=7800).contains(&a), "a first {a} times of 10000");
}

#[test]
fn an_ejected_backend_is_skipped_then_probed_once_per_cool_down() {
    let r = routes(
        "backend_eject_after_failures = 2\nbackend_eject_ms = 1",
        &(http("a", "") + &http("fb", "weight = 0\nfallback = 1")),
    );
    let s = r.settings.clone();
    let a = &r.backends[0];
    a.record("f", LegOutcome::ConnectError, &s);
    assert!(!a.is_ejected(), "one failure is not enough");
    a.record("f", LegOutcome::Success, &s);
    a.record("f", LegOutcome::Throttled, &s);
    assert!(!a.is_ejected(), "a success resets the count");
    a.record("f", LegOutcome::Timeout, &s);
    assert!(a.is_ejected());
    assert_eq!(a.metrics.ejections.get(), 1);
    assert_eq!(a.metrics.ejected.get(), 1);

    // Waiting out the cool-down (1 ms) is the point of this test.
    std::thread::sleep(std::time::Duration::from_millis(5));
    let probes = (0..100).filter(|_| names(&r, &r.plan())[0] == "a").count();
    assert_eq!(probes, 1, "exactly one call probes an ejected backend");
    a.record("f", LegOutcome::Success, &s);
    assert!(!a.is_ejected());
    assert_eq!(a.metrics.ejected.get(), 0);
    assert_eq!(names(&r, &r.plan()), ["a", "fb"]);
    // A function error is the function's, not the backend's.
    for _ in 0..5 {
        a.record("f", LegOutcome::FunctionError, &s);
    }
    assert!(!a.is_ejected());
}

#[test]
fn with_every_backend_ejected_the_chosen_one_is_still_tried() {
    let r = routes(
        "backend_eject_after_failures = 1\nbackend_eject_ms = 600000",
        &http("only", ""),
    );
    r.backends[0].record("f", LegOutcome::ConnectError, &r.settings.clone());
    assert!(r.backends[0].is_ejected());
    assert_eq!(names(&r, &r.plan()), ["only"]);
}

#[test]
fn the_random_draw_covers_its_range() {
    let mut seen = [0u32; 5];
    for _ in 0..5000 {
        seen[random_below(5) as usize] += 1;
    }
    assert!(seen.iter().all(|&n| (800..=1200).contains(&n)), "{seen:?}");
    assert_eq!(random_below(0), 0);
}

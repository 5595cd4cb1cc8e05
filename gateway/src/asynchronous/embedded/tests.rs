use super::*;

fn hist() -> prometheus::Histogram {
    prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("t", "t")).unwrap()
}

fn bounds(max_tasks: u64, max_bytes: u64) -> Bounds {
    Bounds {
        max_tasks,
        max_bytes,
    }
}

fn task(id: &str, function: &str, accepted_ms: u64, bytes: u64) -> TaskRecord {
    let mut t: TaskRecord = serde_json::from_str(
        r#"{"id":"","request_id":"","function":"","api":"fc","caller":{"network":"internet"},
            "payload_bytes":0,"accepted_ms":0,"due_ms":0,"state":"Enqueued","attempts":0,
            "retries":0,"backoffs":0,"events":[]}"#,
    )
    .unwrap();
    t.id = id.into();
    t.request_id = format!("r-{id}");
    t.function = function.into();
    t.accepted_ms = accepted_ms;
    t.due_ms = accepted_ms;
    t.payload_bytes = bytes;
    t
}

async fn lease(s: &Embedded, f: &str, now: u64, max: usize, until: u64) -> Vec<Leased> {
    s.lease(f, now, max, until).await.unwrap().0
}

async fn add(s: &Embedded, t: TaskRecord) -> Appended {
    let payload = Bytes::from(vec![b'x'; t.payload_bytes as usize]);
    s.append(t, payload).await.unwrap()
}

#[tokio::test]
async fn append_is_bounded_and_a_known_id_is_not_added_twice() {
    let s = Embedded::open(None, bounds(2, 10), hist()).unwrap();
    assert!(matches!(add(&s, task("a", "f", 1, 4)).await, Appended::New));
    match add(&s, task("a", "f", 2, 4)).await {
        Appended::Known(t) => assert_eq!(t.request_id, "r-a"),
        other => panic!("{other:?}"),
    }
    let full = s
        .append(task("b", "f", 3, 7), Bytes::from(vec![0; 7]))
        .await;
    assert!(matches!(full, Err(StoreError::Full("bytes"))), "{full:?}");
    assert!(matches!(add(&s, task("b", "f", 3, 6)).await, Appended::New));
    let full = s.append(task("c", "f", 4, 0), Bytes::new()).await;
    assert!(matches!(full, Err(StoreError::Full("tasks"))), "{full:?}");
    assert_eq!(
        s.depth(),
        Depth {
            tasks: 2,
            bytes: 10,
            oldest_accepted_ms: Some(1),
            deliveries: 0,
            done: 0,
        }
    );
}

#[tokio::test]
async fn leases_take_due_tasks_of_one_function_and_only_the_lease_holder_writes() {
    let s = Embedded::open(None, bounds(100, 1 << 20), hist()).unwrap();
    add(&s, task("a", "f", 10, 1)).await;
    add(&s, task("b", "f", 20, 1)).await;
    add(&s, task("c", "g", 10, 1)).await;
    // Ids are scoped by function: g's "a" is another task.
    add(&s, task("a", "g", 10, 1)).await;
    // Due at 15: only a (b is due at 20; c is g's).
    let l = lease(&s, "f", 15, 10, 1000).await;
    assert_eq!(l.len(), 1);
    let mut a = l.into_iter().next().unwrap();
    assert_eq!((a.task.id.as_str(), a.was_due_ms), ("a", 10));
    assert_eq!(a.task.state, TaskState::Running);
    assert_eq!(a.task.attempts, 1);
    assert_eq!(a.payload.len(), 1);
    // A lease says when the next one is due.
    assert_eq!(s.lease("f", 15, 10, 1000).await.unwrap().1, Some(20));
    // Not leased again while its lease runs...
    assert_eq!(lease(&s, "f", 999, 10, 2000).await.len(), 1); // b
    // ...and due again when it ends (the holder died): a second attempt.
    let again = lease(&s, "f", 1000, 10, 3000).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].task.attempts, 2);
    // The first holder's late write is refused; the current one's lands.
    a.task.state = TaskState::Succeeded;
    a.task.ended_ms = Some(1001);
    assert!(!s.update(a.task.clone(), None).await.unwrap());
    let mut cur = again.into_iter().next().unwrap().task;
    cur.state = TaskState::Enqueued;
    cur.due_ms = 5000;
    assert!(s.update(cur.clone(), None).await.unwrap());
    assert_eq!(
        s.get("f", "a").await.unwrap().unwrap().0.state,
        TaskState::Enqueued
    );
    assert!(
        lease(&s, "f", 4999, 10, 9000)
            .await
            .iter()
            .all(|l| l.task.id != "a")
    );
    let l = lease(&s, "f", 5000, 10, 9000).await;
    assert_eq!(l.len(), 1);
    let mut t = l.into_iter().next().unwrap().task;
    t.state = TaskState::Succeeded;
    t.ended_ms = Some(5001);
    assert!(s.update(t, None).await.unwrap());
    assert_eq!(s.depth().tasks, 3); // b (leased), and g's c and a
    assert_eq!(
        s.get("g", "a").await.unwrap().unwrap().0.state,
        TaskState::Enqueued
    );
    let listed = s.list("f", Some(TaskState::Succeeded), 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ["a"]
    );
    let all = s.list("f", None, 10).await.unwrap();
    // Newest accepted first.
    assert_eq!(
        all.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        ["b", "a"]
    );
}

#[tokio::test]
async fn stop_ends_a_waiting_or_running_task_once() {
    let s = Embedded::open(None, bounds(100, 1 << 20), hist()).unwrap();
    add(&s, task("a", "f", 1, 0)).await;
    add(&s, task("b", "f", 1, 0)).await;
    let leased = lease(&s, "f", 1, 1, 100).await;
    let running = leased[0].task.id.clone();
    let waiting = if running == "a" { "b" } else { "a" };
    match s.stop("f", waiting, 5).await.unwrap() {
        Stop::Stopped { task, was_running } => {
            assert!(!was_running);
            assert_eq!(task.state, TaskState::Stopped);
        }
        other => panic!("{other:?}"),
    }
    match s.stop("f", &running, 6).await.unwrap() {
        Stop::Stopped { was_running, .. } => assert!(was_running),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.stop("f", &running, 7).await.unwrap(),
        Stop::Done(_)
    ));
    assert!(matches!(
        s.stop("f", "zz", 7).await.unwrap(),
        Stop::NotFound
    ));
    // The stopped attempt's own outcome does not overwrite the stop.
    let mut t = leased.into_iter().next().unwrap().task;
    t.state = TaskState::Succeeded;
    assert!(!s.update(t, None).await.unwrap());
    assert_eq!(s.depth().tasks, 0);
    assert!(lease(&s, "f", 1000, 10, 2000).await.is_empty());
}

#[tokio::test]
async fn a_reopened_store_has_every_committed_task_and_returns_leases() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    {
        let s = Embedded::open(Some(&path), bounds(100, 1 << 20), hist()).unwrap();
        for i in 0..50 {
            add(&s, task(&format!("t{i}"), "f", i, 3)).await;
        }
        assert_eq!(lease(&s, "f", 100, 5, 1_000_000).await.len(), 5);
        // Dropped as a killed process would leave it: leases held.
    }
    let s = (0..100)
        .find_map(|_| {
            // The writer thread lets go of the file as it notices the drop.
            std::thread::sleep(std::time::Duration::from_millis(10));
            Embedded::open(Some(&path), bounds(100, 1 << 20), hist()).ok()
        })
        .expect("reopened");
    assert_eq!(s.depth().tasks, 50);
    assert_eq!(s.depth().bytes, 150);
    assert_eq!(s.recover(200).await.unwrap(), 5);
    assert_eq!(s.recover(200).await.unwrap(), 0);
    // All 50 are due now, the recovered ones at 200, with their attempt counted.
    let l = lease(&s, "f", 200, 100, 10_000).await;
    assert_eq!(l.len(), 50);
    assert_eq!(l.iter().filter(|l| l.task.attempts == 2).count(), 5);
}

#[tokio::test]
async fn done_tasks_are_purged_after_retention_and_deliveries_are_durable_until_delivered() {
    let s = Embedded::open(None, bounds(100, 1 << 20), hist()).unwrap();
    add(&s, task("a", "f", 1, 2)).await;
    let mut t = lease(&s, "f", 1, 1, 100).await.remove(0).task;
    t.state = TaskState::Failed;
    t.ended_ms = Some(10);
    let d = Delivery {
        id: "f/a/RetriesExhausted".into(),
        function: "f".into(),
        url: "http://127.0.0.1:9/".into(),
        body: "{}".into(),
        created_ms: 10,
        due_ms: 10,
        attempts: 0,
    };
    assert!(s.update(t, Some(d.clone())).await.unwrap());
    assert_eq!(s.depth().deliveries, 1);
    let (got, next) = s.lease_deliveries(9, 10, 100).await.unwrap();
    assert!(got.is_empty());
    assert_eq!(next, Some(10));
    let (got, next) = s.lease_deliveries(10, 10, 100).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(next, Some(100), "leased until 100");
    let mut again = got[0].clone();
    again.attempts = 1;
    again.due_ms = 50;
    s.redeliver(again).await.unwrap();
    let (got, _) = s.lease_deliveries(50, 10, 200).await.unwrap();
    assert_eq!(got[0].attempts, 1);
    s.delivered(&d.id).await.unwrap();
    assert_eq!(s.depth().deliveries, 0);
    assert_eq!(s.lease_deliveries(1000, 10, 2000).await.unwrap().1, None);

    assert_eq!(s.purge(10, 100).await.unwrap(), 0, "ended at 10: kept");
    assert_eq!(s.purge(11, 100).await.unwrap(), 1);
    assert!(s.get("f", "a").await.unwrap().is_none());
    assert!(s.list("f", None, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn done_tasks_beyond_the_count_are_purged_oldest_first() {
    let s = Embedded::open(None, bounds(100, 1 << 20), hist()).unwrap();
    for i in 0..5u64 {
        add(&s, task(&format!("t{i}"), "f", i, 0)).await;
        let mut t = lease(&s, "f", i, 1, 1000).await.remove(0).task;
        t.state = TaskState::Succeeded;
        t.ended_ms = Some(100 + i);
        assert!(s.update(t, None).await.unwrap());
    }
    assert_eq!(s.depth().done, 5);
    // Nothing is past its age (0): only the count bounds them.
    assert_eq!(s.purge(0, 2).await.unwrap(), 3);
    assert_eq!(s.depth().done, 2);
    for (id, kept) in [("t0", false), ("t2", false), ("t3", true), ("t4", true)] {
        assert_eq!(s.get("f", id).await.unwrap().is_some(), kept, "{id}");
    }
}

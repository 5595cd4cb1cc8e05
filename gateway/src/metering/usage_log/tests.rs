use super::*;

fn rec(i: u64) -> UsageRecord {
    UsageRecord {
        request_id: format!("r-{i}"),
        function: "f".into(),
        qualifier: None,
        api: "fc".into(),
        network: "internet".into(),
        vpc_id: None,
        access_key_id: None,
        bytes_in: i,
        bytes_out: 2 * i,
        duration_ms: 1.5,
        memory_mb: 128,
        billed_gb_s: 0.00025,
        instance_id: Some("c-1".into()),
        cold_start: i == 0,
        status: 200,
        outcome: "success".into(),
        start_unix_ms: 1,
        end_unix_ms: 2,
    }
}

fn cfg(dir: &Path, rotate_bytes: u64) -> UsageLogConfig {
    UsageLogConfig {
        path: dir.join("usage.jsonl"),
        sync_interval: Duration::from_millis(50),
        rotate_bytes,
    }
}

#[tokio::test]
async fn everything_recorded_is_on_disk_after_close() {
    let dir = tempfile::tempdir().unwrap();
    let (log, task) = UsageLog::start(cfg(dir.path(), u64::MAX)).unwrap();
    for i in 0..10_000 {
        log.record(Box::new(rec(i))).await;
    }
    task.close().await;
    let (records, skipped) = read_records(&[dir.path().join("usage.jsonl")]).unwrap();
    assert_eq!(skipped, 0);
    assert_eq!(records.len(), 10_000);
    assert_eq!(records[9_999], rec(9_999));
}

#[tokio::test]
async fn a_torn_last_line_is_skipped_and_the_log_continues_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.jsonl");
    let mut good = serde_json::to_vec(&rec(1)).unwrap();
    good.push(b'\n');
    let torn = &serde_json::to_vec(&rec(2)).unwrap()[..40];
    std::fs::write(&path, [good.as_slice(), torn].concat()).unwrap();
    let (records, skipped) = read_records(std::slice::from_ref(&path)).unwrap();
    assert_eq!((records.len(), skipped), (1, 1));
    // Reopened after the "crash": new records land on lines of their own.
    let (log, task) = UsageLog::start(cfg(dir.path(), u64::MAX)).unwrap();
    log.record(Box::new(rec(3))).await;
    task.close().await;
    let (records, skipped) = read_records(&[path]).unwrap();
    assert_eq!(skipped, 1);
    assert_eq!(records, vec![rec(1), rec(3)]);
}

#[tokio::test]
async fn rotation_by_size_keeps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let (log, task) = UsageLog::start(cfg(dir.path(), 4096)).unwrap();
    for i in 0..500 {
        log.record(Box::new(rec(i))).await;
    }
    task.close().await;
    let files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    // Rotation happens at batch boundaries, so a file may exceed the size
    // by one batch; what matters is that it rotated and lost nothing.
    assert!(files.len() >= 2, "rotated: {files:?}");
    let (records, skipped) = read_records(&files).unwrap();
    assert_eq!(skipped, 0);
    let mut ids: Vec<u64> = records.iter().map(|r| r.bytes_in).collect();
    ids.sort();
    assert_eq!(ids, (0..500).collect::<Vec<_>>());
}

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
        backend_legs: Vec::new(),
    }
}

fn health() -> Arc<LogHealth> {
    Arc::new(LogHealth::new(
        prometheus::IntCounter::new("errors", "write errors").unwrap(),
    ))
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
    let (log, task) = UsageLog::start(cfg(dir.path(), u64::MAX), health()).unwrap();
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
async fn instance_records_are_read_apart_from_invocation_records() {
    let dir = tempfile::tempdir().unwrap();
    let (log, task) = UsageLog::start(cfg(dir.path(), u64::MAX), health()).unwrap();
    let inst = crate::metering::InstanceRecord {
        record: crate::metering::INSTANCE_RECORD.into(),
        function: "f".into(),
        instance_id: "c-1".into(),
        worker: "http://127.0.0.1:7070".into(),
        memory_mb: 128,
        start_unix_ms: 1,
        end_unix_ms: 2,
        reason: "idle".into(),
        egress: vec![sandbox_runtime::api::EgressBytes {
            network: "internet".into(),
            direction: "in".into(),
            bytes: 42,
        }],
    };
    log.record(Box::new(rec(1))).await;
    log.instance(Box::new(inst.clone())).await;
    log.record(Box::new(rec(2))).await;
    task.close().await;
    let paths = [dir.path().join("usage.jsonl")];
    let (records, skipped) = read_records(&paths).unwrap();
    assert_eq!((records, skipped), (vec![rec(1), rec(2)], 0));
    assert_eq!(read_instance_records(&paths).unwrap(), vec![inst]);
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
    let (log, task) = UsageLog::start(cfg(dir.path(), u64::MAX), health()).unwrap();
    log.record(Box::new(rec(3))).await;
    task.close().await;
    let (records, skipped) = read_records(&[path]).unwrap();
    assert_eq!(skipped, 1);
    assert_eq!(records, vec![rec(1), rec(3)]);
}

#[tokio::test]
async fn rotation_by_size_keeps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let (log, task) = UsageLog::start(cfg(dir.path(), 4096), health()).unwrap();
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

/// A disk that fails: refuses its first writes, then takes a few bytes at a
/// time (short writes), then recovers.
struct Flaky {
    fail_first: usize,
    calls: usize,
    got: Vec<u8>,
}

impl Write for Flaky {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.calls += 1;
        if self.calls <= self.fail_first {
            return Err(std::io::ErrorKind::StorageFull.into());
        }
        // Short writes, and every third call fails midway.
        if self.calls.is_multiple_of(3) {
            return Err(std::io::ErrorKind::StorageFull.into());
        }
        let n = buf.len().min(64);
        self.got.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failing_write_is_retried_from_where_it_stopped_and_loses_nothing() {
    let h = health();
    let mut disk = Flaky {
        fail_first: 3,
        calls: 0,
        got: Vec::new(),
    };
    let mut want = Vec::new();
    for i in 0..20 {
        serde_json::to_writer(&mut want, &rec(i)).unwrap();
        want.push(b'\n');
    }
    let mut buf = want.clone();
    assert!(write_retrying(
        &mut disk,
        &mut buf,
        &h,
        Path::new("t"),
        None
    ));
    assert!(buf.is_empty());
    // Every byte once, in order: no record lost, none duplicated or torn.
    assert_eq!(disk.got, want);
    assert!(h.errors.get() >= 3);
    assert!(!h.failing(), "healthy again after the last write succeeded");
}

#[test]
fn at_stop_a_disk_that_never_recovers_is_given_up_on() {
    let h = health();
    let mut disk = Flaky {
        fail_first: usize::MAX,
        calls: 0,
        got: Vec::new(),
    };
    let mut buf = b"record\n".to_vec();
    let give_up = std::time::Instant::now() + Duration::from_millis(50);
    assert!(!write_retrying(
        &mut disk,
        &mut buf,
        &h,
        Path::new("t"),
        Some(give_up)
    ));
    assert!(h.failing());
}

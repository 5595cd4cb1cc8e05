//! A worker for unit tests: it starts nothing, answers as if it did, and
//! can be told to hang (a stopped worker), where its instances serve (a
//! socket of the test's) and how they ended.

use super::{BoxFuture, WorkerApi, WorkerError};
use sandbox_runtime::api::{
    Capacity, CreateInstance, ExitInfo, InstanceInfo, InstanceState, MemoryLimit,
};
use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A worker that starts nothing but answers as if it did. With `hang`, it
/// accepts and never answers (a stopped or black-holed worker).
#[derive(Default)]
pub(crate) struct Fake {
    pub hang: AtomicBool,
    /// Where its instances serve (default: a port nothing listens on).
    pub address: StdMutex<Option<String>>,
    /// How its instances have ended, as it reports them.
    pub exit: StdMutex<Option<ExitInfo>>,
    pub created: StdMutex<Vec<String>>,
    pub released: StdMutex<Vec<String>>,
}

impl Fake {
    fn info(&self, id: &str) -> InstanceInfo {
        let exit = self.exit.lock().unwrap().clone();
        InstanceInfo {
            instance_id: id.into(),
            function: "f".into(),
            address: self
                .address
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_else(|| "127.0.0.1:9".into()),
            memory_mb: 128,
            memory_limit: MemoryLimit::None,
            state: if exit.is_some() {
                InstanceState::Exited
            } else {
                InstanceState::Running
            },
            pid: None,
            created_unix: 0,
            exit,
            stderr_tail: String::new(),
            egress: Vec::new(),
            uid: None,
        }
    }
}

impl WorkerApi for Arc<Fake> {
    fn capacity(&self) -> BoxFuture<'_, Result<Capacity, WorkerError>> {
        Box::pin(async {
            Ok(Capacity {
                memory_mb_total: 4096,
                memory_mb_used: 0,
                instances: 0,
                memory_limit: MemoryLimit::None,
            })
        })
    }
    fn create<'a>(
        &'a self,
        req: &'a CreateInstance,
    ) -> BoxFuture<'a, Result<InstanceInfo, WorkerError>> {
        Box::pin(async move {
            self.created.lock().unwrap().push(req.instance_id.clone());
            if self.hang.load(Ordering::Acquire) {
                std::future::pending::<()>().await;
            }
            Ok(self.info(&req.instance_id))
        })
    }
    fn release<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<InstanceInfo, WorkerError>> {
        Box::pin(async move {
            self.released.lock().unwrap().push(id.to_string());
            Ok(self.info(id))
        })
    }
    fn instance<'a>(
        &'a self,
        id: &'a str,
        _wait_exit: Duration,
    ) -> BoxFuture<'a, Result<InstanceInfo, WorkerError>> {
        Box::pin(async move {
            if self.hang.load(Ordering::Acquire) {
                std::future::pending::<()>().await;
            }
            Ok(self.info(id))
        })
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<InstanceInfo>, WorkerError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn log<'a>(
        &'a self,
        _id: &'a str,
        _from: Option<u64>,
    ) -> BoxFuture<'a, Result<(u64, bytes::Bytes), WorkerError>> {
        Box::pin(async { Ok((0, bytes::Bytes::new())) })
    }
}

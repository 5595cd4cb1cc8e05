//! The task record: everything about one accepted asynchronous invocation
//! that must outlive the process which accepted it. Plain data, serialized
//! as JSON into the store; the payload is kept beside it, written once.

use serde::{Deserialize, Serialize};

/// A task's state, named as Function Compute's task API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    /// Waiting for its first attempt or for a retry.
    Enqueued,
    /// An attempt holds its lease.
    Running,
    Succeeded,
    /// Still a function error after its last retry.
    Failed,
    /// Not done within the function's `async_max_event_age_s`.
    Expired,
    /// Stopped through the task API.
    Stopped,
    /// Its function was removed by a reload before the task was done (FC:
    /// a task whose function is deleted becomes `Invalid`).
    Invalid,
}

impl TaskState {
    pub const ALL: [TaskState; 7] = [
        TaskState::Enqueued,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Expired,
        TaskState::Stopped,
        TaskState::Invalid,
    ];

    /// The done states, in the order of `fngate_async_results_total`'s handles.
    pub const DONE: [TaskState; 5] = [
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Expired,
        TaskState::Stopped,
        TaskState::Invalid,
    ];

    /// Its place in [`TaskState::DONE`] (a state not done has none).
    pub fn done_index(self) -> Option<usize> {
        TaskState::DONE.iter().position(|s| *s == self)
    }

    pub fn is_done(self) -> bool {
        !matches!(self, TaskState::Enqueued | TaskState::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Enqueued => "Enqueued",
            TaskState::Running => "Running",
            TaskState::Succeeded => "Succeeded",
            TaskState::Failed => "Failed",
            TaskState::Expired => "Expired",
            TaskState::Stopped => "Stopped",
            TaskState::Invalid => "Invalid",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The `result` label of `fngate_async_results_total` (done states only).
    pub fn result_label(self) -> &'static str {
        match self {
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Expired => "expired",
            TaskState::Stopped => "stopped",
            TaskState::Invalid => "invalid",
            TaskState::Enqueued | TaskState::Running => "pending",
        }
    }

    /// The destination condition of a done state: `None` for none is sent.
    pub fn condition(self) -> Option<&'static str> {
        match self {
            TaskState::Succeeded => Some("Success"),
            TaskState::Failed => Some("RetriesExhausted"),
            TaskState::Expired => Some("EventAgeExceeded"),
            TaskState::Stopped | TaskState::Invalid | TaskState::Enqueued | TaskState::Running => {
                None
            }
        }
    }
}

/// Where the caller stood when the task was accepted (for the record and
/// the task API; its attempts run as the gateway's own calls).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerRecord {
    /// `internet` or `vpc`.
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
}

/// One step of a task's history, as the task API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub status: String,
    pub timestamp_ms: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The most events a record keeps: the first and the latest, so a long
/// series of backoffs does not grow it without bound.
pub const MAX_EVENTS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The caller's `x-fc-async-task-id`, else the request id.
    pub id: String,
    /// The accepting request's id: every attempt carries it, so a function
    /// can deduplicate a delivery it has already seen.
    pub request_id: String,
    pub function: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qualifier: Option<String>,
    /// The door it came through (`fc`, `lambda`): attempts count under it.
    pub api: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    pub caller: CallerRecord,
    pub payload_bytes: u64,
    /// Wall-clock milliseconds: the event's age survives a restart.
    pub accepted_ms: u64,
    /// Next attempt due (enqueued), or the lease's end (running).
    pub due_ms: u64,
    pub state: TaskState,
    /// Attempts started so far.
    pub attempts: u32,
    /// Retries after a function error.
    pub retries: u32,
    /// Waits after throttling or a gateway error.
    pub backoffs: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// The status the door answered (or would have) for the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub events: Vec<TaskEvent>,
}

/// Where a task is kept: task ids are scoped by function, as FC's task API
/// addresses them (neither part holds a `/`).
pub fn task_key(function: &str, id: &str) -> String {
    format!("{function}/{id}")
}

impl TaskRecord {
    pub fn key(&self) -> String {
        task_key(&self.function, &self.id)
    }

    /// This task as a new attempt's lease makes it: running, one more
    /// attempt, due again at `until` (the lease's end) if it is not done.
    /// Every store leases by this rule.
    pub fn leased(&self, now: u64, until: u64) -> TaskRecord {
        let mut t = self.clone();
        t.state = TaskState::Running;
        t.attempts += 1;
        t.due_ms = until;
        t.started_ms.get_or_insert(now);
        t.event("Running", now, format!("attempt {}", t.attempts));
        t
    }

    pub fn event(&mut self, status: &str, timestamp_ms: u64, detail: String) {
        if self.events.len() >= MAX_EVENTS {
            // Keep the first (accepted) event; drop the oldest after it.
            self.events.remove(1);
        }
        self.events.push(TaskEvent {
            status: status.to_string(),
            timestamp_ms,
            detail,
        });
    }
}

/// A caller-chosen task id, as Function Compute accepts it: starts with a
/// letter or `_`, then letters, digits, `_` or `-`, at most 128 in all.
pub fn valid_task_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_follow_function_compute_rules() {
        assert!(valid_task_id("order_42-a"));
        assert!(valid_task_id("_x"));
        assert!(valid_task_id(&"a".repeat(128)));
        for bad in ["", "1abc", "-a", "a b", "a/b", "é", &"a".repeat(129)] {
            assert!(!valid_task_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn events_are_bounded_keeping_the_first() {
        let mut r: TaskRecord = serde_json::from_str(
            r#"{"id":"t","request_id":"r","function":"f","api":"fc","caller":{"network":"internet"},
                "payload_bytes":0,"accepted_ms":1,"due_ms":1,"state":"Enqueued","attempts":0,
                "retries":0,"backoffs":0,"events":[]}"#,
        )
        .unwrap();
        for i in 0..200 {
            r.event(
                if i == 0 { "Enqueued" } else { "Retried" },
                i,
                String::new(),
            );
        }
        assert_eq!(r.events.len(), MAX_EVENTS);
        assert_eq!(r.events[0].status, "Enqueued");
        assert_eq!(r.events.last().unwrap().timestamp_ms, 199);
        let back: TaskRecord = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}

//! The pipeline's side of asynchronous invocations: the task record of an
//! accepted call, the task API, and [`Pipeline::attempt`], the one narrow
//! entry through which the dispatcher runs stages 8-9.

use super::finish::{Done, nosniff};
use super::{AttemptOutcome, Ctx, Pipeline};
use crate::api::{Api, Invocation, TaskAnswer, TaskOp};
use crate::asynchronous::now_ms;
use crate::asynchronous::store::Stop;
use crate::asynchronous::task::{CallerRecord, TaskRecord, TaskState};
use crate::auth::KeyId;
use crate::error::{InvokeError, Outcome};
use crate::functions::Function;
use crate::ingress::Origin;
use crate::scheduler::FunctionPool;
use bytes::Bytes;
use http::{HeaderValue, Response};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

impl<E: crate::execute::Execute> Pipeline<E> {
    /// The record of an asynchronous invocation accepted now.
    pub(super) fn task_record(
        &self,
        ctx: &Ctx<'_>,
        inv: &Invocation<'_>,
        pool: &crate::functions::Function,
        content_type: Option<&HeaderValue>,
        key: Option<KeyId>,
        payload_bytes: usize,
    ) -> TaskRecord {
        let now = now_ms();
        let request_id = ctx.request_id.to_str().unwrap_or_default().to_string();
        let (network, vpc_id) = ctx.settings.network_names(&ctx.origin);
        let caller = CallerRecord {
            network: network.into(),
            vpc_id,
            ip: match ctx.origin {
                Origin::Client(c) => Some(c.ip.to_string()),
                Origin::Internal => None,
            },
            access_key_id: ctx.settings.key_id(key),
        };
        let mut t = TaskRecord {
            id: inv
                .task_id
                .map_or_else(|| request_id.clone(), str::to_string),
            request_id,
            function: pool.cfg.name.to_string(),
            qualifier: inv.qualifier.as_deref().map(str::to_string),
            api: ctx.dialect.api().as_str().into(),
            content_type: content_type
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            caller,
            payload_bytes: payload_bytes as u64,
            accepted_ms: now,
            due_ms: now,
            state: TaskState::Enqueued,
            attempts: 0,
            retries: 0,
            backoffs: 0,
            started_ms: None,
            ended_ms: None,
            instance_id: None,
            status: None,
            error: None,
            events: Vec::new(),
        };
        t.event("Enqueued", now, String::new());
        t
    }

    /// A task API call, past stages 1-4: answered from the store.
    pub(super) async fn task_api(
        &self,
        ctx: &Ctx<'_>,
        mut done: Done<'_>,
        op: &TaskOp<'_>,
        parts: &http::request::Parts,
        body: Option<Incoming>,
    ) -> Response<crate::api::ResponseBody> {
        let store = &self.asynchronous.store;
        let function = done.function;
        let reply = ctx.reply(done.pool, None);
        let not_found = |id: &str| InvokeError::AsyncTaskNotFound { id: id.to_string() };
        let get = |id: &str| {
            let f = store.get(function, id);
            async move { f.await.map_err(InvokeError::from) }
        };
        let answered = match op {
            TaskOp::Get { id } => match get(id).await {
                Ok(Some((task, payload))) => Ok(ctx.dialect.task(
                    &TaskAnswer::One {
                        task: &task,
                        payload: payload.as_deref(),
                    },
                    &reply,
                )),
                Ok(None) => Err(not_found(id)),
                Err(e) => Err(e),
            },
            TaskOp::List { state, limit, .. } => match store.list(function, *state, *limit).await {
                Ok(tasks) => Ok(ctx.dialect.task(&TaskAnswer::List(&tasks), &reply)),
                Err(e) => Err(e.into()),
            },
            TaskOp::Stop { id } => match store.stop(function, id, now_ms()).await {
                Ok(Stop::NotFound) => Err(not_found(id)),
                Ok(Stop::Done(t)) => Err(InvokeError::InvalidArgument {
                    message: format!("task '{id}' is already {}", t.state.as_str()).into(),
                }),
                Ok(Stop::Stopped { was_running, .. }) => {
                    if was_running {
                        self.asynchronous.kill(function, id);
                    }
                    if let (Some(pool), Some(i)) = (done.pool, TaskState::Stopped.done_index()) {
                        pool.metrics.async_results[i].inc();
                    }
                    Ok(ctx.dialect.task(&TaskAnswer::Stopped, &reply))
                }
                Err(e) => Err(e.into()),
            },
        };
        let mut resp = match answered {
            Ok(r) => nosniff(r),
            Err(e) => {
                if let Some(pool) = done.pool {
                    self.log_failure(ctx, pool, &e);
                }
                done.outcome = e.outcome();
                self.error(ctx, &done, &e)
            }
        };
        if let Some(body) = body {
            self.unread(body, parts, &mut resp);
        }
        self.finish(ctx, done, resp).await
    }

    /// One attempt of an asynchronous task: the function's concurrency
    /// limit (not its rates: those admitted the call when it was accepted,
    /// as FC and Lambda apply them), then stages 8-9, then
    /// [`Pipeline::account`] like any invocation, as the gateway's own call (`internal` network, no
    /// traffic: no client reads its answer), under the task's request id
    /// and the door it came through. `stop` ends it early (the task was
    /// stopped): the instance running it is reclaimed.
    pub async fn attempt(
        &self,
        pool: &Arc<FunctionPool>,
        task: &TaskRecord,
        payload: Bytes,
        stop: &CancellationToken,
    ) -> AttemptOutcome {
        let api = (Api::ALL.into_iter())
            .find(|a| a.as_str() == task.api)
            .unwrap_or(Api::Fc);
        let ctx = Ctx {
            dialect: self.dialects.get(api),
            settings: self.settings(),
            request_id: HeaderValue::from_str(&task.request_id)
                .unwrap_or_else(|_| self.ids.request_id()),
            origin: Origin::Internal,
            started: Instant::now(),
            wall: SystemTime::now(),
        };
        let (result, legs) = self.attempt_call(&ctx, pool, task, payload, stop).await;
        // A cloud function's failure is a function error (retried as one);
        // its error object is what a destination gets.
        let mut failed_body = None;
        let result = match result {
            Ok((answer, ran)) if answer.failed => {
                failed_body = Some(answer.body);
                Err((InvokeError::FunctionFailed, Some(ran)))
            }
            r => r,
        };
        let (out, outcome, ran) = match result {
            Ok((answer, ran)) => {
                let status = ctx.dialect.success_status(answer.status);
                let out = AttemptOutcome {
                    error: None,
                    status: status.as_u16(),
                    body: answer.body,
                    function_error: None,
                    instance_id: ran.instance_id.to_str().ok().map(str::to_string),
                };
                (out, Outcome::Success, Some(ran))
            }
            Err((e, ran)) => {
                let outcome = e.outcome();
                let out = self.attempt_failed(&ctx, pool, e, ran.as_ref(), failed_body);
                (out, outcome, ran)
            }
        };
        let inv = self.task_invocation(task);
        let mut done = Done::new(pool, &inv, outcome, 0, None);
        done.ran = ran;
        done.legs = legs;
        done.throttle = out.error.as_ref().and_then(InvokeError::throttle);
        let status = http::StatusCode::from_u16(out.status).unwrap_or_default();
        let record = self.account(&ctx, api, done, status, 0);
        self.log_usage(record).await;
        out
    }

    /// Stages 8-9 of an attempt: the function's concurrency permit, then
    /// the call, either ended early by `stop`.
    async fn attempt_call(
        &self,
        ctx: &Ctx<'_>,
        pool: &Arc<FunctionPool>,
        task: &TaskRecord,
        payload: Bytes,
        stop: &CancellationToken,
    ) -> (
        Result<(crate::api::FunctionAnswer, crate::api::Ran), crate::execute::Failed>,
        Vec<crate::metering::Leg>,
    ) {
        let permit = tokio::select! {
            biased;
            p = pool.limits.admit() => p.map_err(InvokeError::Throttled),
            _ = stop.cancelled() => Err(InvokeError::AsyncTaskStopped),
        };
        let permit = match permit {
            Ok(p) => p,
            Err(e) => return (Err((e, None)), Vec::new()),
        };
        let _admitted = super::stages::Admitted::new(pool, permit);
        let content_type =
            (task.content_type.as_deref()).and_then(|c| HeaderValue::from_str(c).ok());
        let mut call = crate::execute::Call::event(content_type.as_ref());
        call.stop = Some(stop);
        tokio::select! {
            // The call sees the stop first when it holds an instance (and
            // reclaims it); before that, this branch ends it.
            biased;
            r = self.execute(ctx, pool, &call, payload) => r,
            _ = stop.cancelled() => (Err((InvokeError::AsyncTaskStopped, None)), Vec::new()),
        }
    }

    /// What a failed attempt reports: its status at its door and, for a
    /// destination, the function's error body (or the door's error).
    fn attempt_failed(
        &self,
        ctx: &Ctx<'_>,
        pool: &Function,
        e: InvokeError,
        ran: Option<&crate::api::Ran>,
        failed_body: Option<Bytes>,
    ) -> AttemptOutcome {
        let status = ctx.dialect.status(&e);
        // The error's body only matters to a destination.
        let body = match (failed_body, &pool.cfg.asynchronous.on_failure) {
            (Some(b), _) => b,
            (None, Some(_)) => (ctx.dialect.error(&e, &ctx.reply(Some(pool), ran)))
                .into_body()
                .into_bytes(),
            (None, None) => Bytes::new(),
        };
        AttemptOutcome {
            status: status.as_u16(),
            body,
            function_error: (e.outcome() == Outcome::FunctionError)
                .then_some(crate::asynchronous::destination::UNHANDLED),
            instance_id: ran
                .and_then(|r| r.instance_id.to_str().ok())
                .map(str::to_string),
            error: Some(e),
        }
    }

    /// The task's invocation as its record names it (function, qualifier),
    /// for the account.
    fn task_invocation<'t>(&self, task: &'t TaskRecord) -> Invocation<'t> {
        let mut inv = Invocation::event(&task.function);
        inv.qualifier = task.qualifier.as_deref().map(std::borrow::Cow::Borrowed);
        inv
    }
}

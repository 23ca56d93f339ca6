//! The serve loop: a permit is taken *before* each pull, so the worker never holds a job it
//! cannot start; each job runs on a task tracker with a progress-ack ticker; on shutdown the
//! loop stops pulling, in-flight jobs get until the deadline, and unfinished ones are handed back.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::{FutureExt, StreamExt};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::ack::{AckAction, decide};
use crate::jobs::{Delivery, Handler, HandlerError};

pub struct ServeContext {
    pub handler: Arc<Handler>,
    pub js: jetstream::Context,
    pub consumer: PullConsumer,
    pub concurrency: usize,
    pub ack_wait: Duration,
    pub max_deliver: i64,
    pub shutdown_grace: Duration,
    pub outbox_wake: Arc<Notify>,
}

/// Pulls and runs jobs until `shutdown` is cancelled; returns when in-flight jobs are done or
/// handed back.
pub async fn run(ctx: ServeContext, shutdown: CancellationToken) {
    let ctx = Arc::new(ctx);
    let permits = Arc::new(Semaphore::new(ctx.concurrency));
    let tracker = TaskTracker::new();
    // Cancelled when the shutdown deadline passes: unfinished jobs are NAKed.
    let deadline = CancellationToken::new();
    let mut pull_failures = 0u32;
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        // One message per pull, waiting up to 5 s for one to arrive.
        let batch = tokio::select! {
            _ = shutdown.cancelled() => break,
            b = ctx.consumer.batch().max_messages(1).expires(Duration::from_secs(5)).messages() => b,
        };
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                pull_failures += 1;
                metrics::counter!("gitlab_worker_pull_errors_total").increment(1);
                tracing::warn!("pulling jobs failed: {e}; retrying");
                // Back off while NATS is away; the client reconnects by itself.
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(250 * u64::from(pull_failures.min(20)))) => {}
                }
                continue;
            }
        };
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            n = batch.next() => n,
        };
        match next {
            // No job within the pull's expiry: pull again (the permit is released and retaken).
            None => {}
            Some(Err(e)) => {
                pull_failures += 1;
                metrics::counter!("gitlab_worker_pull_errors_total").increment(1);
                tracing::debug!("pull: {e}");
            }
            Some(Ok(msg)) => {
                pull_failures = 0;
                let ctx = ctx.clone();
                let deadline = deadline.clone();
                tracker.spawn(async move {
                    process(&ctx, msg, deadline).await;
                    drop(permit);
                });
            }
        }
    }
    tracker.close();
    let in_flight = tracker.len();
    if in_flight > 0 {
        tracing::info!(
            in_flight,
            grace_s = ctx.shutdown_grace.as_secs(),
            "shutting down: no new jobs; waiting for the jobs in flight"
        );
    }
    if tokio::time::timeout(ctx.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = tracker.len(),
            "shutdown deadline passed: unfinished jobs are handed back to NATS"
        );
        deadline.cancel();
        tracker.wait().await;
    }
}

async fn process(ctx: &ServeContext, msg: jetstream::Message, deadline: CancellationToken) {
    let (stream_seq, delivered) = match msg.info() {
        Ok(i) => (i.stream_sequence, i.delivered),
        Err(e) => {
            tracing::warn!("a message without JetStream metadata: {e}");
            return;
        }
    };
    let subject = msg.subject.to_string();
    // The span is attached with `instrument`, never entered across an await: a guard held
    // across an await leaves the span on one worker thread's stack after the task moves on,
    // and a later span created there panics in tracing's registry.
    let span = tracing::info_span!("delivery", %subject, stream_seq, delivered);
    deliver(ctx, subject, stream_seq, delivered, msg, deadline)
        .instrument(span)
        .await;
}

async fn deliver(
    ctx: &ServeContext,
    subject: String,
    stream_seq: u64,
    delivered: i64,
    msg: jetstream::Message,
    deadline: CancellationToken,
) {
    let payload = msg.payload.clone();
    let headers = msg.headers.clone();
    let (_, acker) = msg.split();
    let acker = Arc::new(acker);
    let attempt = u32::try_from(delivered).unwrap_or(u32::MAX);
    let last_attempt = ctx.max_deliver > 0 && delivered >= ctx.max_deliver;
    metrics::counter!("gitlab_worker_deliveries_total", "redelivered" => if delivered > 1 { "true" } else { "false" }).increment(1);

    // Progress acks keep a long job from being redelivered while it runs; the guard stops them
    // however this function is left, so a job can never be held in flight forever.
    let ticker_stop = CancellationToken::new();
    let _stop_ticker = ticker_stop.clone().drop_guard();
    let ticker = {
        let acker = acker.clone();
        let stop = ticker_stop.clone();
        let period = (ctx.ack_wait / 3).max(Duration::from_millis(200));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {
                        if let Err(e) = acker.ack_with(AckKind::Progress).await {
                            tracing::debug!("progress ack: {e}");
                        }
                    }
                }
            }
        })
    };
    metrics::gauge!("gitlab_worker_jobs_in_flight").increment(1.0);
    let started = Instant::now();
    let delivery = Delivery {
        attempt,
        last_attempt,
        stream_seq,
    };
    // A panic in a job is a failed delivery like a store failure: retried after a delay and
    // dead-lettered on the last delivery, instead of a task that dies holding the message.
    let handling = AssertUnwindSafe(ctx.handler.handle(&payload, delivery)).catch_unwind();
    let outcome = tokio::select! {
        o = handling => Some(o.unwrap_or_else(|panic| Err(HandlerError::Panicked(panic_message(panic.as_ref()))))),
        _ = deadline.cancelled() => None,
    };
    ticker_stop.cancel();
    let _ = ticker.await;
    metrics::gauge!("gitlab_worker_jobs_in_flight").decrement(1.0);
    if let Some(Err(HandlerError::Panicked(why))) = &outcome {
        tracing::error!("the job's handler panicked: {why}");
        // Nothing renews the lease any more; give it up so the retry need not wait for it.
        release_lease(ctx, &payload).await;
    }
    let Some(outcome) = outcome else {
        // Shutdown deadline: hand the job back at once. Whatever the handler committed stays;
        // the redelivery resumes from it, and the job's lease is given up so it may.
        release_lease(ctx, &payload).await;
        if let Err(e) = acker.ack_with(AckKind::Nak(None)).await {
            tracing::warn!("could not hand the job back ({e}); NATS redelivers it after ack_wait");
        }
        metrics::counter!("gitlab_worker_jobs_total", "kind" => "unknown", "outcome" => "interrupted").increment(1);
        return;
    };
    if let Ok(h) = &outcome {
        metrics::counter!("gitlab_worker_jobs_total", "kind" => h.kind.clone(), "outcome" => if h.repeated { "repeated".to_string() } else { crate::jobs::handler::status_name(h.status).to_string() }).increment(1);
        metrics::histogram!("gitlab_worker_job_duration_seconds", "kind" => h.kind.clone())
            .record(started.elapsed().as_secs_f64());
        // Results were committed to the outbox: publish them now.
        ctx.outbox_wake.notify_one();
    }
    let action = decide(&outcome, last_attempt);
    let ack_result = match &action {
        AckAction::Ack => acker.double_ack().await,
        AckAction::Nak(delay) => acker.ack_with(AckKind::Nak(*delay)).await,
        AckAction::DeadLetter { code, message } => {
            let (connector, kind) = match &outcome {
                Ok(h) => (h.connector.clone(), h.kind.clone()),
                Err(_) => ("unknown".into(), "invalid".into()),
            };
            let dlq_subject = ctx.handler.subjects.dlq(&connector, &kind);
            let mut publish = jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .message_id(format!("dlq:{stream_seq}"))
                .header("Gitlab-Connector-Error-Code", code.as_str())
                .header(
                    "Gitlab-Connector-Error",
                    message.replace(['\r', '\n'], " ").as_str(),
                )
                .header("Gitlab-Connector-Original-Subject", subject.as_str())
                .header(
                    "Gitlab-Connector-Stream-Seq",
                    stream_seq.to_string().as_str(),
                )
                .header(
                    "Gitlab-Connector-Deliveries",
                    delivered.to_string().as_str(),
                );
            if let Some(id) = headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")) {
                publish = publish.header("Gitlab-Connector-Original-Msg-Id", id.as_str());
            }
            // The copy must be safely stored before the job leaves the work queue.
            let copied = match ctx.js.send_publish(dlq_subject.clone(), publish).await {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match copied {
                Ok(()) => {
                    metrics::counter!("gitlab_worker_dead_lettered_total", "code" => code.clone())
                        .increment(1);
                    tracing::warn!(%dlq_subject, %code, "job dead-lettered: {message}");
                    acker.double_ack_with(AckKind::Term).await
                }
                Err(e) => {
                    tracing::warn!(
                        "could not copy the job to the DLQ ({e}); it is handed back and tried again"
                    );
                    acker
                        .ack_with(AckKind::Nak(Some(super::ack::STORE_RETRY)))
                        .await
                }
            }
        }
    };
    if let Err(e) = ack_result {
        // The job's state is committed; a redelivery finds it and answers from the store.
        tracing::warn!(
            ?action,
            "the ack did not reach NATS ({e}); a redelivery will be answered from the stored result"
        );
    }
}

/// Gives up the job's lease so its next delivery may start at once; if that fails the lease
/// simply runs out.
async fn release_lease(ctx: &ServeContext, payload: &[u8]) {
    if let Ok(job) = crate::jobs::parse_job(payload, chrono::Utc::now())
        && let Err(e) = ctx.handler.store.release_lease(&job.job_id).await
    {
        tracing::warn!(
            "could not release the job's lease ({e}); it is taken over when the lease runs out"
        );
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Publishes `gitlab_worker_consumer_pending` every few seconds until `stop`.
pub async fn watch_consumer(mut consumer: PullConsumer, stop: CancellationToken) {
    loop {
        match consumer.info().await {
            Ok(info) => {
                metrics::gauge!("gitlab_worker_consumer_pending").set(info.num_pending as f64);
                metrics::gauge!("gitlab_worker_consumer_ack_pending")
                    .set(info.num_ack_pending as f64);
            }
            Err(e) => tracing::debug!("consumer info: {e}"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

//! The serve loop: a permit is taken *before* each message a pull asks for, so the worker never
//! holds a job it cannot start; each job runs on a task tracker with a progress-ack ticker; on shutdown the
//! loop stops pulling, in-flight jobs get until the deadline, and unfinished ones are handed back.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::{FutureExt, StreamExt};
use gitlab_connector::client::Precedence;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::Work;
use super::ack;
use super::progress::ProgressTicker;
use crate::jobs::{Delivery, Handler, HandlerError};

pub struct ServeContext {
    pub handler: Arc<Handler>,
    pub js: jetstream::Context,
    pub ack_wait: Duration,
    pub max_deliver: i64,
    pub shutdown_grace: Duration,
    /// Provisioning jobs run as foreground work, syncs as background work that yields to them.
    pub precedence: Arc<Precedence>,
}

/// One kind of work: its consumer and how many of its jobs run at once.
pub struct Pool {
    pub work: Work,
    pub consumer: PullConsumer,
    pub concurrency: usize,
}

/// Pulls and runs jobs from every pool until `shutdown` is cancelled; returns when in-flight
/// jobs are done or handed back.
pub async fn run(ctx: ServeContext, pools: Vec<Pool>, shutdown: CancellationToken) {
    let ctx = Arc::new(ctx);
    let tracker = TaskTracker::new();
    // Cancelled when the shutdown deadline passes: unfinished jobs are NAKed.
    let deadline = CancellationToken::new();
    let loops: Vec<_> = pools
        .into_iter()
        .map(|pool| {
            let (ctx, tracker, deadline, shutdown) = (
                ctx.clone(),
                tracker.clone(),
                deadline.clone(),
                shutdown.clone(),
            );
            let span = tracing::info_span!("pool", work = pool.work.as_str());
            tokio::spawn(pull_loop(ctx, pool, tracker, deadline, shutdown).instrument(span))
        })
        .collect();
    for l in loops {
        let _ = l.await;
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

/// The most messages one pull asks for. A pull is a request to NATS with an inbox of its own,
/// so under load one pull serves several jobs instead of one; each message asked for has a
/// permit taken for it first, so the worker still never holds a job it cannot start.
const MAX_PULL: usize = 32;

/// How long a pull waits for messages. Short, so the permits a pull holds for messages that
/// have not come are back soon, and a shutdown has little left to hand back.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// One pool's loop: permits first (one at least, as many as are free up to [`MAX_PULL`]), then
/// one pull of that many messages, each run as it arrives.
async fn pull_loop(
    ctx: Arc<ServeContext>,
    pool: Pool,
    tracker: TaskTracker,
    deadline: CancellationToken,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(pool.concurrency));
    let mut pull_failures = 0u32;
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let mut reserved = vec![first];
        while reserved.len() < MAX_PULL {
            match permits.clone().try_acquire_owned() {
                Ok(p) => reserved.push(p),
                Err(_) => break,
            }
        }
        let batch = tokio::select! {
            _ = shutdown.cancelled() => break,
            b = pool.consumer.batch().max_messages(reserved.len()).expires(PULL_EXPIRES).messages() => b,
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
        // Messages as they arrive, until the pull has them all or expires.
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => {
                    hand_back_rest(batch).await;
                    return;
                }
                n = batch.next() => n,
            };
            match next {
                None => break,
                Some(Err(e)) => {
                    pull_failures += 1;
                    metrics::counter!("gitlab_worker_pull_errors_total").increment(1);
                    tracing::debug!("pull: {e}");
                    break;
                }
                Some(Ok(msg)) => {
                    pull_failures = 0;
                    let Some(permit) = reserved.pop() else {
                        // NATS sent more than was asked for: hand it back untouched.
                        let _ = msg.ack_with(jetstream::AckKind::Nak(None)).await;
                        continue;
                    };
                    let ctx = ctx.clone();
                    let deadline = deadline.clone();
                    let work = pool.work;
                    tracker.spawn(async move {
                        // Boxed: a job's future is large, and the two ways of running it
                        // would otherwise each hold a copy in this task's (stack-moved) state.
                        let job = Box::pin(process(&ctx, msg, deadline));
                        match work {
                            Work::Provision => ctx.precedence.foreground(job).await,
                            Work::Sync => ctx.precedence.background(job).await,
                        }
                        drop(permit);
                    });
                }
            }
        }
    }
}

/// At shutdown, the messages a pull still brings (it lasts at most [`PULL_EXPIRES`]) go back to
/// NATS at once rather than waiting out `ack_wait` in a closed inbox.
async fn hand_back_rest(
    mut batch: impl futures::Stream<Item = Result<jetstream::Message, impl std::fmt::Display>> + Unpin,
) {
    let until = tokio::time::Instant::now() + PULL_EXPIRES;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(until, batch.next()).await {
        let _ = msg.ack_with(jetstream::AckKind::Nak(None)).await;
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
    metrics::counter!("gitlab_worker_deliveries_total", "redelivered" => if delivered > 1 { "true" } else { "false" }).increment(1);

    let ticker = ProgressTicker::start(acker.clone(), ctx.ack_wait);
    metrics::gauge!("gitlab_worker_jobs_in_flight").increment(1.0);
    let started = Instant::now();
    let delivery = Delivery {
        attempt,
        attempt_budget: u32::try_from(ctx.max_deliver).unwrap_or(0),
        deferrals: 0,
        stream_seq,
        subject: Some(subject.clone()),
    };
    // Before the store is read its deferrals are unknown: a store failure counts every
    // delivery as an attempt.
    let last_attempt = delivery.last_attempt();
    // A panic in a job is a failed delivery like a store failure: retried after a delay and
    // dead-lettered on the last delivery, instead of a task that dies holding the message.
    let handling = AssertUnwindSafe(ctx.handler.handle(&payload, delivery)).catch_unwind();
    let outcome = tokio::select! {
        o = handling => Some(o.unwrap_or_else(|panic| Err(HandlerError::Panicked(panic_message(panic.as_ref()))))),
        _ = deadline.cancelled() => None,
    };
    ticker.stop().await;
    metrics::gauge!("gitlab_worker_jobs_in_flight").decrement(1.0);
    let Some(outcome) = outcome else {
        ack::hand_back(&ctx.handler.store, &acker, &payload).await;
        metrics::counter!("gitlab_worker_jobs_total", "kind" => "unknown", "outcome" => "interrupted").increment(1);
        return;
    };
    match &outcome {
        Err(HandlerError::Panicked(why)) => {
            tracing::error!("the job's handler panicked: {why}");
            // Nothing renews the lease any more; give it up so the retry need not wait for it.
            ack::release_lease(&ctx.handler.store, &payload).await;
        }
        Err(HandlerError::Store(_)) => {}
        Ok(h) => {
            let outcome_label = if h.repeated {
                "repeated"
            } else {
                h.status.as_str()
            };
            metrics::counter!("gitlab_worker_jobs_total", "kind" => h.kind.clone(), "outcome" => outcome_label).increment(1);
            metrics::histogram!("gitlab_worker_job_duration_seconds", "kind" => h.kind.clone())
                .record(started.elapsed().as_secs_f64());
        }
    }
    let action = ack::decide(&outcome, last_attempt);
    let original_msg_id = headers
        .as_ref()
        .and_then(|h| h.get("Nats-Msg-Id"))
        .map(|v| v.as_str().to_string());
    let facts = ack::DeliveryFacts {
        subject: &subject,
        stream_seq,
        delivered,
        payload: &payload,
        original_msg_id: original_msg_id.as_deref(),
    };
    ack::apply(
        &ctx.js,
        &ctx.handler.subjects,
        &acker,
        &action,
        &outcome,
        &facts,
    )
    .await;
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Publishes `gitlab_worker_consumer_pending{work}` every few seconds until `stop`.
pub async fn watch_consumer(work: Work, mut consumer: PullConsumer, stop: CancellationToken) {
    loop {
        match consumer.info().await {
            Ok(info) => {
                metrics::gauge!("gitlab_worker_consumer_pending", "work" => work.as_str())
                    .set(info.num_pending as f64);
                metrics::gauge!("gitlab_worker_consumer_ack_pending", "work" => work.as_str())
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

//! Provisioning before syncs. A grant is an access request someone is waiting on; a sync is a
//! crawl nobody watches request by request. A crawl keeps 16 requests in flight, and GitLab,
//! the network and this process serve them in arrival order, so a grant's few requests would
//! queue behind a sync's pages. While foreground work (provisioning) runs in the process,
//! background work (syncs) therefore goes one unit at a time — one GitLab request, one batch
//! of snapshot rows — across all of it. After each unit of work on this machine (a statement
//! of rows, a piece of snapshot encoding) it leaves the machine to the foreground for
//! [`PAUSE_PER_UNIT`] times as long as the unit took (so it takes about a fifth of what it
//! could: a sync's rows written back to back keep a database backend busy, and a grant's
//! statements queue behind them); after a GitLab request the pause is the same but at most
//! [`MAX_REQUEST_PAUSE`] ([`request_turn`]). CPU-bound work on a thread of its own (encoding a
//! snapshot) uses one thread and is paced the same way ([`Pacer`]). It takes its full width
//! back once the foreground has been quiet for [`QUIET`].
//!
//! Work is marked by the task it runs in ([`Precedence::foreground`],
//! [`Precedence::background`]); code on the way ([`turn`]) needs no handle. Work in neither
//! (a command-line sync, the JIT scheduler) is never held back.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long after the last foreground work ended background work still goes one unit at a
/// time: jobs arriving back to back leave short gaps that are not a quiet moment.
pub const QUIET: Duration = Duration::from_millis(250);

/// While the foreground is busy, the pause after a unit of background work, in multiples of
/// the unit's own time.
pub const PAUSE_PER_UNIT: u32 = 4;

/// The longest pause after one unit (a unit that took very long does not hold background work
/// back for minutes).
pub const MAX_PAUSE: Duration = Duration::from_secs(1);

/// The longest pause after a GitLab request: its time is mostly GitLab's and the network's,
/// and against a real GitLab (hundreds of milliseconds a request) a pause four times as long
/// would make a sync far slower for nothing; a short pause still keeps a sync's requests from
/// following each other back to back.
pub const MAX_REQUEST_PAUSE: Duration = Duration::from_millis(20);

tokio::task_local! {
    static BACKGROUND: Arc<Precedence>;
}

/// Who goes first in one process. Shared by the foreground and background work of a worker.
#[derive(Debug)]
pub struct Precedence {
    /// Foreground work running now.
    running: AtomicUsize,
    /// When the last foreground work ended, in microseconds since `epoch`.
    last_ended_us: AtomicU64,
    epoch: Instant,
    /// The one unit of background work allowed while the foreground is busy.
    narrow: Arc<Semaphore>,
    /// When the next unit may start while the foreground is busy (microseconds since `epoch`).
    next_unit_us: AtomicU64,
}

impl Default for Precedence {
    fn default() -> Self {
        Self {
            running: AtomicUsize::new(0),
            last_ended_us: AtomicU64::new(0),
            epoch: Instant::now(),
            narrow: Arc::new(Semaphore::new(1)),
            next_unit_us: AtomicU64::new(0),
        }
    }
}

/// Counts foreground work from creation to drop.
struct Running<'a>(&'a Precedence);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let p = self.0;
        p.last_ended_us.store(p.now_us(), Ordering::Relaxed);
        p.running.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Precedence {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Runs `f` as foreground work: while it runs (and [`QUIET`] after), background work goes
    /// one unit at a time.
    pub async fn foreground<F: Future>(&self, f: F) -> F::Output {
        self.running.fetch_add(1, Ordering::Relaxed);
        let _running = Running(self);
        f.await
    }

    /// Runs `f` as background work: the units [`turn`] guards in it yield to foreground work.
    pub async fn background<F: Future>(self: &Arc<Self>, f: F) -> F::Output {
        BACKGROUND.scope(self.clone(), f).await
    }

    /// Whether foreground work runs now or ended less than [`QUIET`] ago.
    pub fn busy(&self) -> bool {
        if self.running.load(Ordering::Relaxed) > 0 {
            return true;
        }
        let ended = self.last_ended_us.load(Ordering::Relaxed);
        ended != 0 && self.now_us().saturating_sub(ended) < QUIET.as_micros() as u64
    }

    /// Units of background work waiting for their turn or running one (0 or 1 running).
    #[cfg(test)]
    fn narrowed(&self) -> bool {
        self.narrow.available_permits() == 0
    }
}

/// Whether the current task runs background work and the foreground is busy now.
pub fn yielding() -> bool {
    BACKGROUND.try_with(|p| p.busy()).unwrap_or(false)
}

/// The pause after a unit of background work that took `took`, at most `cap`.
fn pause_after(took: Duration, cap: Duration) -> Duration {
    took.saturating_mul(PAUSE_PER_UNIT).min(cap)
}

/// Paces CPU-bound background work on a thread of its own, where there is no task to take
/// turns in: after each piece, while the foreground is busy, the thread sleeps
/// [`PAUSE_PER_UNIT`] times as long as the piece took.
#[derive(Debug, Clone)]
pub struct Pacer(Arc<Precedence>);

impl Pacer {
    /// The pacer of the current task's background work; `None` outside background work.
    pub fn current() -> Option<Self> {
        BACKGROUND.try_with(|p| Pacer(p.clone())).ok()
    }

    /// Whether the foreground is busy now.
    pub fn busy(&self) -> bool {
        self.0.busy()
    }

    /// After a piece of work that took `took` (blocks the calling thread).
    pub fn after(&self, took: Duration) {
        if self.0.busy() {
            std::thread::sleep(pause_after(took, MAX_PAUSE));
        }
    }
}

/// A unit of background work's turn, held until the unit is done: dropping it sets when the
/// next unit may start.
#[derive(Debug)]
pub struct Turn {
    precedence: Arc<Precedence>,
    started_us: u64,
    /// The longest pause after this unit.
    cap: Duration,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let p = &self.precedence;
        let now = p.now_us();
        let took = Duration::from_micros(now.saturating_sub(self.started_us));
        let pause = pause_after(took, self.cap);
        let pause = u64::try_from(pause.as_micros()).unwrap_or(u64::MAX);
        p.next_unit_us
            .store(now.saturating_add(pause), Ordering::Relaxed);
    }
}

/// Before a unit of background work done on this machine (a statement of snapshot rows): while
/// the foreground is busy, waits for the single turn and for the pause after the previous
/// unit, and returns the turn, to be held until the unit is done; the next unit then waits
/// [`PAUSE_PER_UNIT`] times as long as this one took. Returns `None` at once outside background
/// work or when the foreground is quiet.
pub async fn turn() -> Option<Turn> {
    take_turn(MAX_PAUSE).await
}

/// Before a GitLab request of background work: one at a time like [`turn`], and the pause
/// after it is at most [`MAX_REQUEST_PAUSE`].
pub async fn request_turn() -> Option<Turn> {
    take_turn(MAX_REQUEST_PAUSE).await
}

async fn take_turn(cap: Duration) -> Option<Turn> {
    let precedence = BACKGROUND.try_with(Arc::clone).ok()?;
    if !precedence.busy() {
        return None;
    }
    let permit = precedence.narrow.clone().acquire_owned().await.ok()?;
    let next = precedence.next_unit_us.load(Ordering::Relaxed);
    let now = precedence.now_us();
    if next > now && precedence.busy() {
        tokio::time::sleep(Duration::from_micros(next - now)).await;
    }
    Some(Turn {
        started_us: precedence.now_us(),
        precedence,
        cap,
        _permit: permit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn after_a_unit_of_local_work_the_next_waits_four_times_as_long() {
        let p = Precedence::new();
        let (_done, held) = tokio::sync::oneshot::channel::<()>();
        let job = {
            let p = p.clone();
            tokio::spawn(async move { p.foreground(held).await })
        };
        while !p.busy() {
            tokio::task::yield_now().await;
        }
        let unit = Duration::from_millis(30);
        let waited = p
            .background(async {
                let first = turn().await.expect("the foreground is busy");
                tokio::time::sleep(unit).await;
                drop(first);
                let ended = Instant::now();
                let _second = turn().await.expect("still busy");
                ended.elapsed()
            })
            .await;
        assert!(
            waited >= unit * PAUSE_PER_UNIT,
            "the next unit started {waited:?} after a {unit:?} one"
        );
        job.abort();
    }

    #[tokio::test]
    async fn background_units_go_one_at_a_time_only_while_the_foreground_is_busy() {
        let p = Precedence::new();
        // No foreground: background work goes at its full width.
        let both = p
            .background(async { (turn().await.is_none(), turn().await.is_none()) })
            .await;
        assert_eq!(both, (true, true));

        // While foreground work runs, one unit at a time.
        let (gate_tx, gate_rx) = tokio::sync::oneshot::channel::<()>();
        let fg = {
            let p = p.clone();
            tokio::spawn(async move { p.foreground(async { gate_rx.await.ok() }).await })
        };
        while !p.busy() {
            tokio::task::yield_now().await;
        }
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let units: Vec<_> = (0..4)
            .map(|_| {
                let (p, running, most, mut release) =
                    (p.clone(), running.clone(), most.clone(), release_rx.clone());
                tokio::spawn(async move {
                    p.background(async {
                        let t = turn().await;
                        assert!(t.is_some(), "a turn is taken while the foreground is busy");
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        let _ = release.wait_for(|r| *r).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                })
            })
            .collect();
        // The first unit holds the turn; the others wait for it.
        while !p.narrowed() || running.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        release_tx.send(true).unwrap();
        for u in units {
            u.await.unwrap();
        }
        assert_eq!(
            most.load(Ordering::SeqCst),
            1,
            "never two background units at once"
        );

        // Work outside any background scope is never held back.
        assert!(turn().await.is_none());
        gate_tx.send(()).unwrap();
        fg.await.unwrap();
        assert!(p.busy(), "still busy for QUIET after the foreground ended");
    }
}

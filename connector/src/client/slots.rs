//! Slots of a per-resource limit shared across workers, and deferring a job instead of holding
//! it while it waits for one.
//!
//! GitLab deletes at most 60 members a minute per group or project (per user). Hundreds of
//! revokes on one group queue for minutes; a worker holding each of them while it waits keeps
//! them exposed to its own failure (a killed worker costs every job it holds a delivery). So a
//! job may run in a [`Deferral`]: the slot of a member deletion is reserved on the shared
//! timeline before the write is audited and sent, and when that slot is further away than
//! the deferral's `hold`, the job stops with [`Error::SlotLater`] instead of waiting. The worker
//! hands it back to the queue until just before the slot, keeping the slot with the job: its
//! next delivery, on whichever worker, sends in the slot it reserved rather than joining the
//! end of the queue again.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

tokio::task_local! {
    static DEFERRAL: Deferral;
}

/// A reserved slot of a per-resource lane: the one request it admits may be sent from `at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The lane, as the shared budget names it (`MemberDelete.<resource key>`).
    pub lane: String,
    pub at: SystemTime,
}

impl Slot {
    /// `<unix ms>@<lane>`, as the worker's job store keeps it.
    pub fn encode(&self) -> String {
        let ms = self
            .at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        format!("{ms}@{}", self.lane)
    }

    /// `None` for anything [`Slot::encode`] did not write.
    pub fn decode(text: &str) -> Option<Self> {
        let (ms, lane) = text.split_once('@')?;
        let ms: u64 = ms.parse().ok()?;
        if lane.is_empty() || lane.len() > 200 {
            return None;
        }
        Some(Self {
            lane: lane.to_string(),
            at: UNIX_EPOCH.checked_add(Duration::from_millis(ms))?,
        })
    }

    /// How long from now until the slot (zero once it has begun).
    pub fn wait(&self) -> Duration {
        self.at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    }

    /// Still usable at `now`: not more than `interval` (the lane's spacing) late, so sending in
    /// it cannot crowd a window beyond the headroom the lane keeps.
    fn fresh(&self, now: SystemTime, interval: Duration) -> bool {
        now.duration_since(self.at)
            .map_or(true, |late| late <= interval)
    }
}

/// How a job's requests treat far-away slots: wait up to `hold`, defer beyond it.
#[derive(Clone)]
pub struct Deferral(Arc<Mutex<State>>);

struct State {
    hold: Duration,
    /// A slot reserved by an earlier delivery (or by [`reserve`] just before the request).
    held: Option<Slot>,
    /// The slot this job stopped for: set when [`Error::SlotLater`] was returned.
    ///
    /// [`Error::SlotLater`]: crate::Error::SlotLater
    deferred: Option<Slot>,
}

impl Deferral {
    pub fn new(hold: Duration, held: Option<Slot>) -> Self {
        Self(Arc::new(Mutex::new(State {
            hold,
            held,
            deferred: None,
        })))
    }

    /// Runs `f` with this deferral applying to its requests (same task only).
    pub async fn scope<F: Future>(&self, f: F) -> F::Output {
        DEFERRAL.scope(self.clone(), f).await
    }

    /// The slot the job stopped for, if it did.
    pub fn deferred(&self) -> Option<Slot> {
        self.state().deferred.clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn current() -> Option<Deferral> {
    DEFERRAL.try_with(Deferral::clone).ok()
}

/// What [`reserve`] decided.
pub(crate) enum Decision {
    /// No deferral applies (no job context, or the lane is not shared): the request reserves
    /// and waits as usual.
    Unmanaged,
    /// The job holds a slot within `hold`: the request will use it.
    Held,
    /// The slot is beyond `hold`: the job is to be handed back until it.
    Later(Slot),
}

/// Before a deferrable request: keeps a fresh held slot of `lane`, or reserves one with
/// `reserve_one`, and decides whether the request waits for it or the job is deferred.
pub(crate) async fn reserve<F, Fut>(lane: &str, interval: Duration, reserve_one: F) -> Decision
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<SystemTime, String>>,
{
    let Some(deferral) = current() else {
        return Decision::Unmanaged;
    };
    let now = SystemTime::now();
    {
        let mut state = deferral.state();
        if let Some(held) = state
            .held
            .clone()
            .filter(|s| s.lane == lane && s.fresh(now, interval))
        {
            // Back early (a redelivery that did not wait for its delay): still its slot.
            if held.at.duration_since(now).unwrap_or_default() > state.hold {
                state.deferred = Some(held.clone());
                return Decision::Later(held);
            }
            return Decision::Held;
        }
    }
    let at = match reserve_one().await {
        Ok(at) => at,
        // The shared budget is away: the request paces itself locally.
        Err(e) => {
            tracing::warn!(%lane, "the shared GitLab budget is unreachable ({e}); this request waits for its turn in the worker");
            return Decision::Unmanaged;
        }
    };
    let slot = Slot {
        lane: lane.to_string(),
        at,
    };
    let mut state = deferral.state();
    if slot.wait() <= state.hold {
        state.held = Some(slot);
        Decision::Held
    } else {
        state.held = None;
        state.deferred = Some(slot.clone());
        Decision::Later(slot)
    }
}

/// The held slot of `lane`, taken for the request about to be sent, when one is fresh.
pub(crate) fn take_held(lane: &str, interval: Duration) -> Option<SystemTime> {
    let deferral = current()?;
    let mut state = deferral.state();
    let slot = state.held.take_if(|s| s.lane == lane)?;
    slot.fresh(SystemTime::now(), interval).then_some(slot.at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_round_trips_and_anything_else_is_refused() {
        let slot = Slot {
            lane: "MemberDelete.42".into(),
            at: UNIX_EPOCH + Duration::from_millis(1_764_000_000_123),
        };
        assert_eq!(Slot::decode(&slot.encode()), Some(slot));
        for bad in ["", "@x", "12@", "x@MemberDelete.1", "-1@a", "1"] {
            assert_eq!(Slot::decode(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_near_slot_is_held_a_far_one_defers_and_a_held_one_is_used_once() {
        let interval = Duration::from_secs(1);
        let d = Deferral::new(Duration::from_secs(2), None);
        let near = SystemTime::now() + Duration::from_millis(500);
        d.scope(async {
            assert!(matches!(
                reserve("L", interval, || async { Ok(near) }).await,
                Decision::Held
            ));
            // The held slot is used by the request, once.
            assert_eq!(take_held("L", interval), Some(near));
            assert_eq!(take_held("L", interval), None);
            let far = SystemTime::now() + Duration::from_secs(30);
            assert!(matches!(
                reserve("L", interval, || async { Ok(far) }).await,
                Decision::Later(s) if s.at == far
            ));
        })
        .await;
        assert_eq!(d.deferred().map(|s| s.lane), Some("L".into()));
        // Outside a deferral nothing is managed.
        assert!(matches!(
            reserve("L", interval, || async { Ok(near) }).await,
            Decision::Unmanaged
        ));
    }

    #[tokio::test]
    async fn a_slot_kept_from_an_earlier_delivery_is_used_without_a_new_reservation() {
        let interval = Duration::from_secs(1);
        let kept = Slot {
            lane: "L".into(),
            at: SystemTime::now() + Duration::from_millis(300),
        };
        let d = Deferral::new(Duration::from_secs(2), Some(kept.clone()));
        d.scope(async {
            let decided = reserve("L", interval, || async {
                panic!("a held slot must not reserve again")
            })
            .await;
            assert!(matches!(decided, Decision::Held));
            assert_eq!(take_held("L", interval), Some(kept.at));
        })
        .await;
        // Back long before the slot it kept: deferred again to the same slot.
        let ahead = Slot {
            lane: "L".into(),
            at: SystemTime::now() + Duration::from_secs(20),
        };
        let d = Deferral::new(Duration::from_secs(2), Some(ahead.clone()));
        d.scope(async {
            let decided = reserve("L", interval, || async {
                panic!("a held slot must not reserve again")
            })
            .await;
            assert!(matches!(decided, Decision::Later(s) if s == ahead));
        })
        .await;
        assert_eq!(d.deferred(), Some(ahead));
        // A slot long past is not used: the request reserves a new one.
        let stale = Slot {
            lane: "L".into(),
            at: SystemTime::now() - Duration::from_secs(10),
        };
        let d = Deferral::new(Duration::from_secs(2), Some(stale));
        d.scope(async { assert_eq!(take_held("L", interval), None) })
            .await;
    }
}

//! A job whose member deletion must wait far for its slot of the group's limit is handed back
//! with the slot, not held; those deliveries are not attempts.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use gitlab_connector::client::{Reservation, SharedBudget};
use gitlab_sim::Resource;
use gitlab_worker::jobs::{Delivery, Disposition, JobResult, JobStatus};
use serde_json::json;

use crate::common::{env, job};

/// A shared budget in memory whose member-deletion lanes other workers have taken for the
/// next `ahead`.
struct TakenAhead {
    ahead: Duration,
    lanes: std::sync::Mutex<HashMap<String, SystemTime>>,
    deletion_reservations: AtomicUsize,
}

impl SharedBudget for TakenAhead {
    fn reserve<'a>(&'a self, lane: &'a str, requests: u32, interval: Duration) -> Reservation<'a> {
        Box::pin(async move {
            let now = SystemTime::now();
            let deletion = lane.starts_with("MemberDelete.");
            if deletion {
                self.deletion_reservations.fetch_add(1, Ordering::SeqCst);
            }
            let mut lanes = self.lanes.lock().unwrap();
            let next = lanes.entry(lane.to_string()).or_insert(if deletion {
                now + self.ahead
            } else {
                now
            });
            let start = (*next).max(now);
            *next = start + interval * requests;
            Ok(start)
        })
    }
}

/// A direct member of the scope's top-level group other than the token's user.
fn a_member(e: &crate::common::Env) -> (u64, u64) {
    let world = e.sim.sim.world.read().unwrap();
    let group = world
        .groups
        .values()
        .find(|g| g.parent_id.is_none() && g.full_path == e.sim.scope)
        .unwrap()
        .id;
    let user = world.members[&Resource::Group(group)]
        .keys()
        .copied()
        .find(|u| !world.users[u].is_admin && !world.users[u].is_bot())
        .expect("a member to revoke");
    (group, user)
}

fn delivery(attempt: u32) -> Delivery {
    Delivery {
        attempt,
        // Two attempts: the third delivery below runs only because deferrals are not attempts.
        attempt_budget: 2,
        deferrals: 0,
        stream_seq: 7,
        subject: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoke_whose_deletion_slot_is_far_off_waits_in_the_queue_with_it_and_is_sent_in_it() {
    let e = env().await;
    let budget = Arc::new(TakenAhead {
        ahead: Duration::from_millis(2_500),
        lanes: Default::default(),
        deletion_reservations: AtomicUsize::new(0),
    });
    e.client().share_budget(budget.clone());
    let (group, user) = a_member(&e);
    let before = e.level(group, user);
    assert!(before.is_some());
    let payload = job(
        "revoke-later",
        "revoke",
        json!({"user": {"id": user}, "target": {"group": group}}),
    );
    let record = || async {
        let r = e.handler.store.job("revoke-later").await.unwrap().unwrap();
        (r.attempts, r.deferrals)
    };

    // The slot is 2.5 s away: handed back until just before it; nothing written or audited.
    let h = e.handler.handle(&payload, delivery(1)).await.unwrap();
    let Disposition::Retry { delay } = h.disposition else {
        panic!("not handed back: {h:?}")
    };
    assert!(
        delay > Duration::from_millis(1_500) && delay < Duration::from_millis(2_500),
        "{delay:?}"
    );
    assert!(e.writes().is_empty(), "{:?}", e.writes());
    assert!(
        e.handler
            .store
            .audit_entries(Some("revoke-later"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(record().await, (1, 1));
    assert_eq!(budget.deletion_reservations.load(Ordering::SeqCst), 1);

    // Back at once (NATS did not wait): deferred again to the same slot, not a new one.
    let h = e.handler.handle(&payload, delivery(2)).await.unwrap();
    assert!(matches!(h.disposition, Disposition::Retry { .. }), "{h:?}");
    assert_eq!(record().await, (2, 2));
    assert_eq!(budget.deletion_reservations.load(Ordering::SeqCst), 1);

    // Back at the time it was told: the deletion is sent in the slot kept, without a new
    // reservation. Its budget of two attempts is not spent: it made one.
    tokio::time::sleep(delay).await;
    let h = e.handler.handle(&payload, delivery(3)).await.unwrap();
    let result: JobResult = serde_json::from_str(&h.result).unwrap();
    assert_eq!(result.status, JobStatus::Succeeded, "{}", h.result);
    assert_eq!(e.writes(), ["DELETE DELETE /groups/:id/members/:user_id"]);
    assert_eq!(e.level(group, user), None);
    assert_eq!(budget.deletion_reservations.load(Ordering::SeqCst), 1);
    assert_eq!(record().await, (3, 2));
}

//! Pagination exactly as GitLab does it (docs/gitlab.md, "Pagination"), over raw HTTP.

use futures::TryStreamExt;
use gitlab_connector::api::{ProjectsQuery, UsersQuery};
use gitlab_sim::{Mode, SimConfig, UserKind, World};

use crate::common::*;

fn many_users(n: usize) -> (World, String) {
    let mut w = World::new(Mode::SelfManaged);
    let root = w.add_user("root", UserKind::Human);
    w.users.get_mut(&root).unwrap().is_admin = true;
    for i in 0..n {
        w.add_user(&format!("u{i}"), UserKind::Human);
    }
    let org = w.add_group("org", None);
    for i in 0..250 {
        w.add_project(&format!("p{i}"), org);
    }
    w.add_token(root, "t", "admin-token", &["api"], None);
    w.reindex();
    (w, "admin-token".into())
}

#[tokio::test]
async fn offset_headers_links_and_per_page_cap() {
    let (w, token) = many_users(149);
    let sim = start(w, SimConfig::for_mode(Mode::SelfManaged)).await;
    let (status, h, body) = raw_get(
        &format!("{}/api/v4/users?per_page=500&sort=asc", sim.url),
        &token,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body.as_array().unwrap().len(),
        100,
        "per_page is capped at 100"
    );
    let hv = |k: &str| h.get(k).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(hv("x-page").as_deref(), Some("1"));
    assert_eq!(hv("x-per-page").as_deref(), Some("100"));
    assert_eq!(hv("x-next-page").as_deref(), Some("2"));
    assert_eq!(hv("x-prev-page").as_deref(), Some(""));
    assert_eq!(hv("x-total").as_deref(), Some("150"));
    assert_eq!(hv("x-total-pages").as_deref(), Some("2"));
    let link = hv("link").unwrap();
    assert!(
        link.contains("rel=\"next\"") && link.contains("page=2") && link.contains("rel=\"last\""),
        "{link}"
    );
    // Default per_page is 20.
    let (_, h, body) = raw_get(&format!("{}/api/v4/users?page=2", sim.url), &token).await;
    assert_eq!(body.as_array().unwrap().len(), 20);
    assert_eq!(h["x-prev-page"], "1");
    // The last page has no next.
    let (_, h, body) = raw_get(
        &format!("{}/api/v4/users?per_page=100&page=2", sim.url),
        &token,
    )
    .await;
    assert_eq!(body.as_array().unwrap().len(), 50);
    assert_eq!(h["x-next-page"], "");
    assert!(!h["link"].to_str().unwrap().contains("rel=\"next\""));
}

#[tokio::test]
async fn totals_are_omitted_above_ten_thousand_records() {
    let (w, token) = many_users(10_000);
    let sim = start(w, SimConfig::for_mode(Mode::SelfManaged)).await;
    let (_, h, _) = raw_get(&format!("{}/api/v4/users?per_page=100", sim.url), &token).await;
    assert!(h.get("x-total").is_none() && h.get("x-total-pages").is_none());
    let link = h["link"].to_str().unwrap();
    assert!(
        link.contains("rel=\"next\"") && !link.contains("rel=\"last\""),
        "{link}"
    );
    // Our client reads all 10,001 without totals.
    let c = client(&sim.url, &token);
    let users: Vec<_> = c.users(&UsersQuery::default()).try_collect().await.unwrap();
    assert_eq!(users.len(), 10_001);
}

#[tokio::test]
async fn offset_cap_answers_405_on_keyset_capable_lists_only() {
    let (w, token) = many_users(10);
    let mut cfg = SimConfig::for_mode(Mode::SelfManaged);
    cfg.offset_cap = 100;
    let sim = start(w, cfg).await;
    let (status, _, body) = raw_get(
        &format!("{}/api/v4/projects?per_page=100&page=3", sim.url),
        &token,
    )
    .await;
    assert_eq!(status, 405);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("maximum allowed offset of 100"),
        "{body}"
    );
    // Descendant groups and members are not keyset-capable: no cap.
    let (status, _, _) = raw_get(
        &format!(
            "{}/api/v4/groups/org/descendant_groups?per_page=100&page=3",
            sim.url
        ),
        &token,
    )
    .await;
    assert_eq!(status, 200);
    // Our client switches to keyset and reads everything exactly once.
    let c = client(&sim.url, &token);
    let projects: Vec<_> = c
        .projects_offset(&ProjectsQuery::default())
        .try_collect()
        .await
        .unwrap();
    let unique: std::collections::BTreeSet<_> = projects.iter().map(|p| p.id).collect();
    assert_eq!((projects.len(), unique.len()), (250, 250));
}

#[tokio::test]
async fn keyset_has_only_a_next_link() {
    let (w, token) = many_users(30);
    let sim = start(w, SimConfig::for_mode(Mode::SelfManaged)).await;
    let (_, h, body) = raw_get(
        &format!(
            "{}/api/v4/projects?pagination=keyset&order_by=id&sort=asc&per_page=100",
            sim.url
        ),
        &token,
    )
    .await;
    assert_eq!(body.as_array().unwrap().len(), 100);
    for k in ["x-total", "x-total-pages", "x-page", "x-next-page"] {
        assert!(h.get(k).is_none(), "{k} present on keyset");
    }
    let link = h["link"].to_str().unwrap();
    assert!(
        link.contains("id_after=") && link.ends_with("rel=\"next\""),
        "{link}"
    );
    let (_, h, body) = raw_get(
        &format!(
            "{}/api/v4/users?pagination=keyset&order_by=id&sort=asc&per_page=20",
            sim.url
        ),
        &token,
    )
    .await;
    assert_eq!(body.as_array().unwrap().len(), 20);
    assert!(h["link"].to_str().unwrap().contains("cursor="));
    // Unsupported order.
    let (status, _, _) = raw_get(
        &format!(
            "{}/api/v4/projects?pagination=keyset&order_by=name&sort=asc",
            sim.url
        ),
        &token,
    )
    .await;
    assert_eq!(status, 405);
    // Walking keyset through our client: every project, in id order.
    let c = client(&sim.url, &token);
    let projects: Vec<_> = c
        .projects(&ProjectsQuery::default())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(projects.len(), 250);
    assert!(projects.windows(2).all(|p| p[0].id < p[1].id));
    // Two raw requests above, then three keyset pages of 100.
    assert_eq!(count(&sim, "GET /projects"), 2 + 3);
}

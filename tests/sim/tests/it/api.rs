//! Endpoint semantics (docs/gitlab.md), through our client and raw HTTP.

use chrono::Duration as Days;
use futures::TryStreamExt;
use gitlab_connector::Error;
use gitlab_connector::api::{
    AccessLevel, AddMember, CreateInvitation, CreateUser, EditMember, Member, ProjectsQuery,
    RemoveMember, Source, UserAction, UsersQuery,
};
use gitlab_connector::client::IdOrPath;
use gitlab_sim::Mode;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn who_can_see_what() {
    let (sim, f) = start_fixture(Mode::SelfManaged).await;
    let admin = client(&sim.url, &f.admin_token);
    let me = admin.current_user().await.unwrap();
    assert_eq!((me.username.as_str(), me.is_admin), ("root", Some(true)));
    // The admin sees every user with admin fields.
    let users: Vec<_> = admin
        .users(&UsersQuery::default())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(users.len(), 8);
    assert!(
        users
            .iter()
            .all(|u| u.email.is_some() && u.two_factor_enabled.is_some())
    );

    // A group owner sees their tree but not other groups, and no admin fields.
    let owner = client(&sim.url, &f.owner_token);
    assert_eq!(
        owner.group(&IdOrPath::parse("org")).await.unwrap().id,
        f.ids.org
    );
    let hidden = owner.group(&IdOrPath::parse("partners")).await.unwrap_err();
    assert!(
        matches!(hidden, Error::NotFoundOrHidden { .. }),
        "{hidden:?}"
    );
    let users: Vec<_> = owner
        .users(&UsersQuery::default())
        .try_collect()
        .await
        .unwrap();
    assert!(
        users.iter().all(|u| u.email.is_none()),
        "non-admins see no emails"
    );
    let projects: Vec<_> = owner
        .projects(&ProjectsQuery::default())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(projects.len(), 2);

    // Bob only reaches his project: its group is visible (limited), a sibling group is not.
    let bob_token = sim_post(
        &sim.url,
        "/tokens",
        json!({"user_id": f.ids.bob, "scopes": ["api"]}),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let bob = client(&sim.url, &bob_token);
    assert!(bob.project(&IdOrPath::Id(f.ids.api)).await.is_ok());
    assert!(bob.group(&IdOrPath::Id(f.ids.backend)).await.is_ok());
    assert!(
        bob.project(&IdOrPath::Id(f.ids.deploy))
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert!(
        bob.group(&IdOrPath::Id(f.ids.ops))
            .await
            .unwrap_err()
            .is_not_found()
    );
}

#[tokio::test]
async fn gitlab_com_mode_has_no_admin_api() {
    let (sim, f) = start_fixture(Mode::GitlabCom).await;
    // Even the instance's admin flag means nothing on GitLab.com.
    let c = client(&sim.url, &f.admin_token);
    let err = c
        .create_user(&CreateUser {
            email: "x@example.com".into(),
            username: "x".into(),
            name: "X".into(),
            skip_confirmation: true,
            external: false,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Forbidden { .. }), "{err:?}");
    let err = c
        .user_action(f.ids.bob, UserAction::Block)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Forbidden { .. }), "{err:?}");
    // The top-level owner reads billable members and SAML links.
    let owner = client(&sim.url, &f.owner_token);
    let billable: Vec<_> = owner
        .billable_members(&IdOrPath::Id(f.ids.org))
        .try_collect()
        .await
        .unwrap();
    let names: Vec<_> = billable.iter().map(|b| b.username.as_str()).collect();
    assert!(
        names.contains(&"alice") && names.contains(&"bob") && names.contains(&"carol"),
        "{names:?}"
    );
    assert!(
        owner
            .saml_group_links(&IdOrPath::Id(f.ids.org))
            .await
            .unwrap()
            .is_empty()
    );
    // Not for subgroups.
    let err = owner
        .billable_members(&IdOrPath::Id(f.ids.eng))
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Validation { .. }), "{err:?}");
}

#[tokio::test]
async fn tree_and_projects() {
    let (sim, f) = start_fixture(Mode::SelfManaged).await;
    let c = client(&sim.url, &f.owner_token);
    let desc: Vec<_> = c
        .descendant_groups(&IdOrPath::Id(f.ids.org))
        .try_collect()
        .await
        .unwrap();
    let mut paths: Vec<_> = desc.iter().map(|g| g.full_path.clone()).collect();
    paths.sort();
    assert_eq!(paths, vec!["org/eng", "org/eng/backend", "org/ops"]);
    let projects: Vec<_> = c
        .group_projects(&IdOrPath::Id(f.ids.org), true)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(projects.len(), 2);
    let direct: Vec<_> = c
        .group_projects(&IdOrPath::Id(f.ids.org), false)
        .try_collect()
        .await
        .unwrap();
    assert!(direct.is_empty());
    let ops = c.group(&IdOrPath::Id(f.ids.ops)).await.unwrap();
    assert_eq!(ops.shared_with_groups[0].group_id, f.ids.partners);
    assert_eq!(
        ops.shared_with_groups[0].group_access_level,
        AccessLevel::REPORTER
    );
    let deploy = c.project(&IdOrPath::parse("org/ops/deploy")).await.unwrap();
    assert_eq!(deploy.namespace.id, f.ids.ops);
}

#[tokio::test]
async fn members_all_is_the_highest_level_over_inheritance_and_shares() {
    let (sim, f) = start_fixture(Mode::SelfManaged).await;
    let c = client(&sim.url, &f.admin_token);
    let ids = f.ids;
    let eff = |r: Source, u: u64| {
        let c = c.clone();
        async move {
            c.effective_member(&r, u)
                .await
                .unwrap()
                .map(|m| m.access_level.0)
        }
    };
    // Inherited two levels down.
    assert_eq!(eff(Source::project(ids.api), ids.alice).await, Some(30));
    // Direct.
    assert_eq!(eff(Source::project(ids.api), ids.bob).await, Some(20));
    // Through the share, capped at group_access.
    assert_eq!(eff(Source::project(ids.deploy), ids.carol).await, Some(20));
    assert_eq!(eff(Source::group(ids.ops), ids.carol).await, Some(20));
    // Minimal access is not inherited.
    assert_eq!(eff(Source::group(ids.org), ids.dave).await, Some(5));
    assert_eq!(eff(Source::group(ids.eng), ids.dave).await, None);
    // Owner everywhere below.
    assert_eq!(eff(Source::project(ids.api), ids.owner).await, Some(50));
    // Direct members only in /members.
    let direct: Vec<Member> = c
        .members(&Source::project(ids.api))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        direct.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![ids.bob]
    );
    // An expired membership gives nothing; an awaiting one neither.
    let yesterday = (chrono::Utc::now().date_naive() - Days::days(1)).to_string();
    sim_post(&sim.url, "/members", json!({"resource": {"type": "group", "id": ids.ops}, "user_id": ids.erin, "access_level": 40, "expires_at": yesterday})).await;
    assert_eq!(eff(Source::group(ids.ops), ids.erin).await, None);
    sim_post(&sim.url, "/members", json!({"resource": {"type": "group", "id": ids.ops}, "user_id": ids.erin, "access_level": 40, "state": "awaiting"})).await;
    assert_eq!(eff(Source::group(ids.ops), ids.erin).await, None);
}

#[tokio::test]
async fn adding_members_follows_gitlabs_rules() {
    let (sim, f) = start_fixture(Mode::SelfManaged).await;
    let c = client(&sim.url, &f.owner_token);
    let ids = f.ids;
    let add = |user_id, level: u16, expires_at| AddMember {
        user_id,
        access_level: AccessLevel(level),
        expires_at,
        member_role_id: None,
    };
    let m = c
        .add_member(&Source::group(ids.ops), &add(ids.erin, 30, None))
        .await
        .unwrap();
    assert_eq!(
        (m.id, m.access_level.0, m.created_by.unwrap().id),
        (ids.erin, 30, ids.owner)
    );
    // Again: 409 Member already exists.
    let e = c
        .add_member(&Source::group(ids.ops), &add(ids.erin, 40, None))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::AlreadyMember { .. }), "{e:?}");
    // Below the inherited level: 400 naming the inherited role.
    let e = c
        .add_member(&Source::project(ids.api), &add(ids.alice, 20, None))
        .await
        .unwrap_err();
    match &e {
        Error::Validation { fields, .. } => assert_eq!(
            fields["access_level"][0],
            "should be greater than or equal to Developer inherited membership from group Eng"
        ),
        other => panic!("{other:?}"),
    }
    // A date in the past.
    let past = chrono::Utc::now().date_naive() - Days::days(2);
    let e = c
        .add_member(&Source::group(ids.eng), &add(ids.erin, 20, Some(past)))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Validation { fields, .. } if fields.contains_key("expires_at")),
        "{e:?}"
    );
    // Unknown user, invalid level.
    assert!(
        c.add_member(&Source::group(ids.eng), &add(999_999, 20, None))
            .await
            .unwrap_err()
            .is_not_found()
    );
    let e = c
        .add_member(&Source::group(ids.eng), &add(ids.erin, 33, None))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Validation { .. }), "{e:?}");
    // Minimal access only on the top-level group.
    let e = c
        .add_member(&Source::group(ids.eng), &add(ids.erin, 5, None))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Validation { .. }), "{e:?}");
    // A developer cannot manage members.
    let alice_token = sim_post(
        &sim.url,
        "/tokens",
        json!({"user_id": ids.alice, "scopes": ["api"]}),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let e = client(&sim.url, &alice_token)
        .add_member(&Source::group(ids.eng), &add(ids.erin, 10, None))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Forbidden { .. }), "{e:?}");
}

#[tokio::test]
async fn edit_drops_the_custom_role_when_omitted_and_keeps_expiry_unless_sent() {
    let (sim, f) = start_fixture(Mode::SelfManaged).await;
    let ids = f.ids;
    let role = sim_post(
        &sim.url,
        "/member_roles",
        json!({"name": "Auditor", "base_access_level": 10}),
    )
    .await["id"]
        .as_u64()
        .unwrap();
    let later = chrono::Utc::now().date_naive() + Days::days(20);
    sim_post(&sim.url, "/members", json!({"resource": {"type": "group", "id": ids.eng}, "user_id": ids.erin, "access_level": 10, "member_role_id": role, "expires_at": later})).await;
    // Raw PUT without member_role_id and without expires_at.
    let r = http()
        .put(format!(
            "{}/api/v4/groups/{}/members/{}",
            sim.url, ids.eng, ids.erin
        ))
        .header("PRIVATE-TOKEN", &f.owner_token)
        .json(&json!({"access_level": 20}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m: serde_json::Value = r.json().await.unwrap();
    assert!(m.get("member_role").is_none(), "custom role kept: {m}");
    assert_eq!(m["expires_at"], later.to_string());
    // Our client sends the full intended state, so the role survives.
    let c = client(&sim.url, &f.owner_token);
    let edit = EditMember {
        access_level: AccessLevel(30),
        expires_at: Some(later),
        member_role_id: Some(role),
    };
    let m = c
        .edit_member(&Source::group(ids.eng), ids.erin, &edit)
        .await
        .unwrap();
    assert_eq!(m.member_role_id(), Some(role));
    // An explicit null expiry clears it.
    let edit = EditMember {
        access_level: AccessLevel(30),
        expires_at: None,
        member_role_id: Some(role),
    };
    let m = c
        .edit_member(&Source::group(ids.eng), ids.erin, &edit)
        .await
        .unwrap();
    assert_eq!(m.expires_at, None);
}

#[tokio::test]
async fn deleting_an_inherited_only_member_is_a_404() {
    let (sim, f) = start_fixture(Mode::SelfManaged).await;
    let c = client(&sim.url, &f.owner_token);
    let ids = f.ids;
    let e = c
        .remove_member(
            &Source::project(ids.api),
            ids.alice,
            RemoveMember::default(),
        )
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
    c.remove_member(&Source::project(ids.api), ids.bob, RemoveMember::default())
        .await
        .unwrap();
    assert!(
        c.direct_member(&Source::project(ids.api), ids.bob)
            .await
            .unwrap()
            .is_none()
    );
    // skip_subresources=false also removes memberships below.
    sim_post(&sim.url, "/members", json!({"resource": {"type": "project", "id": ids.api}, "user_id": ids.alice, "access_level": 40})).await;
    c.remove_member(
        &Source::group(ids.eng),
        ids.alice,
        RemoveMember {
            skip_subresources: false,
            unassign_issuables: false,
        },
    )
    .await
    .unwrap();
    assert!(
        c.direct_member(&Source::project(ids.api), ids.alice)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn invitations_answer_201_with_errors_and_update_existing_members() {
    let (sim, f) = start_fixture(Mode::SelfManaged).await;
    let c = client(&sim.url, &f.owner_token);
    let ids = f.ids;
    let inv = |email: &str, level: u16, expires_at| CreateInvitation {
        email: email.into(),
        access_level: AccessLevel(level),
        expires_at,
        member_role_id: None,
    };
    c.invite(
        &Source::group(ids.eng),
        &inv("new@partner.example.org", 20, None),
    )
    .await
    .unwrap();
    let pending: Vec<_> = c
        .invitations(&Source::group(ids.eng), None)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].invite_email, "new@partner.example.org");
    // The same email again: 201 with a per-address error.
    let e = c
        .invite(
            &Source::group(ids.eng),
            &inv("new@partner.example.org", 20, None),
        )
        .await
        .unwrap_err();
    match e {
        Error::InvitationErrors { errors, .. } => assert_eq!(
            errors["new@partner.example.org"],
            "Invite email has already been taken"
        ),
        other => panic!("{other:?}"),
    }
    // A date in the past: 201 with an error too.
    let past = chrono::Utc::now().date_naive() - Days::days(1);
    let e = c
        .invite(
            &Source::group(ids.eng),
            &inv("other@partner.example.org", 20, Some(past)),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("Expires at cannot be a date in the past"),
        "{e}"
    );
    // A malformed email: 400 with Grape's `error`.
    let e = c
        .invite(&Source::group(ids.eng), &inv("not an email", 20, None))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Validation { message, .. } if message.contains("invalid email")),
        "{e:?}"
    );
    // An existing member's email updates that member.
    c.invite(&Source::group(ids.eng), &inv("alice@example.com", 40, None))
        .await
        .unwrap();
    let alice = c
        .direct_member(&Source::group(ids.eng), ids.alice)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alice.access_level, AccessLevel::MAINTAINER);
    // Cancel.
    c.cancel_invitation(&Source::group(ids.eng), "new@partner.example.org")
        .await
        .unwrap();
    let pending: Vec<_> = c
        .invitations(&Source::group(ids.eng), None)
        .try_collect()
        .await
        .unwrap();
    assert!(pending.is_empty());
    assert!(
        c.cancel_invitation(&Source::group(ids.eng), "new@partner.example.org")
            .await
            .unwrap_err()
            .is_not_found()
    );
}

#[tokio::test]
async fn tokens_expire_rotate_once_and_revoke_their_family_on_reuse() {
    let (sim, f) = start_fixture(Mode::SelfManaged).await;
    let expired = client(&sim.url, &f.expired_token)
        .current_user()
        .await
        .unwrap_err();
    assert!(matches!(expired, Error::TokenExpired { .. }), "{expired:?}");
    let unknown = client(&sim.url, "nope").current_user().await.unwrap_err();
    assert!(matches!(unknown, Error::Unauthorized { .. }), "{unknown:?}");

    let old = client(&sim.url, &f.owner_token);
    let me = old.token_self().await.unwrap();
    assert!(me.has_scope("api") && me.active);
    let expires = chrono::Utc::now().date_naive() + Days::days(90);
    let rotated = old.rotate_token_self(expires).await.unwrap();
    assert_eq!(rotated.info.expires_at, Some(expires));
    let new = client(&sim.url, rotated.token.expose());
    assert_eq!(new.current_user().await.unwrap().id, f.ids.owner);
    // The old token is revoked at once.
    let e = old.current_user().await.unwrap_err();
    assert!(matches!(e, Error::TokenRevoked { .. }), "{e:?}");
    // Rotating the revoked token again revokes the whole family, the new token included.
    let e = old.rotate_token_self(expires).await.unwrap_err();
    assert!(matches!(e, Error::TokenRevoked { .. }), "{e:?}");
    let e = new.current_user().await.unwrap_err();
    assert!(
        matches!(e, Error::TokenRevoked { .. }),
        "the family survived reuse: {e:?}"
    );
}

#[tokio::test]
async fn read_api_tokens_cannot_write() {
    let (sim, f) = start_fixture(Mode::SelfManaged).await;
    let c = client(&sim.url, &f.readonly_token);
    assert!(c.group(&IdOrPath::Id(f.ids.org)).await.is_ok());
    let e = c
        .add_member(
            &Source::group(f.ids.eng),
            &AddMember {
                user_id: f.ids.erin,
                access_level: AccessLevel(10),
                expires_at: None,
                member_role_id: None,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InsufficientScope { .. }), "{e:?}");
    assert_eq!(count(&sim, "POST /groups/:id/members"), 1);
}

#[tokio::test]
async fn admin_user_lifecycle() {
    let (sim, f) = start_fixture(Mode::SelfManaged).await;
    let c = client(&sim.url, &f.admin_token);
    let ids = f.ids;
    let created = c
        .create_user(&CreateUser {
            email: "new.hire@example.com".into(),
            username: "new.hire".into(),
            name: "New Hire".into(),
            skip_confirmation: true,
            external: false,
        })
        .await
        .unwrap();
    assert_eq!(created.email.as_deref(), Some("new.hire@example.com"));
    let dup = c
        .create_user(&CreateUser {
            email: "other@example.com".into(),
            username: "new.hire".into(),
            name: "X".into(),
            skip_confirmation: true,
            external: false,
        })
        .await
        .unwrap_err();
    assert!(matches!(dup, Error::Conflict { .. }), "{dup:?}");
    // Deactivating a recently active user is refused; block works.
    let http = http();
    http.patch(format!("{}/_sim/users/{}", sim.url, ids.bob))
        .json(&json!({"last_activity_on": chrono::Utc::now().date_naive()}))
        .send()
        .await
        .unwrap();
    let e = c
        .user_action(ids.bob, UserAction::Deactivate)
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Forbidden { .. }) && e.to_string().contains("90 days"),
        "{e:?}"
    );
    c.user_action(ids.bob, UserAction::Block).await.unwrap();
    assert_eq!(c.user(ids.bob).await.unwrap().state, "blocked");
    let e = c.user_action(ids.bob, UserAction::Ban).await.unwrap_err();
    assert!(matches!(e, Error::Forbidden { .. }));
    c.user_action(ids.bob, UserAction::Unblock).await.unwrap();
    c.user_action(ids.bob, UserAction::Ban).await.unwrap();
    assert_eq!(c.user(ids.bob).await.unwrap().state, "banned");
    // A dormant user can be deactivated.
    c.user_action(ids.erin, UserAction::Deactivate)
        .await
        .unwrap();
    // Tokens of a user, and revoking one.
    let t = sim_post(
        &sim.url,
        "/tokens",
        json!({"user_id": ids.carol, "scopes": ["read_api"]}),
    )
    .await;
    let tokens: Vec<_> = c.user_tokens(ids.carol).try_collect().await.unwrap();
    assert_eq!(tokens.len(), 1);
    c.revoke_token(t["id"].as_u64().unwrap()).await.unwrap();
    let tokens: Vec<_> = c.user_tokens(ids.carol).try_collect().await.unwrap();
    assert!(tokens[0].revoked);
    c.delete_user(ids.carol, false).await.unwrap();
    assert!(c.user(ids.carol).await.unwrap_err().is_not_found());
}

/// Tree project lists are memoized in the simulator; a group or project added afterwards must
/// show up in the next listing, in id order.
#[tokio::test]
async fn project_lists_follow_the_tree_after_it_changes() {
    let (sim, f) = start_fixture(Mode::SelfManaged).await;
    let list = |url: String| async move {
        let (status, _, body) = raw_get(&url, "admin-token").await;
        assert_eq!(status, 200, "{body}");
        body.as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_u64().unwrap())
            .collect::<Vec<u64>>()
    };
    let url = format!(
        "{}/api/v4/groups/{}/projects?include_subgroups=true&with_shared=false&order_by=id&sort=asc",
        sim.url, f.ids.org
    );
    assert_eq!(list(url.clone()).await, vec![f.ids.api, f.ids.deploy]);
    let new_group = sim_post(
        &sim.url,
        "/groups",
        json!({"path": "data", "parent_id": f.ids.eng}),
    )
    .await["id"]
        .as_u64()
        .unwrap();
    let in_new_group = sim_post(
        &sim.url,
        "/projects",
        json!({"path": "lake", "group_id": new_group}),
    )
    .await["id"]
        .as_u64()
        .unwrap();
    assert_eq!(
        list(url.clone()).await,
        vec![f.ids.api, f.ids.deploy, in_new_group]
    );
    let in_ops = sim_post(
        &sim.url,
        "/projects",
        json!({"path": "runbooks", "group_id": f.ids.ops}),
    )
    .await["id"]
        .as_u64()
        .unwrap();
    assert_eq!(
        list(url).await,
        vec![f.ids.api, f.ids.deploy, in_new_group, in_ops]
    );
}

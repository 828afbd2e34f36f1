//! MembershipService: invitations, roles, leaving, the last-admin rule, and credentials that keep
//! working when their creator leaves.

use crate::support::broker::{TestBroker, assert_status, error_details};
use crate::support::client::{Actor, Client, rename_request};
use crate::support::fake_provider::{FakeConfig, FakeProvider};
use cb_proto::v1 as pb;
use std::sync::Arc;
use tonic::Code;

const ADA: Actor = Actor::new("u-ada", "ada@example.com");
const BEN: Actor = Actor::new("u-ben", "Ben@Example.com");
const CY: Actor = Actor::new("u-cy", "cy@example.com");

/// A broker with one credential Ada imported (she is its only Admin), and a client acting as Ada.
async fn setup() -> (TestBroker, FakeProvider, String, Client) {
    let fake = FakeProvider::start(FakeConfig::default()).await;
    let b = TestBroker::with_fake(&fake, None, |_| {}).await;
    let mut ada = b.client(ADA).await;
    let id = ada
        .import_fake(&fake, "acct-1", 4_000_000_000)
        .await
        .unwrap()
        .id;
    (b, fake, id, ada)
}

/// The members of credential `id` with `email`, as `c` lists them.
async fn members_with_email(c: &mut Client, id: &str, email: &str) -> Vec<pb::Member> {
    let all = c.list_members(id).await.unwrap();
    all.into_iter().filter(|m| m.email == email).collect()
}

/// Runs `call` in a task once every racer has reached `start`.
fn race<T: Send + 'static>(
    start: &Arc<tokio::sync::Barrier>,
    call: impl Future<Output = T> + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    let start = Arc::clone(start);
    tokio::spawn(async move {
        start.wait().await;
        call.await
    })
}

#[tokio::test]
async fn invitations_are_accepted_only_by_the_invited_email() {
    let (_b, _fake, id, mut ada) = setup().await;
    let member = ada
        .add_member(&id, BEN.email, pb::MemberRole::Member)
        .await
        .unwrap();
    assert_eq!(member.email, "ben@example.com", "emails are lowercased");
    assert_eq!(member.state, pb::MemberState::Invited as i32);

    // The same email in another case is the same member.
    let err = ada
        .add_member(&id, "BEN@example.com", pb::MemberRole::Admin)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    // An invitee cannot see the credential before accepting.
    let mut ben = ada.acting_as(BEN);
    let err = ben.get(&id).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Someone else cannot accept Ben's invitation.
    let err = ada.acting_as(CY).accept_invitation(&id).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let member = ben.accept_invitation(&id).await.unwrap();
    assert_eq!(member.state, pb::MemberState::Active as i32);
    assert_eq!(member.user_id, BEN.id);
    let got = ben.get(&id).await.unwrap();
    assert_eq!(got.caller_role, pb::MemberRole::Member as i32);

    // Once bound, another user id presenting the same email is not that member.
    let impostor = Actor::new("u-impostor", BEN.email);
    let err = ada.acting_as(impostor).get(&id).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let list = ben.list_members(&id).await.unwrap();
    let emails: Vec<_> = list.iter().map(|m| m.email.as_str()).collect();
    assert_eq!(emails, vec!["ada@example.com", "ben@example.com"]);
}

#[tokio::test]
async fn members_use_admins_manage() {
    let (_b, _fake, id, mut ada) = setup().await;
    let mut ben = ada.acting_as(BEN);
    ada.add_member(&id, BEN.email, pb::MemberRole::Member)
        .await
        .unwrap();
    ben.accept_invitation(&id).await.unwrap();

    // A Member cannot rename, disconnect, invite or change roles.
    let rename = rename_request(&id, "mine");
    let err = ben.update(rename.clone()).await.unwrap_err();
    assert_status(&err, Code::PermissionDenied, "ROLE_REQUIRED");
    let err = ben.disconnect(&id).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = ben
        .add_member(&id, CY.email, pb::MemberRole::Member)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = ben
        .update_member_role(&id, BEN.email, pb::MemberRole::Admin)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // The Admin promotes Ben; now Ben can rename.
    let promoted = ada
        .update_member_role(&id, BEN.email, pb::MemberRole::Admin)
        .await
        .unwrap();
    assert_eq!(promoted.role, pb::MemberRole::Admin as i32);
    ben.update(rename).await.unwrap();

    // Unspecified roles are rejected, naming the field.
    let err = ada
        .add_member(&id, CY.email, pb::MemberRole::Unspecified)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(error_details(&err).1, vec!["role".to_owned()]);
}

#[tokio::test]
async fn the_last_admin_cannot_leave_be_removed_or_demoted() {
    let (_b, _fake, id, mut ada) = setup().await;
    let err = ada.remove_member(&id, ADA.email).await.unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "LAST_ADMIN");
    let err = ada
        .update_member_role(&id, ADA.email, pb::MemberRole::Member)
        .await
        .unwrap_err();
    assert_eq!(error_details(&err).0, "LAST_ADMIN");

    // An invited Admin does not count until accepted.
    ada.add_member(&id, CY.email, pb::MemberRole::Admin)
        .await
        .unwrap();
    let err = ada.remove_member(&id, ADA.email).await.unwrap_err();
    assert_eq!(error_details(&err).0, "LAST_ADMIN");
    let mut cy = ada.acting_as(CY);
    cy.accept_invitation(&id).await.unwrap();

    // With a second active Admin, Ada may leave; then Cy is the last Admin.
    ada.remove_member(&id, ADA.email).await.unwrap();
    let err = cy.remove_member(&id, CY.email).await.unwrap_err();
    assert_eq!(error_details(&err).0, "LAST_ADMIN");

    // Ada is gone: the credential no longer exists for her.
    let err = ada.get(&id).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn a_member_can_leave_and_the_credential_outlives_its_creator() {
    let (_b, _fake, id, mut ada) = setup().await;
    for who in [BEN, CY] {
        let role = if who == BEN {
            pb::MemberRole::Admin
        } else {
            pb::MemberRole::Member
        };
        ada.add_member(&id, who.email, role).await.unwrap();
        ada.acting_as(who).accept_invitation(&id).await.unwrap();
    }
    let token = |id: &str| pb::GetAccessTokenRequest {
        credential_id: id.into(),
        ..Default::default()
    };

    // Cy (a Member) leaves on her own.
    let mut cy = ada.acting_as(CY);
    cy.remove_member(&id, CY.email).await.unwrap();
    let err = cy.token_with(token(&id)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "a former member gets no token");

    // Ada, the creator, leaves the workspace: Ben (Admin) removes her.
    let mut ben = ada.acting_as(BEN);
    ben.remove_member(&id, ADA.email).await.unwrap();
    let t = ben.token_with(token(&id)).await.unwrap();
    assert!(
        !t.access_token.is_empty(),
        "the credential keeps working for the remaining members"
    );
    let got = ben.get(&id).await.unwrap();
    assert_eq!(got.created_by, ADA.id, "history is kept");
}

#[tokio::test]
async fn concurrent_invitations_of_one_email_have_exactly_one_winner() {
    const RACERS: usize = 8;
    let (b, _fake, id, mut ada) = setup().await;
    let start = Arc::new(tokio::sync::Barrier::new(RACERS));
    let mut tasks = Vec::new();
    for n in 0..RACERS {
        let mut racer = b.client(ADA).await;
        let id = id.clone();
        let role = if n % 2 == 0 {
            pb::MemberRole::Admin
        } else {
            pb::MemberRole::Member
        };
        tasks.push(race(&start, async move {
            racer.add_member(&id, CY.email, role).await
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(member) => winners.push(member),
            Err(err) => assert_status(&err, Code::AlreadyExists, "MEMBER_EXISTS"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let listed = members_with_email(&mut ada, &id, CY.email).await;
    assert_eq!(listed, winners, "the winner's invitation is the one stored");
}

#[tokio::test]
async fn a_role_change_racing_the_acceptance_never_undoes_it() {
    let (b, _fake, id, mut ada) = setup().await;
    for round in 0..6 {
        ada.add_member(&id, CY.email, pb::MemberRole::Member)
            .await
            .unwrap();
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let (mut cy, mut admin) = (b.client(CY).await, b.client(ADA).await);
        let (id1, id2) = (id.clone(), id.clone());
        let accept = race(&start, async move { cy.accept_invitation(&id1).await });
        let promote = race(&start, async move {
            admin
                .update_member_role(&id2, CY.email, pb::MemberRole::Admin)
                .await
        });
        accept.await.unwrap().unwrap();
        promote.await.unwrap().unwrap();
        let cy = members_with_email(&mut ada, &id, CY.email)
            .await
            .into_iter()
            .next()
            .unwrap();
        assert_eq!(
            (cy.state, cy.role),
            (pb::MemberState::Active as i32, pb::MemberRole::Admin as i32),
            "round {round}"
        );
        ada.remove_member(&id, CY.email).await.unwrap();
    }
}

//! MembershipService: invitations, roles, leaving, the last-admin rule, and credentials that keep
//! working when their creator leaves.

use crate::support::broker::{TestBroker, as_actor, error_details, with_fake_provider};
use crate::support::fake_provider::{FakeConfig, FakeProvider};
use cb_proto::v1 as pb;
use std::sync::Arc;
use tonic::Code;

const ADA: (&str, &str) = ("u-ada", "ada@example.com");
const BEN: (&str, &str) = ("u-ben", "Ben@Example.com");
const CY: (&str, &str) = ("u-cy", "cy@example.com");

async fn setup() -> (TestBroker, FakeProvider, String) {
    let fake = FakeProvider::start(FakeConfig::default()).await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let url = format!("sqlite://{}", dir.path().join("broker.db").display());
    let mut config = TestBroker::config(&dir, url);
    with_fake_provider(&mut config, &fake, "fake", &[]);
    let b = TestBroker::start(config, dir).await.unwrap();
    let (access, refresh) = fake.issue_grant("acct-1");
    let id = b
        .credentials()
        .await
        .import_credential(as_actor(
            pb::ImportCredentialRequest {
                workspace_id: "ws1".into(),
                provider_id: "fake".into(),
                account: Some(pb::ProviderAccount {
                    subject: "acct-1".into(),
                    label: "acct".into(),
                }),
                display_name: "Shared".into(),
                tokens: Some(pb::TokenSet {
                    access_token: access,
                    refresh_token: refresh,
                    access_token_expire_time: Some(prost_types::Timestamp {
                        seconds: 4_000_000_000,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ADA.0,
            ADA.1,
        ))
        .await
        .unwrap()
        .into_inner()
        .credential
        .unwrap()
        .credential_id;
    (b, fake, id)
}

fn add(id: &str, email: &str, role: pb::MemberRole) -> pb::AddMemberRequest {
    pb::AddMemberRequest {
        credential_id: id.into(),
        email: email.into(),
        role: role as i32,
    }
}

#[tokio::test]
async fn invitations_are_accepted_only_by_the_invited_email() {
    let (b, _fake, id) = setup().await;
    let mut m = b.members().await;
    let invited = m
        .add_member(as_actor(
            add(&id, BEN.1, pb::MemberRole::Member),
            ADA.0,
            ADA.1,
        ))
        .await
        .unwrap()
        .into_inner();
    let member = invited.member.unwrap();
    assert_eq!(member.email, "ben@example.com", "emails are lowercased");
    assert_eq!(member.state, pb::MemberState::Invited as i32);

    // The same email in another case is the same member.
    let err = m
        .add_member(as_actor(
            add(&id, "BEN@example.com", pb::MemberRole::Admin),
            ADA.0,
            ADA.1,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    // An invitee cannot see the credential before accepting.
    let mut c = b.credentials().await;
    let err = c
        .get_credential(as_actor(
            pb::GetCredentialRequest {
                credential_id: id.clone(),
            },
            BEN.0,
            BEN.1,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Someone else cannot accept Ben's invitation.
    let err = m
        .accept_invitation(as_actor(
            pb::AcceptInvitationRequest {
                credential_id: id.clone(),
            },
            CY.0,
            CY.1,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let accepted = m
        .accept_invitation(as_actor(
            pb::AcceptInvitationRequest {
                credential_id: id.clone(),
            },
            BEN.0,
            BEN.1,
        ))
        .await
        .unwrap()
        .into_inner();
    let member = accepted.member.unwrap();
    assert_eq!(member.state, pb::MemberState::Active as i32);
    assert_eq!(member.user_id, BEN.0);
    let got = c
        .get_credential(as_actor(
            pb::GetCredentialRequest {
                credential_id: id.clone(),
            },
            BEN.0,
            BEN.1,
        ))
        .await
        .unwrap();
    assert_eq!(
        got.into_inner().credential.unwrap().caller_role,
        pb::MemberRole::Member as i32
    );

    // Once bound, another user id presenting the same email is not that member.
    let err = c
        .get_credential(as_actor(
            pb::GetCredentialRequest {
                credential_id: id.clone(),
            },
            "u-impostor",
            BEN.1,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let list = m
        .list_members(as_actor(
            pb::ListMembersRequest { credential_id: id },
            BEN.0,
            BEN.1,
        ))
        .await
        .unwrap()
        .into_inner();
    let emails: Vec<_> = list.members.iter().map(|m| m.email.as_str()).collect();
    assert_eq!(emails, vec!["ada@example.com", "ben@example.com"]);
}

#[tokio::test]
async fn members_use_admins_manage() {
    let (b, _fake, id) = setup().await;
    let mut m = b.members().await;
    let mut c = b.credentials().await;
    m.add_member(as_actor(
        add(&id, BEN.1, pb::MemberRole::Member),
        ADA.0,
        ADA.1,
    ))
    .await
    .unwrap();
    m.accept_invitation(as_actor(
        pb::AcceptInvitationRequest {
            credential_id: id.clone(),
        },
        BEN.0,
        BEN.1,
    ))
    .await
    .unwrap();

    // A Member cannot rename, disconnect, invite or change roles.
    let rename = pb::UpdateCredentialRequest {
        credential: Some(pb::Credential {
            credential_id: id.clone(),
            display_name: "mine".into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["display_name".into()],
        }),
    };
    let err = c
        .update_credential(as_actor(rename.clone(), BEN.0, BEN.1))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), error_details(&err).0.as_str()),
        (Code::PermissionDenied, "ROLE_REQUIRED")
    );
    let err = c
        .disconnect_credential(as_actor(
            pb::DisconnectCredentialRequest {
                credential_id: id.clone(),
            },
            BEN.0,
            BEN.1,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = m
        .add_member(as_actor(
            add(&id, CY.1, pb::MemberRole::Member),
            BEN.0,
            BEN.1,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let promote = pb::UpdateMemberRoleRequest {
        credential_id: id.clone(),
        email: BEN.1.into(),
        role: pb::MemberRole::Admin as i32,
    };
    let err = m
        .update_member_role(as_actor(promote.clone(), BEN.0, BEN.1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // The Admin promotes Ben; now Ben can rename.
    let promoted = m
        .update_member_role(as_actor(promote, ADA.0, ADA.1))
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert_eq!(promoted.role, pb::MemberRole::Admin as i32);
    c.update_credential(as_actor(rename, BEN.0, BEN.1))
        .await
        .unwrap();

    // Unspecified roles are rejected, naming the field.
    let err = m
        .add_member(as_actor(
            add(&id, CY.1, pb::MemberRole::Unspecified),
            ADA.0,
            ADA.1,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(error_details(&err).1, vec!["role".to_owned()]);
}

#[tokio::test]
async fn the_last_admin_cannot_leave_be_removed_or_demoted() {
    let (b, _fake, id) = setup().await;
    let mut m = b.members().await;
    let leave = pb::RemoveMemberRequest {
        credential_id: id.clone(),
        email: ADA.1.into(),
    };
    let err = m
        .remove_member(as_actor(leave.clone(), ADA.0, ADA.1))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), error_details(&err).0.as_str()),
        (Code::FailedPrecondition, "LAST_ADMIN")
    );
    let demote = pb::UpdateMemberRoleRequest {
        credential_id: id.clone(),
        email: ADA.1.into(),
        role: pb::MemberRole::Member as i32,
    };
    let err = m
        .update_member_role(as_actor(demote.clone(), ADA.0, ADA.1))
        .await
        .unwrap_err();
    assert_eq!(error_details(&err).0, "LAST_ADMIN");

    // An invited Admin does not count until accepted.
    m.add_member(as_actor(
        add(&id, CY.1, pb::MemberRole::Admin),
        ADA.0,
        ADA.1,
    ))
    .await
    .unwrap();
    let err = m
        .remove_member(as_actor(leave.clone(), ADA.0, ADA.1))
        .await
        .unwrap_err();
    assert_eq!(error_details(&err).0, "LAST_ADMIN");
    m.accept_invitation(as_actor(
        pb::AcceptInvitationRequest {
            credential_id: id.clone(),
        },
        CY.0,
        CY.1,
    ))
    .await
    .unwrap();

    // With a second active Admin, Ada may leave; then Cy is the last Admin.
    m.remove_member(as_actor(leave, ADA.0, ADA.1))
        .await
        .unwrap();
    let err = m
        .remove_member(as_actor(
            pb::RemoveMemberRequest {
                credential_id: id.clone(),
                email: CY.1.into(),
            },
            CY.0,
            CY.1,
        ))
        .await
        .unwrap_err();
    assert_eq!(error_details(&err).0, "LAST_ADMIN");
    // Ada is gone: the credential no longer exists for her.
    let err = b
        .credentials()
        .await
        .get_credential(as_actor(
            pb::GetCredentialRequest { credential_id: id },
            ADA.0,
            ADA.1,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn a_member_can_leave_and_the_credential_outlives_its_creator() {
    let (b, _fake, id) = setup().await;
    let mut m = b.members().await;
    let mut c = b.credentials().await;
    for who in [BEN, CY] {
        let role = if who == BEN {
            pb::MemberRole::Admin
        } else {
            pb::MemberRole::Member
        };
        m.add_member(as_actor(add(&id, who.1, role), ADA.0, ADA.1))
            .await
            .unwrap();
        m.accept_invitation(as_actor(
            pb::AcceptInvitationRequest {
                credential_id: id.clone(),
            },
            who.0,
            who.1,
        ))
        .await
        .unwrap();
    }
    // Cy (a Member) leaves on her own.
    m.remove_member(as_actor(
        pb::RemoveMemberRequest {
            credential_id: id.clone(),
            email: CY.1.into(),
        },
        CY.0,
        CY.1,
    ))
    .await
    .unwrap();
    let err = c
        .get_access_token(as_actor(
            pb::GetAccessTokenRequest {
                credential_id: id.clone(),
                ..Default::default()
            },
            CY.0,
            CY.1,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "a former member gets no token");

    // Ada, the creator, leaves the workspace: Ben (Admin) removes her.
    m.remove_member(as_actor(
        pb::RemoveMemberRequest {
            credential_id: id.clone(),
            email: ADA.1.into(),
        },
        BEN.0,
        BEN.1,
    ))
    .await
    .unwrap();
    let t = c
        .get_access_token(as_actor(
            pb::GetAccessTokenRequest {
                credential_id: id.clone(),
                ..Default::default()
            },
            BEN.0,
            BEN.1,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !t.access_token.is_empty(),
        "the credential keeps working for the remaining members"
    );
    let got = c
        .get_credential(as_actor(
            pb::GetCredentialRequest { credential_id: id },
            BEN.0,
            BEN.1,
        ))
        .await
        .unwrap();
    assert_eq!(
        got.into_inner().credential.unwrap().created_by,
        ADA.0,
        "history is kept"
    );
}

#[tokio::test]
async fn concurrent_invitations_of_one_email_have_exactly_one_winner() {
    const RACERS: usize = 8;
    let (b, _fake, id) = setup().await;
    let start = Arc::new(tokio::sync::Barrier::new(RACERS));
    let mut tasks = Vec::new();
    for n in 0..RACERS {
        let mut m = b.members().await;
        let start = Arc::clone(&start);
        let role = if n % 2 == 0 {
            pb::MemberRole::Admin
        } else {
            pb::MemberRole::Member
        };
        let req = as_actor(add(&id, CY.1, role), ADA.0, ADA.1);
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            m.add_member(req).await
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(r) => winners.push(r.into_inner().member.unwrap()),
            Err(err) => assert_eq!(
                (err.code(), error_details(&err).0.as_str()),
                (Code::AlreadyExists, "MEMBER_EXISTS")
            ),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let listed: Vec<_> = b
        .members()
        .await
        .list_members(as_actor(
            pb::ListMembersRequest {
                credential_id: id.clone(),
            },
            ADA.0,
            ADA.1,
        ))
        .await
        .unwrap()
        .into_inner()
        .members
        .into_iter()
        .filter(|m| m.email == CY.1)
        .collect();
    assert_eq!(listed, winners, "the winner's invitation is the one stored");
}

#[tokio::test]
async fn a_role_change_racing_the_acceptance_never_undoes_it() {
    let (b, _fake, id) = setup().await;
    let mut m = b.members().await;
    for round in 0..6 {
        m.add_member(as_actor(
            add(&id, CY.1, pb::MemberRole::Member),
            ADA.0,
            ADA.1,
        ))
        .await
        .unwrap();
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let accept = {
            let mut m = b.members().await;
            let start = Arc::clone(&start);
            let req = as_actor(
                pb::AcceptInvitationRequest {
                    credential_id: id.clone(),
                },
                CY.0,
                CY.1,
            );
            tokio::spawn(async move {
                start.wait().await;
                m.accept_invitation(req).await
            })
        };
        let promote = {
            let mut m = b.members().await;
            let start = Arc::clone(&start);
            let req = as_actor(
                pb::UpdateMemberRoleRequest {
                    credential_id: id.clone(),
                    email: CY.1.into(),
                    role: pb::MemberRole::Admin as i32,
                },
                ADA.0,
                ADA.1,
            );
            tokio::spawn(async move {
                start.wait().await;
                m.update_member_role(req).await
            })
        };
        accept.await.unwrap().unwrap();
        promote.await.unwrap().unwrap();
        let cy = m
            .list_members(as_actor(
                pb::ListMembersRequest {
                    credential_id: id.clone(),
                },
                ADA.0,
                ADA.1,
            ))
            .await
            .unwrap()
            .into_inner()
            .members
            .into_iter()
            .find(|m| m.email == CY.1)
            .unwrap();
        assert_eq!(
            (cy.state, cy.role),
            (pb::MemberState::Active as i32, pb::MemberRole::Admin as i32),
            "round {round}"
        );
        m.remove_member(as_actor(
            pb::RemoveMemberRequest {
                credential_id: id.clone(),
                email: CY.1.into(),
            },
            ADA.0,
            ADA.1,
        ))
        .await
        .unwrap();
    }
}

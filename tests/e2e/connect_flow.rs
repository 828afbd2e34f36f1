//! The OAuth connect flow end to end: StartConnect → the provider's authorize page → CompleteConnect,
//! reconnect, several accounts, every failure mode, and disconnect with revocation.

use crate::support::broker::{TestBroker, assert_status, error_details, with_fake_provider};
use crate::support::client::{ALICE, Actor, Client, callback_request};
use crate::support::fake_provider::{FakeConfig, FakeProvider, TokenFailure};
use cb_oauth::catalog::Quirk;
use cb_proto::v1 as pb;
use credential_broker::runtime::config::Config;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

const BEN: Actor = Actor::new("u-ben", "ben@example.com");
const MALLORY: Actor = Actor::new("u-mallory", "mallory@example.com");
/// An admin of workspace `ws1` (when the calls say so), member of no credential.
const WANDA: Actor = Actor::new("u-wanda", "wanda@example.com");

/// A broker on SQLite with `fake` as provider `fake` with `quirks`, then `tune` applied.
async fn broker_with(
    fake: &FakeProvider,
    quirks: &[Quirk],
    tune: impl FnOnce(&mut Config),
) -> TestBroker {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let url = format!("sqlite://{}", dir.path().join("broker.db").display());
    let mut config = TestBroker::config(&dir, url);
    with_fake_provider(&mut config, fake, "fake", quirks);
    tune(&mut config);
    TestBroker::start(config, dir).await.unwrap()
}

async fn broker(fake: &FakeProvider) -> TestBroker {
    broker_with(fake, &[], |_| {}).await
}

async fn start(c: &mut Client, scopes: &[&str]) -> pb::StartConnectResponse {
    c.start_connect_scopes("fake", scopes).await.unwrap()
}

/// Follows the authorization URL at the fake and returns the callback parameters.
async fn approve(fake: &FakeProvider, url: &str) -> HashMap<String, String> {
    fake.approve(&url::Url::parse(url).unwrap())
        .await
        .query_pairs()
        .into_owned()
        .collect()
}

async fn complete(
    c: &mut Client,
    q: &HashMap<String, String>,
) -> Result<pb::CompleteConnectResponse, tonic::Status> {
    c.complete_connect_with(callback_request(q)).await
}

/// StartConnect, the provider's consent, CompleteConnect, all by `c`.
async fn try_connect(
    fake: &FakeProvider,
    c: &mut Client,
) -> Result<pb::CompleteConnectResponse, tonic::Status> {
    let s = start(c, &[]).await;
    let q = approve(fake, &s.authorization_url).await;
    complete(c, &q).await
}

async fn connect(fake: &FakeProvider, c: &mut Client) -> pb::CompleteConnectResponse {
    try_connect(fake, c).await.unwrap()
}

/// The id of the credential a successful connect through `fake` made.
async fn connected_id(fake: &FakeProvider, c: &mut Client) -> String {
    let done = connect(fake, c).await;
    done.credential
        .expect("a connect answers the credential")
        .credential_id
}

/// GetAccessToken of `id` (no usage context).
async fn token(c: &mut Client, id: &str) -> pb::GetAccessTokenResponse {
    c.token_with(pb::GetAccessTokenRequest {
        credential_id: id.to_owned(),
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn access_token(c: &mut Client, id: &str) -> String {
    token(c, id).await.access_token
}

/// The credential as `c` sees it, without the usage columns (written in the background).
async fn snapshot(c: &mut Client, id: &str) -> pb::Credential {
    let mut cred = c.get(id).await.unwrap();
    cred.last_used_time = None;
    cred.recent_workflows.clear();
    cred.workflow_count = 0;
    cred
}

async fn member_emails(c: &mut Client, id: &str) -> Vec<String> {
    let members = c.list_members(id).await.unwrap();
    members.into_iter().map(|m| m.email).collect()
}

/// The `credential.connect` / `credential.reconnect` events about `id`, newest first.
async fn connect_events(c: &mut Client, id: &str) -> Vec<pb::AuditEvent> {
    let mut events = audit_page(c, id).await;
    events.retain(|e| e.action.starts_with("credential.") && e.action.ends_with("connect"));
    events
}

/// The newest 1000 audit events (about `credential_id` unless it is empty).
async fn audit_page(c: &mut Client, credential_id: &str) -> Vec<pb::AuditEvent> {
    c.audit_events(credential_id).await.unwrap()
}

async fn list(c: &mut Client) -> Vec<pb::Credential> {
    c.list().await.unwrap()
}

/// A broker with `fake`, and Alice's client with the id of one credential she connected.
async fn connected(fake: &FakeProvider) -> (TestBroker, Client, String) {
    let b = broker(fake).await;
    let mut c = b.client(ALICE).await;
    let id = connected_id(fake, &mut c).await;
    (b, c, id)
}

#[tokio::test]
async fn the_catalog_lists_fifty_plus_services_with_described_scopes() {
    let fake = FakeProvider::start(FakeConfig::default()).await;
    let b = broker(&fake).await;
    let providers = b
        .credentials()
        .await
        .list_providers(pb::ListProvidersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .providers;
    assert!(providers.len() >= 54, "{} providers", providers.len());
    for id in ["gmail", "slack", "github", "dropbox", "fake"] {
        let p = providers
            .iter()
            .find(|p| p.provider_id == id)
            .unwrap_or_else(|| panic!("{id} missing"));
        assert!(
            p.scopes.iter().all(|s| !s.description.is_empty()),
            "{id} has undescribed scopes"
        );
    }
    let gmail = providers.iter().find(|p| p.provider_id == "gmail").unwrap();
    assert!(!gmail.configured);
    assert!(
        gmail
            .missing_settings
            .iter()
            .any(|s| s.contains("CREDENTIAL_BROKER_PROVIDER_GMAIL_CLIENT_SECRET"))
    );
    let fake_entry = providers.iter().find(|p| p.provider_id == "fake").unwrap();
    assert!(fake_entry.configured && fake_entry.custom);
    let configured = b
        .credentials()
        .await
        .list_providers(pb::ListProvidersRequest {
            configured_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .providers;
    assert_eq!(
        configured
            .iter()
            .map(|p| p.provider_id.as_str())
            .collect::<Vec<_>>(),
        vec!["fake"]
    );
}

#[tokio::test]
async fn connect_creates_a_credential_and_the_same_account_again_updates_it() {
    let fake = FakeProvider::start(FakeConfig::default()).await;
    let b = broker(&fake).await;
    let mut c = b.client(ALICE).await;
    let s = start(&mut c, &[]).await;
    assert_eq!(
        s.requested_scopes
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        vec!["read"]
    );
    assert!(
        !s.requested_scopes[0].description.is_empty(),
        "scopes come with descriptions"
    );
    let url = url::Url::parse(&s.authorization_url).unwrap();
    let q: HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(q["state"], s.state);
    assert_eq!(q["code_challenge_method"], "S256", "PKCE is used");
    assert!(
        !s.authorization_url.contains("secret"),
        "no client secret in the URL"
    );

    let q = approve(&fake, &s.authorization_url).await;
    let done = complete(&mut c, &q).await.unwrap();
    assert_eq!(done.outcome, pb::ConnectOutcome::Created as i32);
    let cred = done.credential.unwrap();
    assert_eq!(
        cred.caller_role,
        pb::MemberRole::Admin as i32,
        "the connector is Admin"
    );
    assert_eq!(cred.account.as_ref().unwrap().subject, "user-1");
    assert!(
        cred.display_name.starts_with("Fake"),
        "default name from service and account: {}",
        cred.display_name
    );
    assert!(cred.has_refresh_token);

    // The same account again: the existing credential's tokens are updated, no twin.
    let again = connect(&fake, &mut c).await;
    assert_eq!(again.outcome, pb::ConnectOutcome::UpdatedExisting as i32);
    assert_eq!(again.credential.unwrap().credential_id, cred.credential_id);

    // Another account of the same service: a second credential.
    fake.configure(|f| f.subject = "user-2".into());
    let second = connect(&fake, &mut c).await;
    assert_eq!(second.outcome, pb::ConnectOutcome::Created as i32);
    assert_ne!(second.credential.unwrap().credential_id, cred.credential_id);
    assert_eq!(list(&mut c).await.len(), 2);
}

#[tokio::test]
async fn a_partial_grant_stores_what_was_granted() {
    let fake = FakeProvider::start(FakeConfig {
        granted_scopes: Some(vec!["read".into()]),
        ..FakeConfig::default()
    })
    .await;
    let b = broker(&fake).await;
    let mut c = b.client(ALICE).await;
    let s = start(&mut c, &["read", "write"]).await;
    let q = approve(&fake, &s.authorization_url).await;
    let cred = complete(&mut c, &q).await.unwrap().credential.unwrap();
    assert_eq!(cred.granted_scopes, vec!["read".to_owned()]);
}

#[tokio::test]
async fn every_failure_is_distinct_and_leaves_nothing_behind() {
    let fake = FakeProvider::start(FakeConfig::default()).await;
    let b = broker(&fake).await;
    let mut c = b.client(ALICE).await;

    // The user denies at the provider.
    fake.configure(|f| f.deny = true);
    let s = start(&mut c, &[]).await;
    let q = approve(&fake, &s.authorization_url).await;
    let err = complete(&mut c, &q).await.unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "PROVIDER_DENIED");
    fake.configure(|f| f.deny = false);

    // A state used twice.
    let s = start(&mut c, &[]).await;
    let q = approve(&fake, &s.authorization_url).await;
    complete(&mut c, &q).await.unwrap();
    let err = complete(&mut c, &q).await.unwrap_err();
    assert_eq!(error_details(&err).0, "CONNECT_STATE_REPLAYED");

    // An expired state (sessions last 10 minutes).
    let s = start(&mut c, &[]).await;
    let q = approve(&fake, &s.authorization_url).await;
    b.clock.advance(Duration::from_secs(601));
    let err = complete(&mut c, &q).await.unwrap_err();
    assert_eq!(error_details(&err).0, "CONNECT_STATE_EXPIRED");

    // An unknown state.
    let mut forged = q.clone();
    forged.insert("state".into(), "not-a-state-we-issued".into());
    let err = complete(&mut c, &forged).await.unwrap_err();
    assert_eq!(error_details(&err).0, "CONNECT_STATE_UNKNOWN");

    // Another user cannot complete Alice's flow.
    let s = start(&mut c, &[]).await;
    let q = approve(&fake, &s.authorization_url).await;
    let err = complete(&mut c.acting_as(MALLORY), &q).await.unwrap_err();
    assert_eq!(error_details(&err).0, "CONNECT_STATE_OTHER_USER");

    // A code the provider rejects (wrong, or for another client).
    let s = start(&mut c, &[]).await;
    let mut q = approve(&fake, &s.authorization_url).await;
    q.insert("code".into(), "code-for-someone-else".into());
    let err = complete(&mut c, &q).await.unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "CODE_EXCHANGE_FAILED");

    // The token endpoint is down.
    let s = start(&mut c, &[]).await;
    let q = approve(&fake, &s.authorization_url).await;
    fake.push_token_failure(TokenFailure::ServerError);
    let err = complete(&mut c, &q).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);

    // Only the one successful connect created anything.
    assert_eq!(list(&mut c).await.len(), 1);
}

#[tokio::test]
async fn start_connect_validates_its_input() {
    let fake = FakeProvider::start(FakeConfig::default()).await;
    let b = broker(&fake).await;
    let mut c = b.client(ALICE).await;
    let alice = c.clone();
    let req = |provider: &str, scopes: Vec<&str>, redirect: &str| {
        alice.request(pb::StartConnectRequest {
            workspace_id: "ws1".into(),
            provider_id: provider.into(),
            scopes: scopes.into_iter().map(String::from).collect(),
            redirect_uri: redirect.into(),
            ..Default::default()
        })
    };
    let err = c
        .creds
        .start_connect(req("fake", vec![], "https://evil.example/cb"))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), error_details(&err).1),
        (Code::InvalidArgument, vec!["redirect_uri".to_owned()])
    );
    let err = c
        .creds
        .start_connect(req(
            "fake",
            vec!["admin"],
            crate::support::broker::REDIRECT_URI,
        ))
        .await
        .unwrap_err();
    assert_eq!(error_details(&err).1, vec!["scopes[0]".to_owned()]);
    let err = c
        .creds
        .start_connect(req("gmail", vec![], crate::support::broker::REDIRECT_URI))
        .await
        .unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "PROVIDER_NOT_CONFIGURED");
    assert!(
        err.message().contains("providers.gmail.client_id"),
        "{}",
        err.message()
    );
    let err = c
        .creds
        .start_connect(req(
            "no-such-service",
            vec![],
            crate::support::broker::REDIRECT_URI,
        ))
        .await
        .unwrap_err();
    assert_status(&err, Code::NotFound, "PROVIDER_NOT_FOUND");
}

#[tokio::test]
async fn reconnect_keeps_the_credential_and_rejects_another_account() {
    let fake = FakeProvider::start(FakeConfig {
        rotate_refresh_tokens: true,
        ..FakeConfig::default()
    })
    .await;
    let b = broker(&fake).await;
    let mut c = b.client(ALICE).await;
    let cred = connect(&fake, &mut c).await.credential.unwrap();
    let id = cred.credential_id.clone();
    let original = access_token(&mut c, &id).await;
    // Same account: RECONNECTED, same id.
    let s = c.start_reconnect(&id).await.unwrap();
    let q = approve(&fake, &s.authorization_url).await;
    let done = complete(&mut c, &q).await.unwrap();
    assert_eq!(done.outcome, pb::ConnectOutcome::Reconnected as i32);
    assert_eq!(done.credential.unwrap().credential_id, id);
    // The replaced grant is revoked once the new one is stored.
    assert_eq!(fake.revocations(), 1);
    assert!(fake.is_revoked(&original));
    let before = access_token(&mut c, &id).await;

    // Another account: ACCOUNT_MISMATCH, and the old tokens stay.
    fake.configure(|f| f.subject = "someone-else".into());
    let s = c.start_reconnect(&id).await.unwrap();
    let q = approve(&fake, &s.authorization_url).await;
    let err = complete(&mut c, &q).await.unwrap_err();
    assert_status(&err, Code::FailedPrecondition, "ACCOUNT_MISMATCH");
    let after = access_token(&mut c, &id).await;
    assert_eq!(after, before);
    assert!(fake.is_valid_access_token(&after));
    assert_eq!(
        list(&mut c).await.len(),
        1,
        "no credential for the other account either"
    );
    assert_eq!(
        fake.revocations(),
        2,
        "the other account's grant, exchanged but not kept, is revoked"
    );
    let events = connect_events(&mut c, &id).await;
    let details: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| (e.action.as_str(), e.outcome.as_str(), e.detail.as_str()))
        .collect();
    assert_eq!(
        details[..2],
        [
            (
                "credential.connect",
                "ACCOUNT_MISMATCH",
                "new_grant=revoked"
            ),
            ("credential.reconnect", "ok", "replaced_grant=revoked"),
        ],
        "{details:?}"
    );
}

#[tokio::test]
async fn a_reconnect_without_a_new_refresh_token_keeps_the_grant_at_the_provider() {
    let fake = FakeProvider::start(FakeConfig::default()).await;
    let (_b, mut c, id) = connected(&fake).await;
    let original = access_token(&mut c, &id).await;
    fake.configure(|f| f.issue_refresh_tokens = false);
    let s = c.start_reconnect(&id).await.unwrap();
    let q = approve(&fake, &s.authorization_url).await;
    let done = complete(&mut c, &q).await.unwrap();
    assert_eq!(done.outcome, pb::ConnectOutcome::Reconnected as i32);
    assert_eq!(
        fake.revocations(),
        0,
        "no new refresh token: nothing revoked"
    );
    assert!(!fake.is_revoked(&original));
    assert_eq!(
        connect_events(&mut c, &id).await[0].detail,
        "replaced_grant=kept"
    );
}

#[tokio::test]
async fn a_non_member_connecting_a_connected_account_gets_no_role_and_its_grant_is_revoked() {
    let fake = FakeProvider::start(FakeConfig::default()).await;
    let (_b, mut c, id) = connected(&fake).await;
    let token = access_token(&mut c, &id).await;
    let before = snapshot(&mut c, &id).await;

    // Mallory knows the account's password (a shared mailbox): she consents as that account.
    let err = try_connect(&fake, &mut c.acting_as(MALLORY))
        .await
        .unwrap_err();
    assert_status(&err, Code::AlreadyExists, "CREDENTIAL_ALREADY_CONNECTED");
    assert!(
        err.message().contains(&id),
        "names the credential to ask an Admin about: {}",
        err.message()
    );
    assert_eq!(
        fake.revocations(),
        1,
        "the grant she just minted is revoked"
    );

    // The credential, its tokens and its members are as they were; she still cannot see it.
    assert_eq!(snapshot(&mut c, &id).await, before);
    assert!(fake.is_valid_access_token(&token));
    assert_eq!(access_token(&mut c, &id).await, token);
    assert_eq!(member_emails(&mut c, &id).await, [ALICE.email]);
    let err = c.acting_as(MALLORY).get(&id).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(list(&mut c).await.len(), 1);

    // The refusal is audited: who, which credential, why, and what became of her grant.
    let events = connect_events(&mut c, &id).await;
    let denial = events
        .iter()
        .find(|e| e.actor == MALLORY.id)
        .unwrap_or_else(|| panic!("no event for mallory: {events:?}"));
    assert_eq!(
        (
            denial.action.as_str(),
            denial.outcome.as_str(),
            denial.detail.as_str()
        ),
        (
            "credential.connect",
            "CREDENTIAL_ALREADY_CONNECTED",
            "new_grant=revoked"
        )
    );
}

#[tokio::test]
async fn members_and_workspace_admins_refresh_it_by_connecting_and_the_replaced_grant_is_revoked() {
    let fake = FakeProvider::start(FakeConfig::default()).await;
    let (_b, mut c, id) = connected(&fake).await;
    c.add_member(&id, BEN.email, pb::MemberRole::Member)
        .await
        .unwrap();
    c.acting_as(BEN).accept_invitation(&id).await.unwrap();

    // A Member connecting the account again refreshes the credential and stays a Member.
    let first = access_token(&mut c, &id).await;
    let done = try_connect(&fake, &mut c.acting_as(BEN)).await.unwrap();
    assert_eq!(done.outcome, pb::ConnectOutcome::UpdatedExisting as i32);
    let cred = done.credential.unwrap();
    assert_eq!(
        (cred.credential_id.as_str(), cred.caller_role),
        (id.as_str(), pb::MemberRole::Member as i32)
    );
    assert_eq!(fake.revocations(), 1);
    assert!(fake.is_revoked(&first), "the replaced grant is revoked");
    let second = access_token(&mut c, &id).await;
    assert_ne!(second, first);
    assert!(fake.is_valid_access_token(&second));

    // A workspace admin acts as Admin without becoming a member.
    let done = try_connect(&fake, &mut c.acting_as(WANDA).admin_of("ws1"))
        .await
        .unwrap();
    assert_eq!(done.outcome, pb::ConnectOutcome::UpdatedExisting as i32);
    assert_eq!(
        done.credential.unwrap().caller_role,
        pb::MemberRole::Admin as i32
    );
    assert_eq!(fake.revocations(), 2);
    assert!(fake.is_revoked(&second));
    assert!(fake.is_valid_access_token(&access_token(&mut c, &id).await));
    assert_eq!(member_emails(&mut c, &id).await, [ALICE.email, BEN.email]);

    let events = connect_events(&mut c, &id).await;
    let by = |actor: &str| {
        events
            .iter()
            .find(|e| e.actor == actor)
            .map(|e| (e.outcome.as_str(), e.detail.as_str()))
    };
    assert_eq!(by(BEN.id), Some(("ok", "replaced_grant=revoked")));
    assert_eq!(by(WANDA.id), Some(("ok", "replaced_grant=revoked")));
}

#[tokio::test]
async fn disconnect_revokes_at_the_provider_and_destroys_tokens_even_when_revocation_fails() {
    let fake = FakeProvider::start(FakeConfig::default()).await;
    let b = broker(&fake).await;
    let mut c = b.client(ALICE).await;
    let first = connect(&fake, &mut c).await.credential.unwrap();
    let disc = disconnect(&mut c, &first.credential_id).await;
    assert_eq!(disc.revocation, pb::RevocationOutcome::Revoked as i32);
    assert_eq!(fake.revocations(), 1, "revocation observed at the provider");

    fake.configure(|f| {
        f.subject = "user-2".into();
        f.revoke_fails = true;
    });
    let second = connect(&fake, &mut c).await.credential.unwrap();
    let disc = disconnect(&mut c, &second.credential_id).await;
    assert_eq!(disc.revocation, pb::RevocationOutcome::Failed as i32);
    assert!(!disc.revocation_detail.is_empty());
    let cred = disc.credential.unwrap();
    assert_eq!(cred.status, pb::CredentialStatus::Disconnected as i32);
    assert!(
        !cred.has_refresh_token,
        "tokens destroyed although the provider did not revoke"
    );
}

#[tokio::test]
async fn callback_parameters_become_provider_extras_where_the_provider_needs_them() {
    let fake = FakeProvider::start(FakeConfig::default()).await;
    let b = broker_with(&fake, &[Quirk::QuickbooksRealmId], |_| {}).await;
    let mut c = b.client(ALICE).await;

    // QuickBooks puts the company id (realmId) in the redirect; without it the connect fails.
    let s = start(&mut c, &[]).await;
    let q = approve(&fake, &s.authorization_url).await;
    let err = complete(&mut c, &q).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    let s = start(&mut c, &[]).await;
    let q = approve(&fake, &s.authorization_url).await;
    let done = c
        .complete_connect_with(pb::CompleteConnectRequest {
            callback_params: [("realmId".to_owned(), "4620816365".to_owned())].into(),
            ..callback_request(&q)
        })
        .await
        .unwrap();
    let id = done.credential.unwrap().credential_id;
    let t = token(&mut c, &id).await;
    assert_eq!(
        t.provider_extras.get("realmId").map(String::as_str),
        Some("4620816365")
    );
}

#[tokio::test]
async fn the_atlassian_cloud_id_and_xero_tenant_are_looked_up_after_connecting() {
    for (quirk, extra) in [
        (Quirk::AtlassianCloudId, "cloud_id"),
        (Quirk::XeroTenantId, "tenant_id"),
    ] {
        let fake = FakeProvider::start(FakeConfig::default()).await;
        let b = broker_with(&fake, &[quirk], |_| {}).await;
        let mut c = b.client(ALICE).await;
        let id = connected_id(&fake, &mut c).await;
        let t = token(&mut c, &id).await;
        let port = url::Url::parse(&fake.base_url()).unwrap().port().unwrap();
        let prefix = if extra == "cloud_id" {
            "cloud"
        } else {
            "tenant"
        };
        assert_eq!(
            t.provider_extras.get(extra),
            Some(&format!("{prefix}-{port}")),
            "{quirk:?}"
        );
    }
}

/// A broker whose provider `fake` ends the user's whole authorization on any revocation, as
/// Google and GitHub do.
async fn broker_sharing_authorization(fake: &FakeProvider) -> TestBroker {
    broker_with(fake, &[], |config| {
        for spec in &mut config.custom_providers {
            spec.revocation_ends_authorization = true;
        }
    })
    .await
}

async fn disconnect(c: &mut Client, id: &str) -> pb::DisconnectCredentialResponse {
    c.disconnect(id).await.unwrap()
}

#[tokio::test]
async fn where_revocation_ends_the_whole_authorization_no_kept_grant_is_revoked() {
    let fake = FakeProvider::start(FakeConfig::default()).await;
    let b = broker_sharing_authorization(&fake).await;
    let mut c = b.client(ALICE).await;
    let id = connected_id(&fake, &mut c).await;

    // Connecting the same account again replaces the grant: revoking the replaced one would end
    // the new one too at such a provider.
    let again = connect(&fake, &mut c).await;
    assert_eq!(again.credential.unwrap().credential_id, id);
    // A non-member's refused grant is of the same account: kept alive for the same reason.
    let err = try_connect(&fake, &mut c.acting_as(MALLORY))
        .await
        .unwrap_err();
    assert_eq!(error_details(&err).0, "CREDENTIAL_ALREADY_CONNECTED");
    assert_eq!(
        fake.revocations(),
        0,
        "no revocation of a grant of a kept account"
    );
    let token = access_token(&mut c, &id).await;
    assert!(fake.is_valid_access_token(&token));
    let notes: Vec<_> = connect_events(&mut c, &id)
        .await
        .into_iter()
        .map(|e| e.detail)
        .collect();
    assert!(
        notes
            .iter()
            .any(|d| d == "new_grant=kept_shared_authorization")
            && notes
                .iter()
                .any(|d| d == "replaced_grant=kept_shared_authorization"),
        "{notes:?}"
    );

    // The same account in another workspace: disconnecting one credential destroys its tokens
    // but does not revoke, since that would end the other's grant.
    let (access, refresh) = fake.issue_grant("user-1");
    let other = c
        .import(pb::ImportCredentialRequest {
            workspace_id: "ws2".into(),
            provider_id: "fake".into(),
            account: Some(pb::ProviderAccount {
                subject: "user-1".into(),
                label: "user-1".into(),
            }),
            display_name: "same account, other workspace".into(),
            tokens: Some(pb::TokenSet {
                access_token: access.clone(),
                refresh_token: refresh,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .credential_id;
    let first = disconnect(&mut c, &id).await;
    assert_eq!(
        first.revocation,
        pb::RevocationOutcome::Skipped as i32,
        "{first:?}"
    );
    assert!(
        first.revocation_detail.contains("another credential"),
        "{first:?}"
    );
    assert_eq!(fake.revocations(), 0);
    assert!(fake.is_valid_access_token(&access));
    // The last credential of the account: now revocation ends nothing that is kept.
    let last = disconnect(&mut c, &other).await;
    assert_eq!(
        last.revocation,
        pb::RevocationOutcome::Revoked as i32,
        "{last:?}"
    );
    assert_eq!(fake.revocations(), 1);
}

// --- RFC 9207: the authorization server's issuer in the redirect --------------------------------

/// CompleteConnect with `iss` as its own field (empty: none) and, optionally, as
/// `callback_params["iss"]`.
async fn complete_with_iss(
    c: &mut Client,
    q: &HashMap<String, String>,
    iss: &str,
    param_iss: Option<&str>,
) -> Result<pb::CompleteConnectResponse, tonic::Status> {
    c.complete_connect_with(pb::CompleteConnectRequest {
        iss: iss.to_owned(),
        callback_params: param_iss
            .map(|i| [("iss".to_owned(), i.to_owned())].into())
            .unwrap_or_default(),
        ..callback_request(q)
    })
    .await
}

#[tokio::test]
async fn a_declared_issuer_must_come_back_as_iss_before_the_code_is_used() {
    // The fake names itself in every redirect, and its catalog entry declares that issuer.
    let fake = FakeProvider::start(FakeConfig::default()).await;
    let issuer = fake.base_url();
    fake.configure(|c| c.issuer = Some(issuer.clone()));
    let b = broker(&fake).await;
    let mut c = b.client(ALICE).await;
    let mismatch = |err: &tonic::Status| (err.code(), error_details(err).0);
    let refused = (Code::FailedPrecondition, "ISSUER_MISMATCH".to_owned());
    let exchanges = fake.token_calls();

    // No iss where one is declared: refused, and the code never reached the token endpoint.
    let q = approve(&fake, &start(&mut c, &[]).await.authorization_url).await;
    assert_eq!(q.get("iss"), Some(&issuer));
    let err = complete(&mut c, &q).await.unwrap_err();
    assert_eq!(mismatch(&err), refused, "{err:?}");
    assert!(err.message().contains(&issuer), "{err:?}");
    // The attempt is spent: it cannot be completed again, with or without iss.
    let again = complete_with_iss(&mut c, &q, &issuer, None)
        .await
        .unwrap_err();
    assert_eq!(error_details(&again).0, "CONNECT_STATE_REPLAYED");

    // Another server's iss (a mix-up), as the field or among callback_params: refused alike.
    for (field, param) in [
        ("https://other.test", None),
        ("", Some("https://other.test")),
    ] {
        let q = approve(&fake, &start(&mut c, &[]).await.authorization_url).await;
        let err = complete_with_iss(&mut c, &q, field, param)
            .await
            .unwrap_err();
        assert_eq!(mismatch(&err), refused, "{field:?} {param:?}: {err:?}");
    }
    // The right iss as the field with a different one among callback_params: not one of them
    // silently chosen.
    let q = approve(&fake, &start(&mut c, &[]).await.authorization_url).await;
    let err = complete_with_iss(&mut c, &q, &issuer, Some("https://other.test"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(error_details(&err).1, vec!["callback_params".to_owned()]);
    // An error response is checked too: without iss it is not taken for the provider's answer.
    fake.configure(|c| c.deny = true);
    let q = approve(&fake, &start(&mut c, &[]).await.authorization_url).await;
    let err = complete(&mut c, &q).await.unwrap_err();
    assert_eq!(mismatch(&err), refused, "{err:?}");
    let q = approve(&fake, &start(&mut c, &[]).await.authorization_url).await;
    let err = complete_with_iss(&mut c, &q, &issuer, None)
        .await
        .unwrap_err();
    assert_eq!(error_details(&err).0, "PROVIDER_DENIED", "{err:?}");
    fake.configure(|c| c.deny = false);
    assert_eq!(
        fake.token_calls(),
        exchanges,
        "no refused code was exchanged"
    );

    // The right iss, as the field or among callback_params: connected.
    let q = approve(&fake, &start(&mut c, &[]).await.authorization_url).await;
    let created = complete_with_iss(&mut c, &q, &issuer, None).await.unwrap();
    assert_eq!(created.outcome, pb::ConnectOutcome::Created as i32);
    let q = approve(&fake, &start(&mut c, &[]).await.authorization_url).await;
    let updated = complete_with_iss(&mut c, &q, "", Some(&issuer))
        .await
        .unwrap();
    assert_eq!(updated.outcome, pb::ConnectOutcome::UpdatedExisting as i32);
    let id = created.credential.unwrap().credential_id;
    assert_eq!(updated.credential.unwrap().credential_id, id);
    // A refusal is audited with its reason.
    let refusals = audit_page(&mut c, "")
        .await
        .into_iter()
        .filter(|e| e.action == "credential.connect" && e.outcome == "ISSUER_MISMATCH")
        .count();
    assert_eq!(refusals, 4);
}

#[tokio::test]
async fn without_a_declared_issuer_iss_is_optional_and_not_compared() {
    let fake = FakeProvider::start(FakeConfig::default()).await;
    let b = broker(&fake).await;
    let mut c = b.client(ALICE).await;
    // No iss at all, as before RFC 9207.
    let first = connect(&fake, &mut c).await;
    assert_eq!(first.outcome, pb::ConnectOutcome::Created as i32);
    // A provider that starts sending iss although its entry declares no issuer: nothing to
    // compare it with, so it is neither required nor refused.
    fake.configure(|c| c.issuer = Some("https://somewhere.test".into()));
    let q = approve(&fake, &start(&mut c, &[]).await.authorization_url).await;
    assert_eq!(
        q.get("iss").map(String::as_str),
        Some("https://somewhere.test")
    );
    let again = complete_with_iss(&mut c, &q, "https://somewhere.test", None)
        .await
        .unwrap();
    assert_eq!(again.outcome, pb::ConnectOutcome::UpdatedExisting as i32);
    let q = approve(&fake, &start(&mut c, &[]).await.authorization_url).await;
    let third = complete_with_iss(&mut c, &q, "", Some("https://elsewhere.test"))
        .await
        .unwrap();
    assert_eq!(third.outcome, pb::ConnectOutcome::UpdatedExisting as i32);
}

//! Workspace OAuth apps through the real API, against the fake provider with several registered
//! clients: who may manage them, which client the provider sees at authorization, exchange,
//! refresh and revocation, secret rotation, deletion of an app in use, and resolution when the
//! deployment has no client of its own. Each scenario runs on SQLite and on PostgreSQL.

use crate::support::broker::{TestBroker, error_details};
use crate::support::client::{ALICE, BOB, Client, verdict_of};
use crate::support::fake_provider::FakeProvider;
use crate::support::pg::on_both_backends;
use crate::support::wait::wait_until_sync;
use cb_proto::v1 as pb;
use prost::Message;
use std::time::Duration;
use tonic::Code;

const APP_CLIENT: &str = "ws1-app-client";
const APP_SECRET: &str = "ws1-app-secret-one";
const APP_SECRET_2: &str = "ws1-app-secret-two";

/// The fake provider, a broker using it as `fake`, an admin of `ws1` (ALICE) and the app she
/// created for `fake` in `ws1`.
async fn scene(db: Option<&str>) -> (FakeProvider, TestBroker, Client, pb::OAuthApp) {
    let fake = FakeProvider::with_app_client(APP_CLIENT, APP_SECRET).await;
    let b = TestBroker::with_fake(&fake, db, |_| {}).await;
    let mut alice = b.client(ALICE).await.admin_of("ws1");
    let app = alice
        .create_app("ws1", "fake", APP_CLIENT, APP_SECRET)
        .await
        .unwrap();
    (fake, b, alice, app)
}

on_both_backends!("apps_", workspace_admins_manage_apps_and_others_are_refused);
on_both_backends!("apps_", connect_refresh_and_revoke_use_the_workspace_app);
on_both_backends!("apps_", rotated_secret_keeps_refreshes_working);
on_both_backends!("apps_", secret_rotation_during_refreshes_fails_none);
on_both_backends!("apps_", the_secret_that_answered_is_on_record);
on_both_backends!("apps_", deleting_an_app_in_use_needs_force_and_names_it);
on_both_backends!(
    "apps_",
    without_a_configured_client_the_workspace_app_is_required
);
on_both_backends!("apps_", diagnosis_names_a_wrong_secret_and_what_to_do);
on_both_backends!("apps_", diagnosis_compares_the_published_metadata);

/// GetOAuthApp.
async fn get_app(client: &mut Client, id: &str) -> Result<pb::OAuthApp, tonic::Status> {
    let request = client.request(pb::GetOAuthAppRequest {
        oauth_app_id: id.into(),
    });
    let answer = client.apps.get_o_auth_app(request).await?.into_inner();
    Ok(answer.oauth_app.expect("the answer holds the app"))
}

/// ListOAuthApps of `workspace` (`provider`: empty for all).
async fn list_apps(
    client: &mut Client,
    workspace: &str,
    provider: &str,
) -> Result<Vec<pb::OAuthApp>, tonic::Status> {
    let request = client.request(pb::ListOAuthAppsRequest {
        workspace_id: workspace.into(),
        provider_id: provider.into(),
    });
    Ok(client
        .apps
        .list_o_auth_apps(request)
        .await?
        .into_inner()
        .oauth_apps)
}

async fn workspace_admins_manage_apps_and_others_are_refused(db: Option<&str>) {
    let fake = FakeProvider::with_app_client(APP_CLIENT, APP_SECRET).await;
    let b = TestBroker::with_fake(&fake, db, |_| {}).await;
    let plain = b.client(ALICE).await;
    let mut admin = plain.admin_of("ws1");

    let app = admin
        .create_app("ws1", "fake", APP_CLIENT, APP_SECRET)
        .await
        .unwrap();
    assert_eq!(app.client_id, APP_CLIENT);
    assert_eq!(app.provider_id, "fake");
    assert_eq!(app.secret_versions, [1]);
    assert!(
        !String::from_utf8_lossy(&app.encode_to_vec()).contains(APP_SECRET),
        "the client secret is never returned"
    );

    // A user who is not an admin of ws1 cannot create, read or list ws1's apps.
    let mut not_admin = plain.acting_as(BOB);
    let err = not_admin
        .create_app("ws1", "fake", "x", "y")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(error_details(&err).0, "WORKSPACE_ADMIN_REQUIRED");
    let err = list_apps(&mut not_admin, "ws1", "").await.unwrap_err();
    assert_eq!(error_details(&err).0, "WORKSPACE_ADMIN_REQUIRED");
    // An admin of another workspace does not even see it.
    let mut other = plain.acting_as(BOB).admin_of("ws2");
    let err = get_app(&mut other, &app.oauth_app_id).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(error_details(&err).0, "OAUTH_APP_NOT_FOUND");

    // The admin reads, lists and edits it.
    let got = get_app(&mut admin, &app.oauth_app_id).await.unwrap();
    assert_eq!(got.oauth_app_id, app.oauth_app_id);
    let listed = list_apps(&mut admin, "ws1", "fake").await.unwrap();
    assert_eq!(listed.len(), 1);
    let updated = admin
        .apps
        .update_o_auth_app(admin.request(pb::UpdateOAuthAppRequest {
            oauth_app_id: app.oauth_app_id.clone(),
            display_name: "Marketing app".into(),
            allowed_scopes: vec!["read".into()],
            update_allowed_scopes: true,
            expected_version: app.version,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .oauth_app
        .unwrap();
    assert_eq!(updated.display_name, "Marketing app");
    assert_eq!(updated.allowed_scopes, ["read"]);
    assert_eq!(updated.version, app.version + 1);
    // A scope the provider does not offer is refused by name.
    let err = admin
        .apps
        .update_o_auth_app(admin.request(pb::UpdateOAuthAppRequest {
            oauth_app_id: app.oauth_app_id.clone(),
            allowed_scopes: vec!["admin".into()],
            update_allowed_scopes: true,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(error_details(&err).1, ["allowed_scopes[0]"]);
    // The app's allowed scopes bound what a connect may ask for.
    let err = admin
        .start_connect_scopes("fake", &["write"])
        .await
        .unwrap_err();
    assert_eq!(error_details(&err).1, ["scopes[0]"]);
    assert!(err.message().contains("Marketing app"), "{}", err.message());

    // Every action is audited, never with the secret.
    b.flush_audit().await;
    let events = admin.audit_events("").await.unwrap();
    for action in ["oauth_app.create", "oauth_app.update"] {
        assert!(
            events
                .iter()
                .any(|e| e.action == action && e.outcome == "ok"),
            "{action} audited"
        );
    }
    assert!(
        events
            .iter()
            .any(|e| e.action == "oauth_app.create" && e.outcome == "WORKSPACE_ADMIN_REQUIRED")
    );
    assert!(events.iter().all(|e| !e.detail.contains(APP_SECRET)));
}

/// StartConnect with `request` (as `client`), the fake's consent, CompleteConnect.
async fn connect_with(
    client: &mut Client,
    fake: &FakeProvider,
    request: pb::StartConnectRequest,
) -> pb::Credential {
    let request = client.request(request);
    let started = client
        .creds
        .start_connect(request)
        .await
        .unwrap()
        .into_inner();
    let callback = fake
        .approve(&url::Url::parse(&started.authorization_url).unwrap())
        .await;
    client.complete_connect(&callback).await.unwrap()
}

/// A connect to `fake` in `workspace` without naming an app.
async fn connect_in(client: &mut Client, fake: &FakeProvider, workspace: &str) -> pb::Credential {
    let request = pb::StartConnectRequest {
        workspace_id: workspace.into(),
        provider_id: "fake".into(),
        redirect_uri: crate::support::broker::REDIRECT_URI.into(),
        ..Default::default()
    };
    connect_with(client, fake, request).await
}

async fn connect_refresh_and_revoke_use_the_workspace_app(db: Option<&str>) {
    let (fake, b, mut alice, _) = scene(db).await;
    let cred = connect_in(&mut alice, &fake, "ws1").await;
    let authorized = fake.authorize_queries();
    assert_eq!(
        authorized
            .last()
            .unwrap()
            .get("client_id")
            .map(String::as_str),
        Some(APP_CLIENT),
        "the authorization request names the workspace app"
    );
    assert_eq!(fake.token_clients("authorization_code"), [APP_CLIENT]);

    // Another workspace without an app keeps the deployment's client.
    let mut bob = b.client(BOB).await;
    let other = connect_in(&mut bob, &fake, "ws2").await;
    let default_client = fake.config().client_id;
    assert_eq!(
        fake.token_clients("authorization_code"),
        [APP_CLIENT, default_client.as_str()]
    );

    // Refreshes go out under the client that minted each grant.
    b.clock.advance(Duration::from_secs(3600));
    alice.token(&cred.credential_id).await.unwrap();
    bob.token(&other.credential_id).await.unwrap();
    let refreshed = fake.token_clients("refresh_token");
    assert_eq!(refreshed.len(), 2);
    assert!(refreshed.contains(&APP_CLIENT.to_owned()));
    assert!(refreshed.contains(&default_client));

    // And so does revocation.
    alice.disconnect(&cred.credential_id).await.unwrap();
    assert_eq!(fake.revocation_clients(), [APP_CLIENT]);
    bob.disconnect(&other.credential_id).await.unwrap();
    assert_eq!(
        fake.revocation_clients(),
        [APP_CLIENT, default_client.as_str()]
    );
}

/// RotateOAuthAppSecret to `secret`, or RetireOAuthAppSecret when it is `None`.
async fn change_secret(
    client: &mut Client,
    app: &str,
    secret: Option<&str>,
) -> Result<pb::OAuthApp, tonic::Status> {
    let answer = match secret {
        Some(secret) => {
            let request = client.request(pb::RotateOAuthAppSecretRequest {
                oauth_app_id: app.into(),
                client_secret: secret.into(),
            });
            client
                .apps
                .rotate_o_auth_app_secret(request)
                .await?
                .into_inner()
                .oauth_app
        }
        None => {
            let request = client.request(pb::RetireOAuthAppSecretRequest {
                oauth_app_id: app.into(),
            });
            client
                .apps
                .retire_o_auth_app_secret(request)
                .await?
                .into_inner()
                .oauth_app
        }
    };
    Ok(answer.expect("the answer holds the app"))
}

/// Asserts the credential is NEEDS_RECONNECT with a reason containing each of `words`.
async fn assert_needs_reconnect_naming(client: &mut Client, id: &str, words: &[&str]) {
    let c = client.get(id).await.unwrap();
    assert_eq!(c.status(), pb::CredentialStatus::NeedsReconnect);
    for word in words {
        assert!(
            c.status_reason.contains(word),
            "{word:?} not in {:?}",
            c.status_reason
        );
    }
}

/// Moves the broker's clock past the token's lifetime and asks for a token: one refresh.
async fn refresh_now(b: &TestBroker, client: &mut Client, id: &str) -> pb::GetAccessTokenResponse {
    b.clock.advance(Duration::from_secs(3600));
    client.token(id).await.expect("the refresh succeeds")
}

async fn rotated_secret_keeps_refreshes_working(db: Option<&str>) {
    let (fake, b, mut alice, app) = scene(db).await;
    let cred = connect_in(&mut alice, &fake, "ws1").await;
    refresh_now(&b, &mut alice, &cred.credential_id).await;

    // The admin adds the new secret before the provider knows it: the provider refuses the
    // newest secret, the previous one is tried once and the refresh still succeeds.
    let rotated = change_secret(&mut alice, &app.oauth_app_id, Some(APP_SECRET_2))
        .await
        .unwrap();
    assert_eq!(rotated.secret_versions, [2, 1]);
    let errors_before = fake.token_errors();
    refresh_now(&b, &mut alice, &cred.credential_id).await;
    assert_eq!(
        fake.token_errors(),
        errors_before + 1,
        "the newest secret was tried first and refused"
    );
    // A third secret is refused until the previous one is retired.
    let err = change_secret(&mut alice, &app.oauth_app_id, Some("third"))
        .await
        .unwrap_err();
    assert_eq!(error_details(&err).0, "OAUTH_APP_SECRET_LIMIT");

    // The provider switches to the new secret: it is used straight away, no refusal.
    fake.configure(|c| c.extra_clients = vec![(APP_CLIENT.into(), APP_SECRET_2.into())]);
    let errors_before = fake.token_errors();
    refresh_now(&b, &mut alice, &cred.credential_id).await;
    assert_eq!(fake.token_errors(), errors_before);

    // Retiring the old secret leaves the newest; refreshes go on.
    let retired = change_secret(&mut alice, &app.oauth_app_id, None)
        .await
        .unwrap();
    assert_eq!(retired.secret_versions, [2]);
    refresh_now(&b, &mut alice, &cred.credential_id).await;
    let err = change_secret(&mut alice, &app.oauth_app_id, None)
        .await
        .unwrap_err();
    assert_eq!(error_details(&err).0, "OAUTH_APP_NO_PREVIOUS_SECRET");
    assert_eq!(
        fake.token_clients("refresh_token")
            .iter()
            .filter(|c| c.as_str() != APP_CLIENT)
            .count(),
        0,
        "every refresh went out under the app's client"
    );

    // A secret the provider does not accept at all: the refresh fails, says which app, and the
    // grant is kept (the app is to fix, not the user's connection: health CLIENT_MISCONFIGURED).
    fake.configure(|c| c.extra_clients = vec![(APP_CLIENT.into(), "changed-at-provider".into())]);
    b.clock.advance(Duration::from_secs(3600));
    let err = alice.token(&cred.credential_id).await.unwrap_err();
    assert_eq!(error_details(&err).0, "PROVIDER_CLIENT_REJECTED");
    for word in ["invalid_client", app.oauth_app_id.as_str()] {
        assert!(err.message().contains(word), "{word}: {}", err.message());
    }
    let c = alice.get(&cred.credential_id).await.unwrap();
    assert_eq!(c.status(), pb::CredentialStatus::Active);
    assert_eq!(
        c.health.map(|h| h.health()),
        Some(pb::CredentialHealth::ClientMisconfigured)
    );
}

/// Secret rotation while refreshes are at the provider: each step (add the new secret before
/// the provider knows it, the provider switches, retire the old one) happens while a refresh is
/// in flight (held 200 ms at the fake, the step taken once it arrived), and no refresh fails.
async fn secret_rotation_during_refreshes_fails_none(db: Option<&str>) {
    let (fake, b, mut alice, app) = scene(db).await;
    let cred = connect_in(&mut alice, &fake, "ws1").await;
    fake.configure(|c| c.token_delay = Duration::from_millis(200));
    let steps: [(&str, Option<&str>, bool); 3] = [
        ("add the new secret", Some(APP_SECRET_2), false),
        ("the provider switches", None, true),
        ("retire the old secret", None, false),
    ];
    for (step, new_secret, provider_switches) in steps {
        b.clock.advance(Duration::from_secs(3600));
        let arrived = fake.token_clients("refresh_token").len();
        let refresh = {
            let mut client = alice.clone();
            let id = cred.credential_id.clone();
            tokio::spawn(async move { client.token(&id).await })
        };
        wait_until_sync(Duration::from_secs(10), "a refresh at the provider", || {
            fake.token_clients("refresh_token").len() > arrived
        })
        .await;
        if provider_switches {
            fake.configure(|c| c.extra_clients = vec![(APP_CLIENT.into(), APP_SECRET_2.into())]);
        } else {
            change_secret(&mut alice, &app.oauth_app_id, new_secret)
                .await
                .unwrap_or_else(|e| panic!("{step}: {e}"));
        }
        let answered = refresh.await.unwrap();
        assert!(answered.is_ok(), "{step}: {answered:?}");
        // And the next refresh, under the state the step left.
        refresh_now(&b, &mut alice, &cred.credential_id).await;
    }
    let app_now = get_app(&mut alice, &app.oauth_app_id).await.unwrap();
    assert_eq!(app_now.secret_versions, [2], "only the new secret is left");
}

/// (app id, secret version) GetCredential shows for `id`.
async fn app_on_record(client: &mut Client, id: &str) -> (String, i64) {
    let c = client.get(id).await.unwrap();
    (c.oauth_app_id, c.oauth_app_secret_version)
}

async fn the_secret_that_answered_is_on_record(db: Option<&str>) {
    let (fake, b, mut alice, app) = scene(db).await;
    let id = app.oauth_app_id.clone();
    // A new secret added before the provider knows it: the code exchange falls back to the
    // previous one, and the credential records that one.
    change_secret(&mut alice, &id, Some(APP_SECRET_2))
        .await
        .unwrap();
    let cred = connect_in(&mut alice, &fake, "ws1").await.credential_id;
    assert_eq!(app_on_record(&mut alice, &cred).await, (id.clone(), 1));
    b.flush_audit().await;
    let connected = alice.audit_events(&cred).await.unwrap();
    assert!(
        connected.iter().any(|e| e.action == "credential.connect"
            && e.detail.contains("previous_secret=accepted")
            && e.detail.contains(&id)),
        "{connected:?}"
    );

    // The provider takes the new secret: the next refresh answers with it, on record.
    fake.configure(|c| c.extra_clients = vec![(APP_CLIENT.into(), APP_SECRET_2.into())]);
    refresh_now(&b, &mut alice, &cred).await;
    assert_eq!(app_on_record(&mut alice, &cred).await, (id.clone(), 2));

    // The provider goes back to the previous secret: a refresh falls back once (the newest is
    // refused first) and the record follows the secret that answered.
    fake.configure(|c| c.extra_clients = vec![(APP_CLIENT.into(), APP_SECRET.into())]);
    let errors_before = fake.token_errors();
    refresh_now(&b, &mut alice, &cred).await;
    assert_eq!(fake.token_errors(), errors_before + 1);
    assert_eq!(app_on_record(&mut alice, &cred).await, (id.clone(), 1));

    // A credential of the deployment's client shows no app.
    let mut bob = b.client(BOB).await;
    let other = connect_in(&mut bob, &fake, "ws2").await.credential_id;
    assert_eq!(app_on_record(&mut bob, &other).await, (String::new(), 0));
}

async fn deleting_an_app_in_use_needs_force_and_names_it(db: Option<&str>) {
    let (fake, _broker, mut alice, app) = scene(db).await; // _broker keeps it running
    let cred = connect_in(&mut alice, &fake, "ws1").await;
    let delete = |force| pb::DeleteOAuthAppRequest {
        oauth_app_id: app.oauth_app_id.clone(),
        force,
    };

    let err = alice
        .apps
        .delete_o_auth_app(alice.request(delete(false)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(error_details(&err).0, "OAUTH_APP_IN_USE");
    let c = alice.get(&cred.credential_id).await.unwrap();
    assert_eq!(c.status(), pb::CredentialStatus::Active);

    let done = alice
        .apps
        .delete_o_auth_app(alice.request(delete(true)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        done.needs_reconnect_credential_ids,
        std::slice::from_ref(&cred.credential_id)
    );
    assert_needs_reconnect_naming(
        &mut alice,
        &cred.credential_id,
        &[&app.display_name, &app.oauth_app_id],
    )
    .await;
    // Health says the fix is the app, and watchers and webhooks hear of it like any other.
    let health = alice
        .get(&cred.credential_id)
        .await
        .unwrap()
        .health
        .expect("every credential carries its health");
    assert_eq!(
        health.health,
        pb::CredentialHealth::ClientMisconfigured as i32
    );
    assert_eq!(health.last_error_code, "oauth_app_deleted");
    let events = alice.events().await.unwrap();
    assert!(
        events.iter().any(|e| e.credential_id == cred.credential_id
            && e.r#type == pb::CredentialEventType::NeedsReconnect as i32
            && e.cause.contains(&app.oauth_app_id)),
        "{events:?}"
    );
    let err = alice.token(&cred.credential_id).await.unwrap_err();
    assert_eq!(error_details(&err).0, "CREDENTIAL_NEEDS_RECONNECT");
    let err = get_app(&mut alice, &app.oauth_app_id).await.unwrap_err();
    assert_eq!(error_details(&err).0, "OAUTH_APP_NOT_FOUND");
    // Reconnecting goes through today's resolution (the deployment's client here).
    let started = alice.start_reconnect(&cred.credential_id).await.unwrap();
    let callback = fake
        .approve(&url::Url::parse(&started.authorization_url).unwrap())
        .await;
    let c = alice.complete_connect(&callback).await.unwrap();
    assert_eq!(c.status(), pb::CredentialStatus::Active);
    assert_eq!(
        fake.token_clients("authorization_code").last().cloned(),
        Some(fake.config().client_id)
    );
}

async fn without_a_configured_client_the_workspace_app_is_required(db: Option<&str>) {
    let fake = FakeProvider::with_app_client(APP_CLIENT, APP_SECRET).await;
    let b = TestBroker::with_fake(&fake, db, |c| {
        c.providers.remove("fake");
    })
    .await;
    let mut alice = b.client(ALICE).await.admin_of("ws1");
    let err = alice.start_connect("fake").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(error_details(&err).0, "PROVIDER_NOT_CONFIGURED");
    assert!(err.message().contains("provider fake"), "{}", err.message());
    assert!(
        err.message().contains("CreateOAuthApp"),
        "{}",
        err.message()
    );

    let app = alice
        .create_app("ws1", "fake", APP_CLIENT, APP_SECRET)
        .await
        .unwrap();
    // Naming an app that does not exist, or one for another provider, is refused.
    let named = |id: &str| pb::StartConnectRequest {
        workspace_id: "ws1".into(),
        provider_id: "fake".into(),
        redirect_uri: crate::support::broker::REDIRECT_URI.into(),
        oauth_app_id: id.into(),
        ..Default::default()
    };
    let err = alice
        .creds
        .start_connect(alice.request(named("0190c6d2-7a4e-7c39-9d3e-3b1f0d5c2a10")))
        .await
        .unwrap_err();
    assert_eq!(error_details(&err).0, "OAUTH_APP_NOT_FOUND");
    let cred = connect_with(&mut alice, &fake, named(&app.oauth_app_id)).await;
    refresh_now(&b, &mut alice, &cred.credential_id).await;
    assert_eq!(fake.token_clients("refresh_token"), [APP_CLIENT]);
}

async fn diagnosis_names_a_wrong_secret_and_what_to_do(db: Option<&str>) {
    let (fake, _broker, mut alice, app) = scene(db).await; // _broker keeps it running
    use pb::CheckVerdict::{Fail, Pass, Skipped};

    let (checks, ok) = alice.diagnose(&app.oauth_app_id).await;
    assert!(ok, "{checks:?}");
    assert_eq!(verdict_of(&checks, "token_endpoint"), Pass);
    assert_eq!(verdict_of(&checks, "client_authentication"), Pass);
    assert_eq!(verdict_of(&checks, "allowed_scopes"), Skipped);
    assert_eq!(
        verdict_of(&checks, "discovery"),
        Skipped,
        "no issuer declared"
    );
    // The probe is a deliberately invalid code under the app's client: refused as invalid_grant.
    let probe = fake.token_requests().pop().unwrap();
    assert_eq!(probe.client_id.as_deref(), Some(APP_CLIENT));

    // The secret was changed at the provider: the diagnosis says so, and what to do.
    fake.configure(|c| c.extra_clients = vec![(APP_CLIENT.into(), APP_SECRET_2.into())]);
    let (checks, ok) = alice.diagnose(&app.oauth_app_id).await;
    assert!(!ok);
    assert_eq!(verdict_of(&checks, "token_endpoint"), Pass);
    let auth = checks
        .iter()
        .find(|c| c.0 == "client_authentication")
        .unwrap();
    assert_eq!(auth.1, Fail);
    assert!(auth.2.contains("invalid_client"), "{auth:?}");
    assert!(auth.3.contains("RotateOAuthAppSecret"), "{auth:?}");
    for (_, _, detail, hint) in &checks {
        assert!(!detail.contains(APP_SECRET) && !detail.contains(APP_SECRET_2));
        assert!(!hint.contains(APP_SECRET) && !hint.contains(APP_SECRET_2));
    }

    // After following the hint the newest secret passes; the stale one is named for retiring.
    change_secret(&mut alice, &app.oauth_app_id, Some(APP_SECRET_2))
        .await
        .unwrap();
    let (checks, ok) = alice.diagnose(&app.oauth_app_id).await;
    assert!(!ok);
    assert_eq!(verdict_of(&checks, "client_authentication"), Pass);
    let previous = checks.iter().find(|c| c.0 == "previous_secret").unwrap();
    assert_eq!(previous.1, Fail);
    assert!(previous.3.contains("RetireOAuthAppSecret"), "{previous:?}");

    // The provider does not answer: the token endpoint check fails with its own hint.
    fake.configure(|c| {
        c.token_failure = Some(crate::support::fake_provider::TokenFailure::ServerError)
    });
    let (checks, _) = alice.diagnose(&app.oauth_app_id).await;
    assert_eq!(verdict_of(&checks, "token_endpoint"), Fail);
    assert_eq!(verdict_of(&checks, "client_authentication"), Skipped);

    // A redirect URI the broker does not know is refused by name.
    let request = alice.request(pb::TestOAuthAppRequest {
        oauth_app_id: app.oauth_app_id.clone(),
        redirect_uri: "https://elsewhere.test/cb".into(),
    });
    let err = alice.apps.test_o_auth_app(request).await.unwrap_err();
    assert_eq!(error_details(&err).1, ["redirect_uri"]);
}

async fn diagnosis_compares_the_published_metadata(db: Option<&str>) {
    let fake = FakeProvider::with_app_client(APP_CLIENT, APP_SECRET).await;
    let issuer = fake.base_url();
    fake.configure(|c| c.issuer = Some(issuer.clone()));
    // The fake listens on loopback over http: only an operator's outbound setting allows that.
    let b = TestBroker::with_fake(&fake, db, |c| c.outbound.allow_loopback = true).await;
    let mut alice = b.client(ALICE).await.admin_of("ws1");
    let app = alice
        .create_app("ws1", "fake", APP_CLIENT, APP_SECRET)
        .await
        .unwrap();
    let (checks, ok) = alice.diagnose(&app.oauth_app_id).await;
    assert!(ok, "{checks:?}");
    assert_eq!(verdict_of(&checks, "discovery"), pb::CheckVerdict::Pass);
    assert_eq!(
        verdict_of(&checks, "advertised_scopes"),
        pb::CheckVerdict::Pass
    );

    // The metadata names another issuer than the entry declares: a mix-up risk, said plainly.
    fake.configure(|c| c.issuer = Some("https://elsewhere.example".into()));
    let (checks, ok) = alice.diagnose(&app.oauth_app_id).await;
    assert!(!ok);
    let discovery = checks.iter().find(|c| c.0 == "discovery").unwrap();
    assert_eq!(discovery.1, pb::CheckVerdict::Fail);
    assert!(
        discovery.2.contains("https://elsewhere.example"),
        "{discovery:?}"
    );
    assert!(!discovery.3.is_empty());

    // With the default outbound policy the broker does not fetch from loopback over http.
    fake.configure(|c| c.issuer = Some(issuer.clone()));
    let strict = TestBroker::with_fake(&fake, db, |_| {}).await;
    // (Its own workspace and app: on PostgreSQL it shares the database but not the key.)
    let mut admin = strict.client(ALICE).await.admin_of("ws9");
    let app = admin
        .create_app("ws9", "fake", APP_CLIENT, APP_SECRET)
        .await
        .unwrap();
    let (checks, _) = admin.diagnose(&app.oauth_app_id).await;
    let discovery = checks.iter().find(|c| c.0 == "discovery").unwrap();
    assert_eq!(discovery.1, pb::CheckVerdict::Fail);
    assert!(discovery.2.contains("https"), "{discovery:?}");
}

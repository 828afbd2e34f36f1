//! Providers a workspace defines at runtime (decision 27), through the real API against the fake
//! provider over HTTP: discovery from an issuer, connect → token → refresh → revoke through a
//! workspace app without a restart, another replica seeing the provider at once, the outbound
//! policy refusing URLs with clear reasons, redirects not followed, and who may manage them.
//! Scenarios touching storage run on SQLite and on PostgreSQL.

use crate::support::broker::{REDIRECT_URI, TestBroker, error_details};
use crate::support::client::{ALICE, AppCheck, BOB, Client, callback_request, verdict_of};
use crate::support::fake_provider::{FakeConfig, FakeProvider};
use crate::support::pg::on_both_backends;
use cb_proto::v1 as pb;
use prost::Message;
use std::time::Duration;
use tonic::Code;

const APP_CLIENT: &str = "acme-app-client";
const APP_SECRET: &str = "acme-app-secret-9f1c";

/// A broker whose outbound policy lets it reach the fake provider on loopback.
async fn broker(fake: &FakeProvider, db: Option<&str>) -> TestBroker {
    TestBroker::with_fake(fake, db, |c| c.outbound.allow_loopback = true).await
}

/// A definition discovered from `issuer`.
fn discovered(issuer: &str) -> pb::WorkspaceProviderDefinition {
    pb::WorkspaceProviderDefinition {
        display_name: "Acme".into(),
        issuer: issuer.into(),
        discover: true,
        default_scopes: vec!["read".into()],
        ..Default::default()
    }
}

/// CreateWorkspaceProvider `id` in `ws1`.
async fn create(
    client: &mut Client,
    id: &str,
    definition: pb::WorkspaceProviderDefinition,
) -> Result<pb::WorkspaceProvider, tonic::Status> {
    let request = client.request(pb::CreateWorkspaceProviderRequest {
        workspace_id: "ws1".into(),
        provider_id: id.into(),
        definition: Some(definition),
    });
    let answer = client
        .apps
        .create_workspace_provider(request)
        .await?
        .into_inner();
    Ok(answer.provider.expect("the answer holds the provider"))
}

/// StartConnect for `provider` in ws1.
async fn start(
    client: &mut Client,
    provider: &str,
) -> Result<pb::StartConnectResponse, tonic::Status> {
    let request = client.request(pb::StartConnectRequest {
        workspace_id: "ws1".into(),
        provider_id: provider.into(),
        redirect_uri: REDIRECT_URI.into(),
        ..Default::default()
    });
    client
        .creds
        .start_connect(request)
        .await
        .map(tonic::Response::into_inner)
}

on_both_backends!(
    "rtp_",
    discovered_provider_connects_and_refreshes_without_restart
);
on_both_backends!(
    "rtp_",
    workspace_admins_manage_providers_and_others_are_refused
);
on_both_backends!(
    "rtp_",
    workspace_providers_are_listed_and_imported_through_the_app
);

/// ListProviders, naming `workspace` (empty: none).
async fn list_providers(
    client: &mut Client,
    workspace: &str,
    configured_only: bool,
) -> Vec<pb::Provider> {
    let request = client.request(pb::ListProvidersRequest {
        workspace_id: workspace.into(),
        configured_only,
    });
    client
        .creds
        .list_providers(request)
        .await
        .unwrap()
        .into_inner()
        .providers
}

/// ImportCredential of a grant the fake issued to `client_id`, for provider `provider` in ws1.
async fn import(
    client: &mut Client,
    fake: &FakeProvider,
    provider: &str,
    client_id: &str,
    oauth_app_id: &str,
) -> Result<pb::Credential, tonic::Status> {
    let (access, refresh) = fake.issue_grant_to("acct-imported", client_id);
    client
        .import(pb::ImportCredentialRequest {
            workspace_id: "ws1".into(),
            provider_id: provider.into(),
            account: Some(pb::ProviderAccount {
                subject: "acct-imported".into(),
                label: "imported@example.com".into(),
            }),
            display_name: "Imported".into(),
            tokens: Some(pb::TokenSet {
                access_token: access,
                refresh_token: refresh,
                access_token_expire_time: Some(prost_types::Timestamp {
                    seconds: crate::support::broker::t0_secs() + 60,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            granted_scopes: vec!["read".into()],
            oauth_app_id: oauth_app_id.into(),
            ..Default::default()
        })
        .await
}

async fn workspace_providers_are_listed_and_imported_through_the_app(db: Option<&str>) {
    let fake = FakeProvider::with_app_client(APP_CLIENT, APP_SECRET).await;
    let b = broker(&fake, db).await;
    let mut alice = b.client(ALICE).await.admin_of("ws1");
    let base = fake.base_url();
    fake.configure(|c| c.issuer = Some(base.clone()));
    create(&mut alice, "acme", discovered(&base)).await.unwrap();

    // Without a workspace: the catalog alone, nothing marked as a workspace's.
    let catalog = list_providers(&mut alice, "", false).await;
    assert!(catalog.iter().any(|p| p.provider_id == "fake"));
    assert!(
        catalog
            .iter()
            .all(|p| p.provider_id != "acme" && p.workspace_id.is_empty())
    );
    // Naming ws1: its provider too, marked as ws1's, with its scopes; no client before an app.
    let listed = list_providers(&mut alice, "ws1", false).await;
    let ids: Vec<&str> = listed.iter().map(|p| p.provider_id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted, "ordered by id");
    let acme = listed.iter().find(|p| p.provider_id == "acme").unwrap();
    assert_eq!(acme.workspace_id, "ws1");
    assert_eq!(acme.display_name, "Acme");
    assert!(acme.custom && acme.supports_revocation);
    let scopes: Vec<(&str, bool)> = acme
        .scopes
        .iter()
        .map(|s| (s.name.as_str(), s.default_selected))
        .collect();
    assert_eq!(scopes, [("read", true), ("write", false)]);
    assert!(!acme.configured);
    assert!(
        acme.missing_settings[0].contains("CreateOAuthApp"),
        "{acme:?}"
    );
    assert!(
        list_providers(&mut alice, "ws1", true)
            .await
            .iter()
            .all(|p| p.provider_id != "acme"),
        "not connectable yet"
    );
    // Another workspace does not see it.
    assert!(
        list_providers(&mut alice, "ws2", false)
            .await
            .iter()
            .all(|p| p.provider_id != "acme")
    );
    let err = alice
        .creds
        .list_providers(alice.request(pb::ListProvidersRequest {
            workspace_id: "not a workspace!".into(),
            configured_only: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(error_details(&err).1, ["workspace_id"]);

    // Importing tokens of a workspace provider needs its client: the workspace's app.
    let err = import(&mut alice, &fake, "acme", APP_CLIENT, "")
        .await
        .unwrap_err();
    assert_eq!(error_details(&err).0, "PROVIDER_NOT_CONFIGURED");
    assert!(
        err.message().contains("CreateOAuthApp"),
        "{}",
        err.message()
    );
    let err = import(&mut alice, &fake, "nope", APP_CLIENT, "")
        .await
        .unwrap_err();
    assert_eq!(error_details(&err).1, ["provider_id"]);
    let app = alice
        .create_app("ws1", "acme", APP_CLIENT, APP_SECRET)
        .await
        .unwrap();
    let acme = list_providers(&mut alice, "ws1", true)
        .await
        .into_iter()
        .find(|p| p.provider_id == "acme")
        .expect("connectable through the app");
    assert!(acme.configured && acme.missing_settings.is_empty());

    let imported = import(&mut alice, &fake, "acme", APP_CLIENT, "")
        .await
        .unwrap();
    assert_eq!(imported.provider_id, "acme");
    let got = alice.get(&imported.credential_id).await.unwrap();
    assert_eq!(
        (got.oauth_app_id.as_str(), got.oauth_app_secret_version),
        (app.oauth_app_id.as_str(), 1),
        "bound to the workspace's app"
    );
    // Its refresh goes to the workspace provider's token endpoint under the app's client.
    b.clock.advance(Duration::from_secs(3600));
    alice.token(&imported.credential_id).await.unwrap();
    assert_eq!(fake.token_clients("refresh_token"), [APP_CLIENT]);
    // And its revocation too.
    alice.disconnect(&imported.credential_id).await.unwrap();
    assert_eq!(fake.revocation_clients(), [APP_CLIENT]);

    // Naming an app of another provider is refused by field.
    let other = alice
        .create_app("ws1", "fake", APP_CLIENT, APP_SECRET)
        .await
        .unwrap();
    let err = import(&mut alice, &fake, "acme", APP_CLIENT, &other.oauth_app_id)
        .await
        .unwrap_err();
    assert_eq!(error_details(&err).1, ["oauth_app_id"]);
    // A catalog provider's import keeps the deployment's client unless an app is named.
    let (req, _, _) = crate::support::broker::fake_grant_import(
        &fake,
        "acct-default",
        crate::support::broker::t0_secs() + 3600,
    );
    let plain = alice.import(req).await.unwrap();
    let got = alice.get(&plain.credential_id).await.unwrap();
    assert!(got.oauth_app_id.is_empty() && got.oauth_app_secret_version == 0);
}

async fn discovered_provider_connects_and_refreshes_without_restart(db: Option<&str>) {
    let fake = FakeProvider::with_app_client(APP_CLIENT, APP_SECRET).await;
    let b = broker(&fake, db).await;
    // A second replica, running before the provider exists.
    let replica = b.replica().await;
    let mut alice = b.client(ALICE).await.admin_of("ws1");
    let base = fake.base_url();
    // The fake publishes itself as issuer and names itself in redirects (RFC 9207).
    fake.configure(|c| c.issuer = Some(base.clone()));

    let created = create(&mut alice, "acme", discovered(&base)).await.unwrap();
    let d = created.definition.clone().unwrap();
    assert_eq!(d.token_url, format!("{base}/token"));
    assert_eq!(d.authorize_url, format!("{base}/authorize"));
    assert_eq!(d.userinfo_url, format!("{base}/userinfo"));
    assert_eq!(d.revocation_url, format!("{base}/revoke"));
    assert_eq!(d.scopes, ["read", "write"]);
    assert_eq!(d.pkce, "on", "S256 is advertised");
    assert_eq!(d.client_auth, "basic");
    assert_eq!(d.issuer, base);
    assert_eq!(created.discovered_from, base);

    // Without an app of the workspace there is no client: the error names what to create.
    let err = start(&mut alice, "acme").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(error_details(&err).0, "PROVIDER_NOT_CONFIGURED");
    assert!(
        err.message().contains("CreateOAuthApp"),
        "{}",
        err.message()
    );
    assert!(err.message().contains("acme"), "{}", err.message());

    alice
        .create_app("ws1", "acme", APP_CLIENT, APP_SECRET)
        .await
        .unwrap();
    let started = start(&mut alice, "acme").await.unwrap();
    let authorize = url::Url::parse(&started.authorization_url).unwrap();
    assert!(
        started
            .authorization_url
            .starts_with(&format!("{base}/authorize"))
    );
    let query: std::collections::HashMap<_, _> = authorize.query_pairs().into_owned().collect();
    assert_eq!(query.get("client_id").map(String::as_str), Some(APP_CLIENT));
    assert!(query.contains_key("code_challenge"), "PKCE is used");
    // The discovered issuer is declared (RFC 9207): a response without iss is refused...
    let callback = fake.approve(&authorize).await;
    let err = alice.complete_connect(&callback).await.unwrap_err();
    assert_eq!(error_details(&err).0, "ISSUER_MISMATCH");
    // ...and one naming it is accepted.
    let started = start(&mut alice, "acme").await.unwrap();
    let callback = fake
        .approve(&url::Url::parse(&started.authorization_url).unwrap())
        .await;
    let q: std::collections::HashMap<String, String> =
        callback.query_pairs().into_owned().collect();
    assert_eq!(q.get("iss"), Some(&base), "the fake names itself");
    let cred = alice
        .complete_connect_with(pb::CompleteConnectRequest {
            iss: base.clone(),
            ..callback_request(&q)
        })
        .await
        .unwrap()
        .credential
        .unwrap();
    assert_eq!(cred.provider_id, "acme");
    assert_eq!(fake.token_clients("authorization_code"), [APP_CLIENT]);

    // Refresh goes out under the app's client, to the discovered token endpoint.
    b.clock.advance(Duration::from_secs(3600));
    alice.token(&cred.credential_id).await.unwrap();
    assert_eq!(fake.token_clients("refresh_token"), [APP_CLIENT]);

    // The replica, started before the provider existed, uses it without a restart.
    let mut on_replica = replica.client(ALICE).await.admin_of("ws1");
    let started = start(&mut on_replica, "acme").await.unwrap();
    assert!(
        started
            .authorization_url
            .starts_with(&format!("{base}/authorize"))
    );
    let listed = on_replica
        .apps
        .list_workspace_providers(on_replica.request(pb::ListWorkspaceProvidersRequest {
            workspace_id: "ws1".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .providers;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].provider_id, "acme");

    // Revocation also goes to the workspace provider, under the app's client.
    alice.disconnect(&cred.credential_id).await.unwrap();
    assert_eq!(fake.revocation_clients(), [APP_CLIENT]);

    // No client secret in any answer.
    assert!(!String::from_utf8_lossy(&created.encode_to_vec()).contains(APP_SECRET));
}

async fn workspace_admins_manage_providers_and_others_are_refused(db: Option<&str>) {
    let fake = FakeProvider::with_app_client(APP_CLIENT, APP_SECRET).await;
    let b = broker(&fake, db).await;
    let plain = b.client(ALICE).await;
    let mut admin = plain.admin_of("ws1");
    let base = fake.base_url();

    // A member who is not a workspace admin may not define providers.
    let mut member = plain.acting_as(BOB);
    let err = create(&mut member, "acme", discovered(&base))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(error_details(&err).0, "WORKSPACE_ADMIN_REQUIRED");

    // A catalog id cannot be shadowed.
    let err = create(&mut admin, "fake", discovered(&base))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(error_details(&err).0, "WORKSPACE_PROVIDER_EXISTS");

    // Endpoints given by hand; updating replaces the definition.
    let given = pb::WorkspaceProviderDefinition {
        display_name: "Acme by hand".into(),
        authorize_url: format!("{base}/authorize"),
        token_url: format!("{base}/token"),
        userinfo_url: format!("{base}/userinfo"),
        client_auth: "post".into(),
        pkce: "off".into(),
        scope_separator: ",".into(),
        scopes: vec!["read".into()],
        ..Default::default()
    };
    let created = create(&mut admin, "acme", given.clone()).await.unwrap();
    assert_eq!(created.definition.as_ref().unwrap().client_auth, "post");
    assert_eq!(created.definition.as_ref().unwrap().scope_separator, ",");
    assert!(created.discovered_from.is_empty());
    let err = create(&mut admin, "acme", given.clone()).await.unwrap_err();
    assert_eq!(error_details(&err).0, "WORKSPACE_PROVIDER_EXISTS");
    let updated = admin
        .apps
        .update_workspace_provider(admin.request(pb::UpdateWorkspaceProviderRequest {
            workspace_id: "ws1".into(),
            provider_id: "acme".into(),
            definition: Some(discovered(&base)),
            expected_version: created.version,
        }))
        .await
        .unwrap()
        .into_inner()
        .provider
        .unwrap();
    assert_eq!(updated.version, created.version + 1);
    assert_eq!(updated.definition.unwrap().client_auth, "basic");

    // In use by an app: not deleted; after the app, deleted.
    let app = admin
        .create_app("ws1", "acme", APP_CLIENT, APP_SECRET)
        .await
        .unwrap();
    let delete = |c: &Client| {
        c.request(pb::DeleteWorkspaceProviderRequest {
            workspace_id: "ws1".into(),
            provider_id: "acme".into(),
        })
    };
    let err = admin
        .apps
        .delete_workspace_provider(delete(&admin))
        .await
        .unwrap_err();
    assert_eq!(error_details(&err).0, "WORKSPACE_PROVIDER_IN_USE");
    assert!(
        err.message().contains(&app.oauth_app_id),
        "{}",
        err.message()
    );
    admin
        .apps
        .delete_o_auth_app(admin.request(pb::DeleteOAuthAppRequest {
            oauth_app_id: app.oauth_app_id.clone(),
            force: false,
        }))
        .await
        .unwrap();
    admin
        .apps
        .delete_workspace_provider(delete(&admin))
        .await
        .unwrap();
    let err = admin
        .apps
        .get_workspace_provider(admin.request(pb::GetWorkspaceProviderRequest {
            workspace_id: "ws1".into(),
            provider_id: "acme".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(error_details(&err).0, "WORKSPACE_PROVIDER_NOT_FOUND");

    // Audited.
    b.flush_audit().await;
    let events = admin.audit_events("").await.unwrap();
    for action in [
        "workspace_provider.create",
        "workspace_provider.update",
        "workspace_provider.delete",
    ] {
        assert!(
            events
                .iter()
                .any(|e| e.action == action && e.outcome == "ok"),
            "{action} audited"
        );
    }
    assert!(events.iter().any(|e| {
        e.action == "workspace_provider.create" && e.outcome == "WORKSPACE_ADMIN_REQUIRED"
    }));
}

/// The reason and message of a refused CreateWorkspaceProvider.
async fn refused(
    client: &mut Client,
    definition: pb::WorkspaceProviderDefinition,
) -> (Code, String, String) {
    let err = create(client, "acme", definition).await.unwrap_err();
    (err.code(), error_details(&err).0, err.message().to_owned())
}

#[tokio::test]
async fn urls_outside_the_outbound_policy_are_refused_with_clear_reasons() {
    let fake = FakeProvider::with_app_client(APP_CLIENT, APP_SECRET).await;
    // The production policy: no loopback, no private networks.
    let strict = TestBroker::with_fake(&fake, None, |_| {}).await;
    let mut admin = strict.client(ALICE).await.admin_of("ws1");
    let good = |base: &str| pb::WorkspaceProviderDefinition {
        authorize_url: format!("{base}/authorize"),
        token_url: format!("{base}/token"),
        userinfo_url: format!("{base}/userinfo"),
        ..Default::default()
    };

    // Plain http.
    let mut d = good("https://auth.acme.example");
    d.token_url = "http://auth.acme.example/token".into();
    let (code, reason, message) = refused(&mut admin, d).await;
    assert_eq!(
        (code, reason.as_str()),
        (Code::FailedPrecondition, "OUTBOUND_REFUSED")
    );
    assert!(
        message.contains("token_url") && message.contains("https"),
        "{message}"
    );
    // A private address literal.
    let mut d = good("https://auth.acme.example");
    d.userinfo_url = "https://10.1.2.3/userinfo".into();
    let (_, reason, message) = refused(&mut admin, d).await;
    assert_eq!(reason, "OUTBOUND_REFUSED");
    assert!(
        message.contains("userinfo_url") && message.contains("private"),
        "{message}"
    );
    // Cloud metadata (link-local).
    let mut d = good("https://auth.acme.example");
    d.revocation_url = "https://169.254.169.254/latest".into();
    let (_, reason, _) = refused(&mut admin, d).await;
    assert_eq!(reason, "OUTBOUND_REFUSED");
    // A name for loopback, and the fake itself on a loopback address, when loopback is not
    // allowed: discovery is refused before any request.
    let (_, reason, message) = refused(&mut admin, discovered("https://localhost:9")).await;
    assert_eq!(reason, "OUTBOUND_REFUSED");
    assert!(
        message.contains("issuer") && message.contains("loopback"),
        "{message}"
    );
    let (_, reason, _) = refused(&mut admin, discovered(&fake.base_url())).await;
    assert_eq!(reason, "OUTBOUND_REFUSED");
    // Not a URL at all.
    let mut d = good("https://auth.acme.example");
    d.authorize_url = "not a url".into();
    let (code, _, _) = refused(&mut admin, d).await;
    assert_eq!(code, Code::InvalidArgument);
    // Nothing was stored.
    let listed = admin
        .apps
        .list_workspace_providers(admin.request(pb::ListWorkspaceProvidersRequest {
            workspace_id: "ws1".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .providers;
    assert!(listed.is_empty());
}

#[tokio::test]
async fn discovery_of_an_issuer_without_metadata_names_the_problem() {
    let fake = FakeProvider::with_app_client(APP_CLIENT, APP_SECRET).await;
    let b = broker(&fake, None).await;
    let mut admin = b.client(ALICE).await.admin_of("ws1");
    let issuer = format!("{}/nothing-here", fake.base_url());
    let (code, reason, message) = refused(&mut admin, discovered(&issuer)).await;
    assert_eq!(code, Code::FailedPrecondition);
    assert_eq!(reason, "PROVIDER_DISCOVERY_FAILED");
    assert!(message.contains("HTTP 404"), "{message}");
}

#[tokio::test]
async fn a_token_endpoint_that_redirects_is_not_followed() {
    let fake = FakeProvider::with_app_client(APP_CLIENT, APP_SECRET).await;
    let b = broker(&fake, None).await;
    let mut alice = b.client(ALICE).await.admin_of("ws1");
    let base = fake.base_url();
    let mut d = discovered(&base);
    // The fake's /redirect answers 307 to its real token endpoint.
    d.token_url = format!("{base}/redirect");
    create(&mut alice, "acme", d).await.unwrap();
    alice
        .create_app("ws1", "acme", APP_CLIENT, APP_SECRET)
        .await
        .unwrap();
    let started = start(&mut alice, "acme").await.unwrap();
    let callback = fake
        .approve(&url::Url::parse(&started.authorization_url).unwrap())
        .await;
    let err = alice.complete_connect(&callback).await.unwrap_err();
    assert!(err.message().contains("redirect"), "{}", err.message());
    assert!(
        fake.token_clients("authorization_code").is_empty(),
        "the redirect to the real token endpoint was not followed"
    );
}

/// TestOAuthApp's `redirect_uri` check.
async fn redirect_check(client: &mut Client, app_id: &str) -> (pb::OAuthAppCheck, bool) {
    let answer = client
        .apps
        .test_o_auth_app(client.request(pb::TestOAuthAppRequest {
            oauth_app_id: app_id.into(),
            redirect_uri: REDIRECT_URI.into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let check = answer
        .checks
        .into_iter()
        .find(|c| c.name == "redirect_uri")
        .expect("a redirect_uri check");
    (check, answer.ok)
}

#[tokio::test]
async fn diagnosis_tells_an_unregistered_redirect_uri_from_a_registered_one() {
    // The app's client has another redirect URI registered than the broker's.
    let fake = FakeProvider::start(FakeConfig {
        extra_clients: vec![(APP_CLIENT.into(), APP_SECRET.into())],
        client_redirect_uris: vec![(APP_CLIENT.into(), vec!["https://elsewhere.test/cb".into()])],
        ..FakeConfig::default()
    })
    .await;
    let b = broker(&fake, None).await;
    let mut admin = b.client(ALICE).await.admin_of("ws1");
    let app = admin
        .create_app("ws1", "fake", APP_CLIENT, APP_SECRET)
        .await
        .unwrap();

    let (check, ok) = redirect_check(&mut admin, &app.oauth_app_id).await;
    assert_eq!(check.verdict(), pb::CheckVerdict::Fail, "{check:?}");
    assert!(!ok);
    assert!(check.detail.contains("HTTP 400"), "{}", check.detail);
    assert!(
        check.detail.contains("redirect_uri not registered"),
        "{}",
        check.detail
    );
    assert!(
        check.hint.contains(REDIRECT_URI) && check.hint.contains("register"),
        "{}",
        check.hint
    );
    assert!(check.hint.contains(APP_CLIENT), "{}", check.hint);

    // Registered at the provider: the endpoint takes the request (it redirects back).
    fake.configure(|c| {
        c.client_redirect_uris = vec![(APP_CLIENT.into(), vec![REDIRECT_URI.into()])];
    });
    let (check, _) = redirect_check(&mut admin, &app.oauth_app_id).await;
    assert_eq!(check.verdict(), pb::CheckVerdict::Pass, "{check:?}");
    assert!(check.hint.is_empty());
    // The probe's redirect carried a code: never reported.
    assert!(!check.detail.contains("code_"), "{}", check.detail);
}

/// TestOAuthApp for an app of a discovered provider compares the issuer's metadata with the
/// definition the workspace stored: consistent, an endpoint moved since, another issuer.
#[tokio::test]
async fn diagnosis_compares_a_discovered_provider_with_its_current_metadata() {
    let fake = FakeProvider::with_app_client(APP_CLIENT, APP_SECRET).await;
    let b = broker(&fake, None).await;
    let mut alice = b.client(ALICE).await.admin_of("ws1");
    let base = fake.base_url();
    fake.configure(|c| c.issuer = Some(base.clone()));
    create(&mut alice, "acme", discovered(&base)).await.unwrap();
    let app = alice
        .create_app("ws1", "acme", APP_CLIENT, APP_SECRET)
        .await
        .unwrap();
    let discovery = |checks: &[AppCheck]| {
        checks
            .iter()
            .find(|c| c.0 == "discovery")
            .cloned()
            .unwrap_or_else(|| panic!("no discovery check in {checks:?}"))
    };

    let (checks, ok) = alice.diagnose(&app.oauth_app_id).await;
    assert!(ok, "{checks:?}");
    let d = discovery(&checks);
    assert_eq!(d.1, pb::CheckVerdict::Pass, "{d:?}");
    assert!(d.2.contains("workspace's definition"), "{d:?}");
    assert_eq!(
        verdict_of(&checks, "advertised_scopes"),
        pb::CheckVerdict::Pass
    );

    // The provider moved its token endpoint after the workspace read the metadata.
    let moved = format!("{base}/oauth2/token");
    fake.configure(|c| c.metadata_overrides = vec![("token_endpoint".into(), moved.clone())]);
    let (checks, ok) = alice.diagnose(&app.oauth_app_id).await;
    assert!(!ok);
    let d = discovery(&checks);
    assert_eq!(d.1, pb::CheckVerdict::Fail);
    assert!(
        d.2.contains("token_endpoint") && d.2.contains(&moved),
        "{d:?}"
    );
    assert!(d.3.contains("UpdateWorkspaceProvider"), "{d:?}");

    // Its metadata now names another issuer (a mix-up risk).
    fake.configure(|c| {
        c.metadata_overrides.clear();
        c.issuer = Some("https://elsewhere.example".into());
    });
    let (checks, _) = alice.diagnose(&app.oauth_app_id).await;
    let d = discovery(&checks);
    assert_eq!(d.1, pb::CheckVerdict::Fail);
    assert!(d.2.contains("https://elsewhere.example"), "{d:?}");
}

//! The OAuth client (cb-oauth) against the fake authorization server: the authorization code
//! flow, refresh, rotation and reuse detection, revocation, account lookup, provider quirks, and
//! failure classification; the shipped catalog entries of providers that bend the protocol against
//! a fake that bends it the same way, and what the broker makes of them (lifetimes, the verified
//! flag).

use crate::support::fake_provider::{ClientAuth, Dialect, FakeConfig, FakeProvider, TokenFailure};
use cb_oauth::catalog::{AccountSource, AuthStyle, Pkce, ProviderSpec, Quirk};
use cb_oauth::{
    AccountInfo, AuthorizeRequest, ClientCredentials, CodeGrant, HttpConfig, OAuthError, OAuthHttp,
    RevokeOutcome, TokenResponse, authorize_url, parse_callback, pkce_pair, random_state,
};
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeMap;
use std::time::Duration;

const REDIRECT: &str = "https://broker.test/oauth/callback";

fn http() -> OAuthHttp {
    OAuthHttp::new(FakeProvider::http_config()).unwrap()
}

fn no_placeholders() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// A refresh without extras or placeholders.
async fn plain_refresh(
    oauth: &OAuthHttp,
    spec: &ProviderSpec,
    client: &ClientCredentials,
    refresh_token: &SecretString,
) -> Result<TokenResponse, OAuthError> {
    oauth
        .refresh(
            spec,
            client,
            refresh_token,
            &BTreeMap::new(),
            &no_placeholders(),
        )
        .await
}

/// Exchanges `code` at `fake` with its client credentials, `redirect_uri` and `verifier`.
async fn exchange(
    fake: &FakeProvider,
    spec: &ProviderSpec,
    code: &SecretString,
    redirect_uri: &str,
    verifier: Option<&SecretString>,
) -> Result<TokenResponse, OAuthError> {
    let client = fake.client_credentials();
    http()
        .exchange_code(
            spec,
            &client,
            CodeGrant {
                code,
                redirect_uri,
                pkce_verifier: verifier,
            },
            &no_placeholders(),
        )
        .await
}

/// Revokes `token` (with `hint`) at `fake` with its client credentials.
async fn revoke(
    fake: &FakeProvider,
    spec: &ProviderSpec,
    token: &SecretString,
    hint: &str,
) -> Result<RevokeOutcome, OAuthError> {
    let client = fake.client_credentials();
    http()
        .revoke(spec, &client, token, hint, &no_placeholders())
        .await
}

/// The account `tokens` identify at the provider of `spec`.
async fn identify(spec: &ProviderSpec, tokens: &TokenResponse) -> Result<AccountInfo, OAuthError> {
    http().identify(spec, tokens, &no_placeholders()).await
}

/// Runs the browser half (authorize URL → fake approval → callback) and the code exchange.
async fn try_connect(
    fake: &FakeProvider,
    spec: &ProviderSpec,
    scopes: &[&str],
) -> Result<TokenResponse, OAuthError> {
    let (code, verifier) = authorize(fake, spec, scopes).await;
    exchange(fake, spec, &code, REDIRECT, verifier.as_ref()).await
}

/// [`try_connect`], which must succeed.
async fn connect(fake: &FakeProvider, spec: &ProviderSpec, scopes: &[&str]) -> TokenResponse {
    try_connect(fake, spec, scopes).await.unwrap()
}

/// Builds the authorize URL, lets the fake approve it, checks `state` and returns the code and
/// the PKCE verifier (when the spec uses PKCE).
async fn authorize(
    fake: &FakeProvider,
    spec: &ProviderSpec,
    scopes: &[&str],
) -> (SecretString, Option<SecretString>) {
    let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
    let state = random_state();
    let pkce = (spec.pkce != Pkce::None).then(pkce_pair);
    let url = authorize_url(
        spec,
        &fake.client_credentials(),
        &AuthorizeRequest {
            redirect_uri: REDIRECT,
            scopes: &scopes,
            state: state.expose_secret(),
            pkce_challenge: pkce.as_ref().map(|p| p.challenge.as_str()),
        },
        &no_placeholders(),
    )
    .unwrap();
    let back = fake.approve(&url).await;
    assert!(back.as_str().starts_with(REDIRECT));
    let callback = parse_callback(spec, back.query().unwrap_or_default()).unwrap();
    assert_eq!(callback.state.expose_secret(), state.expose_secret());
    (callback.code, pkce.map(|p| p.verifier))
}

fn param(query: &BTreeMap<String, String>, name: &str) -> Option<String> {
    query.get(name).cloned()
}

#[tokio::test]
async fn google_extra_authorize_params_reach_the_provider() {
    let fake = FakeProvider::start(FakeConfig::default()).await;
    let mut spec = fake.spec("google", AuthStyle::Post, Pkce::Supported, &[]);
    // Google's parameters as the built-in catalog declares them.
    let gmail = cb_oauth::catalog::Catalog::builtin().unwrap();
    spec.extra_authorize_params = gmail.get("gmail").unwrap().extra_authorize_params.clone();
    let tokens = connect(&fake, &spec, &["openid", "email"]).await;
    let q = fake.authorize_queries().pop().unwrap();
    assert_eq!(param(&q, "access_type").as_deref(), Some("offline"));
    assert_eq!(param(&q, "prompt").as_deref(), Some("consent"));
    assert_eq!(param(&q, "include_granted_scopes").as_deref(), Some("true"));
    assert_eq!(param(&q, "code_challenge_method").as_deref(), Some("S256"));
    assert_eq!(param(&q, "scope").as_deref(), Some("openid email"));
    assert!(tokens.refresh_token.is_some());
}

#[tokio::test]
async fn dropbox_offline_access_param_and_bearer_revocation() {
    let fake = FakeProvider::start(FakeConfig::default()).await;
    let mut spec = fake.spec("dropbox", AuthStyle::Basic, Pkce::Supported, &[]);
    spec.extra_authorize_params
        .insert("token_access_type".into(), "offline".into());
    spec.revocation_url = Some(format!("{}/2/auth/token/revoke", fake.base_url()));
    let tokens = connect(&fake, &spec, &["files.content.read"]).await;
    let q = fake.authorize_queries().pop().unwrap();
    assert_eq!(param(&q, "token_access_type").as_deref(), Some("offline"));

    // Dropbox revokes with the access token as Bearer; the whole grant goes.
    assert!(cb_oauth::revokes_with_access_token(&spec));
    let refresh = tokens.refresh_token.clone().unwrap();
    let err = revoke(&fake, &spec, &refresh, "refresh_token")
        .await
        .unwrap_err();
    assert!(matches!(err, OAuthError::Config(_)), "{err:?}");
    assert_eq!(fake.revocations(), 0);
    let outcome = revoke(&fake, &spec, &tokens.access_token, "access_token")
        .await
        .unwrap();
    assert_eq!(outcome, RevokeOutcome::Revoked);
    let refresh = tokens.refresh_token.unwrap();
    assert!(fake.is_revoked(refresh.expose_secret()));
}

#[tokio::test]
async fn pkce_and_basic_auth_like_airtable_and_x() {
    let fake = FakeProvider::start(FakeConfig {
        client_auth: Some(ClientAuth::Basic),
        require_pkce: true,
        ..FakeConfig::default()
    })
    .await;
    let spec = fake.spec("airtable", AuthStyle::Basic, Pkce::Required, &[]);
    let tokens = connect(&fake, &spec, &["data.records:read"]).await;
    let seen = fake.token_requests().pop().unwrap();
    assert_eq!(seen.client_auth, "basic");
    assert!(seen.has_code_verifier);
    assert_eq!(seen.grant_type.as_deref(), Some("authorization_code"));
    assert_eq!(tokens.token_type, "Bearer");
    assert_eq!(tokens.expires_in, Some(Duration::from_secs(3600)));
    assert!(fake.is_valid_access_token(tokens.access_token.expose_secret()));

    let account = identify(&spec, &tokens).await.unwrap();
    assert_eq!(account.subject, "user-1");
    assert_eq!(account.label, "user-1@example.com");

    // The same spec with client_secret_post is refused by a server that wants Basic.
    let post = fake.spec("airtable", AuthStyle::Post, Pkce::Required, &[]);
    let err = try_connect(&fake, &post, &["data.records:read"])
        .await
        .unwrap_err();
    assert!(matches!(err, OAuthError::InvalidClient { .. }), "{err:?}");
    assert!(err.is_permanent());
}

#[tokio::test]
async fn codes_are_single_use_and_bound_to_verifier_and_redirect_uri() {
    let fake = FakeProvider::start(FakeConfig {
        require_pkce: true,
        ..FakeConfig::default()
    })
    .await;
    let spec = fake.spec("generic", AuthStyle::Post, Pkce::Required, &[]);

    let (code, _) = authorize(&fake, &spec, &["read"]).await;
    let wrong = pkce_pair().verifier;
    let err = exchange(&fake, &spec, &code, REDIRECT, Some(&wrong))
        .await
        .unwrap_err();
    assert!(matches!(err, OAuthError::InvalidGrant { .. }), "{err:?}");

    let (code, verifier) = authorize(&fake, &spec, &["read"]).await;
    let err = exchange(
        &fake,
        &spec,
        &code,
        "https://elsewhere.test/cb",
        verifier.as_ref(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, OAuthError::InvalidGrant { .. }), "{err:?}");

    let (code, verifier) = authorize(&fake, &spec, &["read"]).await;
    let first = exchange(&fake, &spec, &code, REDIRECT, verifier.as_ref())
        .await
        .unwrap();
    let replay = exchange(&fake, &spec, &code, REDIRECT, verifier.as_ref())
        .await
        .unwrap_err();
    assert!(matches!(replay, OAuthError::InvalidGrant { .. }));
    // A replayed code revokes what it produced (RFC 6749 §4.1.2).
    assert!(fake.is_revoked(first.access_token.expose_secret()));
    // Errors never carry what was sent.
    let shown = format!("{replay:?} {replay}");
    assert!(!shown.contains(code.expose_secret()));
    assert!(!shown.contains("fake-secret"));
}

#[tokio::test]
async fn wrong_client_secret_is_invalid_client() {
    let fake = FakeProvider::start(FakeConfig::default()).await;
    let spec = fake.spec("generic", AuthStyle::Post, Pkce::None, &[]);
    let (_, refresh) = fake.issue_grant("user-9");
    let mut client = fake.client_credentials();
    client.client_secret = SecretString::from("not-the-secret");
    let err = plain_refresh(&http(), &spec, &client, &SecretString::from(refresh))
        .await
        .unwrap_err();
    assert!(matches!(err, OAuthError::InvalidClient { .. }), "{err:?}");
    assert!(!format!("{err:?}").contains("not-the-secret"));
}

#[tokio::test]
async fn access_denied_comes_back_in_the_callback() {
    let fake = FakeProvider::start(FakeConfig {
        deny: true,
        ..FakeConfig::default()
    })
    .await;
    let spec = fake.spec("generic", AuthStyle::Post, Pkce::Supported, &[]);
    let pkce = pkce_pair();
    let url = authorize_url(
        &spec,
        &fake.client_credentials(),
        &AuthorizeRequest {
            redirect_uri: REDIRECT,
            scopes: &["read".to_owned()],
            state: "st",
            pkce_challenge: Some(&pkce.challenge),
        },
        &no_placeholders(),
    )
    .unwrap();
    let back = fake.approve(&url).await;
    let err = parse_callback(&spec, back.query().unwrap_or_default()).unwrap_err();
    assert!(matches!(err, OAuthError::AccessDenied { .. }), "{err:?}");
}

#[tokio::test]
async fn refresh_without_rotation_keeps_the_refresh_token() {
    let fake = FakeProvider::start(FakeConfig::default()).await;
    let spec = fake.spec("google", AuthStyle::Post, Pkce::None, &[]);
    let (access, refresh) = fake.issue_grant("imported-user");
    let refresh = SecretString::from(refresh);
    let t = plain_refresh(&http(), &spec, &fake.client_credentials(), &refresh)
        .await
        .unwrap();
    assert_ne!(t.access_token.expose_secret(), access);
    assert!(t.refresh_token.is_none(), "no rotation: keep the old one");
    assert_eq!(t.expires_in, Some(Duration::from_secs(3600)));
    assert_eq!(fake.refresh_calls(), 1);
    assert!(fake.is_current_refresh_token(refresh.expose_secret()));
    let account = identify(&spec, &t).await.unwrap();
    assert_eq!(account.subject, "imported-user");
}

#[tokio::test]
async fn rotating_refresh_tokens_like_atlassian_and_microsoft() {
    let fake = FakeProvider::start(FakeConfig {
        rotate_refresh_tokens: true,
        ..FakeConfig::default()
    })
    .await;
    let spec = fake.spec("atlassian", AuthStyle::Post, Pkce::None, &[]);
    let client = fake.client_credentials();
    let oauth = http();
    let tokens = connect(&fake, &spec, &["read"]).await;
    let mut current = tokens.refresh_token.unwrap();
    for _ in 0..3 {
        let t = plain_refresh(&oauth, &spec, &client, &current)
            .await
            .unwrap();
        let next = t.refresh_token.expect("rotated refresh token");
        assert_ne!(next.expose_secret(), current.expose_secret());
        assert!(!fake.is_current_refresh_token(current.expose_secret()));
        current = next;
    }
    assert!(fake.is_current_refresh_token(current.expose_secret()));
    assert_eq!(fake.refresh_calls(), 3);
    assert_eq!(fake.reuse_detections(), 0);
}

/// A refresh token presented again after it was rotated, at a fake whose grant is revoked on
/// reuse or not.
struct RotatedReuse {
    fake: FakeProvider,
    spec: ProviderSpec,
    /// The refresh token that was rotated, then reused.
    first: SecretString,
    /// The answer to the first (valid) refresh.
    rotated: TokenResponse,
    /// Its new refresh token.
    second: SecretString,
    /// What presenting `first` again answered.
    reuse: OAuthError,
}

impl RotatedReuse {
    async fn run(provider: &str, reuse_revokes_grant: bool) -> Self {
        let fake = FakeProvider::start(FakeConfig {
            rotate_refresh_tokens: true,
            reuse_revokes_grant,
            ..FakeConfig::default()
        })
        .await;
        let spec = fake.spec(provider, AuthStyle::Post, Pkce::None, &[]);
        let client = fake.client_credentials();
        let (_, first) = fake.issue_grant("user-1");
        let first = SecretString::from(first);
        let oauth = http();
        let rotated = plain_refresh(&oauth, &spec, &client, &first).await.unwrap();
        let second = rotated.refresh_token.clone().unwrap();
        let reuse = plain_refresh(&oauth, &spec, &client, &first)
            .await
            .unwrap_err();
        Self {
            fake,
            spec,
            first,
            rotated,
            second,
            reuse,
        }
    }

    /// Refreshes with the rotated (newest) refresh token.
    async fn refresh_second(&self) -> Result<TokenResponse, OAuthError> {
        let client = self.fake.client_credentials();
        plain_refresh(&http(), &self.spec, &client, &self.second).await
    }
}

#[tokio::test]
async fn reusing_a_rotated_refresh_token_revokes_the_whole_grant() {
    let r = RotatedReuse::run("microsoft", true).await;
    let err = &r.reuse;
    assert!(matches!(err, OAuthError::InvalidGrant { .. }), "{err:?}");
    assert!(!format!("{err:?} {err}").contains(r.first.expose_secret()));
    assert_eq!(r.fake.reuse_detections(), 1);
    // The chain is dead: the newest refresh token and the access token with it.
    assert!(!r.fake.is_current_refresh_token(r.second.expose_secret()));
    assert!(r.fake.is_revoked(r.rotated.access_token.expose_secret()));
    let err = r.refresh_second().await.unwrap_err();
    assert!(err.is_permanent());
}

#[tokio::test]
async fn box_single_use_refresh_tokens() {
    let r = RotatedReuse::run("box", false).await;
    assert!(matches!(r.reuse, OAuthError::InvalidGrant { .. }));
    // Without grant-wide revocation the new token still works.
    r.refresh_second().await.unwrap();
}

#[tokio::test]
async fn concurrent_refreshes_with_one_token_are_counted_exactly() {
    let fake = FakeProvider::start(FakeConfig {
        rotate_refresh_tokens: true,
        token_delay: Duration::from_millis(20),
        ..FakeConfig::default()
    })
    .await;
    let spec = fake.spec("atlassian", AuthStyle::Post, Pkce::None, &[]);
    let client = fake.client_credentials();
    let (_, refresh) = fake.issue_grant("user-1");
    let oauth = http();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (oauth, spec, client) = (oauth.clone(), spec.clone(), client.clone());
        let refresh = SecretString::from(refresh.clone());
        tasks.push(tokio::spawn(async move {
            oauth
                .refresh(&spec, &client, &refresh, &BTreeMap::new(), &BTreeMap::new())
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert!(matches!(e, OAuthError::InvalidGrant { .. }), "{e:?}"),
        }
    }
    // Without a coordinator: one winner, seven reuses, and the grant is gone.
    assert_eq!(ok, 1);
    assert_eq!(fake.refresh_calls(), 8);
    assert_eq!(fake.reuse_detections(), 7);
    assert!(fake.is_revoked(&refresh));
}

#[tokio::test]
async fn slack_v2_user_tokens_rotation_and_ok_false_errors() {
    let fake = FakeProvider::start(FakeConfig {
        dialect: Dialect::Slack,
        rotate_refresh_tokens: true,
        access_token_ttl: Some(Duration::from_secs(43_200)),
        ..FakeConfig::default()
    })
    .await;
    let quirks = [
        Quirk::OkFalseErrors,
        Quirk::SlackAuthedUser,
        Quirk::CommaSeparatedScopes,
    ];
    let spec = fake.spec("slack", AuthStyle::Post, Pkce::None, &quirks);
    let tokens = connect(&fake, &spec, &["channels:read", "chat:write"]).await;
    let q = fake.authorize_queries().pop().unwrap();
    assert_eq!(
        param(&q, "user_scope").as_deref(),
        Some("channels:read,chat:write")
    );
    assert_eq!(param(&q, "scope"), None);
    assert_eq!(
        tokens.scope,
        Some(vec!["channels:read".to_owned(), "chat:write".to_owned()])
    );
    assert_eq!(tokens.token_type, "Bearer");
    assert_eq!(tokens.expires_in, Some(Duration::from_secs(43_200)));
    assert_eq!(
        tokens.extras.get("team_id").map(String::as_str),
        Some("T0FAKE")
    );
    assert!(fake.is_valid_access_token(tokens.access_token.expose_secret()));
    let raw = tokens.raw_account.as_ref().unwrap().to_string();
    assert!(!raw.contains(tokens.access_token.expose_secret()));

    let oauth = http();
    let account = identify(&spec, &tokens).await.unwrap();
    assert_eq!(account.subject, "user-1");
    assert_eq!(account.label, "Fake Team");

    // Rotation: the refreshed user token comes at the top level.
    let client = fake.client_credentials();
    let old = tokens.refresh_token.unwrap();
    let t = plain_refresh(&oauth, &spec, &client, &old).await.unwrap();
    let new = t.refresh_token.unwrap();
    assert_ne!(new.expose_secret(), old.expose_secret());
    assert!(fake.is_current_refresh_token(new.expose_secret()));

    // A bad refresh token: HTTP 200 with ok:false, classified as invalid grant.
    let err = plain_refresh(&oauth, &spec, &client, &SecretString::from("xoxe-unknown"))
        .await
        .unwrap_err();
    match &err {
        OAuthError::InvalidGrant { error, .. } => assert_eq!(error, "invalid_refresh_token"),
        other => panic!("unexpected {other:?}"),
    }

    // auth.revoke with the access token as Bearer.
    let outcome = revoke(&fake, &spec, &t.access_token, "access_token")
        .await
        .unwrap();
    assert_eq!(outcome, RevokeOutcome::Revoked);
    assert!(fake.is_revoked(new.expose_secret()));
    // Revoking again: Slack says ok:false invalid_auth.
    let err = revoke(&fake, &spec, &t.access_token, "access_token")
        .await
        .unwrap_err();
    assert!(matches!(err, OAuthError::InvalidGrant { .. }), "{err:?}");
}

#[tokio::test]
async fn github_json_accept_errors_with_200_and_no_expiry() {
    let fake = FakeProvider::start(FakeConfig {
        dialect: Dialect::Github,
        access_token_ttl: None,
        issue_refresh_tokens: false,
        ..FakeConfig::default()
    })
    .await;
    let quirks = [Quirk::GithubJsonAccept, Quirk::CommaSeparatedScopes];
    let mut spec = fake.spec("github", AuthStyle::Post, Pkce::None, &quirks);
    spec.account = AccountSource::Userinfo {
        url: format!("{}/userinfo", fake.base_url()),
        subject_pointer: "/id".into(),
        label_pointer: "/login".into(),
        headers: [("X-GitHub-Api-Version".to_owned(), "2022-11-28".to_owned())]
            .into_iter()
            .collect(),
        body: None,
        token_header: None,
    };
    let tokens = connect(&fake, &spec, &["repo", "read:user"]).await;
    let seen = fake.token_requests().pop().unwrap();
    assert!(seen.accept.unwrap_or_default().contains("application/json"));
    assert_eq!(tokens.expires_in, None);
    assert!(tokens.refresh_token.is_none());
    assert_eq!(
        tokens.scope,
        Some(vec!["repo".to_owned(), "read:user".to_owned()])
    );
    let account = identify(&spec, &tokens).await.unwrap();
    assert!(account.subject.parse::<u64>().is_ok());
    assert_eq!(account.label, "user-1");

    // A bad code: HTTP 200 with {"error": "bad_verification_code"}.
    let bogus = SecretString::from("bogus-code");
    let err = exchange(&fake, &spec, &bogus, REDIRECT, None)
        .await
        .unwrap_err();
    match &err {
        OAuthError::InvalidGrant { error, description } => {
            assert_eq!(error, "bad_verification_code");
            assert_eq!(description.as_deref(), Some("fake github error"));
        }
        other => panic!("unexpected {other:?}"),
    }
    // A bad refresh token (GitHub App expiring tokens): bad_refresh_token.
    let err = plain_refresh(
        &http(),
        &spec,
        &fake.client_credentials(),
        &SecretString::from("ghr_bogus"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, OAuthError::InvalidGrant { error, .. } if error == "bad_refresh_token"),
        "{err:?}"
    );

    // Revocation: DELETE /applications/{client_id}/grant with Basic auth.
    let outcome = revoke(&fake, &spec, &tokens.access_token, "access_token")
        .await
        .unwrap();
    assert_eq!(outcome, RevokeOutcome::Revoked);
    assert!(fake.is_revoked(tokens.access_token.expose_secret()));
}

#[tokio::test]
async fn notion_json_body_basic_auth_and_owner_account() {
    let fake = FakeProvider::start(FakeConfig {
        dialect: Dialect::Notion,
        client_auth: Some(ClientAuth::Basic),
        access_token_ttl: None,
        ..FakeConfig::default()
    })
    .await;
    let spec = fake.spec(
        "notion",
        AuthStyle::Basic,
        Pkce::None,
        &[Quirk::JsonTokenRequest],
    );
    let tokens = connect(&fake, &spec, &[]).await;
    let seen = fake.token_requests().pop().unwrap();
    assert_eq!(seen.client_auth, "basic");
    assert!(
        seen.content_type
            .unwrap_or_default()
            .starts_with("application/json")
    );
    assert_eq!(tokens.expires_in, None);
    assert_eq!(
        tokens.extras.get("workspace_id").map(String::as_str),
        Some("ws-fake")
    );
    let account = identify(&spec, &tokens).await.unwrap();
    assert_eq!(account.subject, "user-1");
    assert_eq!(account.label, "user-1@example.com");

    // Revocation with a JSON body too.
    let outcome = revoke(
        &fake,
        &spec,
        tokens.refresh_token.as_ref().unwrap(),
        "refresh_token",
    )
    .await
    .unwrap();
    assert_eq!(outcome, RevokeOutcome::Revoked);
    assert!(fake.is_revoked(tokens.access_token.expose_secret()));
}

#[tokio::test]
async fn salesforce_refresh_goes_to_the_validated_instance_url() {
    let fake = FakeProvider::start(FakeConfig {
        dialect: Dialect::Salesforce,
        ..FakeConfig::default()
    })
    .await;
    let spec = fake.spec(
        "salesforce",
        AuthStyle::Post,
        Pkce::Supported,
        &[Quirk::SalesforceInstanceUrl],
    );
    let tokens = connect(&fake, &spec, &["api", "refresh_token"]).await;
    assert_eq!(tokens.expires_in, None);
    assert_eq!(
        tokens.extras.get("instance_url").map(String::as_str),
        Some(fake.base_url().as_str())
    );
    assert!(!tokens.extras.contains_key("signature"));
    let refresh = tokens.refresh_token.unwrap();
    let client = fake.client_credentials();
    let t = http()
        .refresh(&spec, &client, &refresh, &tokens.extras, &no_placeholders())
        .await
        .unwrap();
    assert!(t.refresh_token.is_none());
    assert_eq!(
        fake.token_requests().pop().unwrap().path,
        "/services/oauth2/token"
    );

    // A stored instance_url outside Salesforce is refused before anything is sent.
    let calls = fake.token_calls();
    for evil in [
        "https://evil.example.com",
        "http://acme.my.salesforce.com",
        "https://acme.my.salesforce.com.evil.example",
    ] {
        let mut extras = tokens.extras.clone();
        extras.insert("instance_url".into(), evil.into());
        let err = http()
            .refresh(&spec, &client, &refresh, &extras, &no_placeholders())
            .await
            .unwrap_err();
        assert!(matches!(err, OAuthError::Config(_)), "{evil}: {err:?}");
    }
    // Loopback passes only when the client allows it (tests).
    let strict = OAuthHttp::new(HttpConfig::default()).unwrap();
    let err = strict
        .refresh(&spec, &client, &refresh, &tokens.extras, &no_placeholders())
        .await
        .unwrap_err();
    assert!(matches!(err, OAuthError::Config(_)), "{err:?}");
    assert_eq!(fake.token_calls(), calls);
}

#[tokio::test]
async fn partial_scope_grant_is_reported() {
    let fake = FakeProvider::start(FakeConfig {
        granted_scopes: Some(vec!["read".into()]),
        ..FakeConfig::default()
    })
    .await;
    let spec = fake.spec(
        "generic",
        AuthStyle::Post,
        Pkce::Supported,
        &[Quirk::PartialScopeGrant],
    );
    let tokens = connect(&fake, &spec, &["read", "write"]).await;
    assert_eq!(tokens.scope, Some(vec!["read".to_owned()]));
}

#[tokio::test]
async fn no_expires_in_and_no_scope_mean_none() {
    let fake = FakeProvider::start(FakeConfig {
        access_token_ttl: None,
        return_scope: false,
        refresh_token_ttl: Some(Duration::from_secs(86_400)),
        ..FakeConfig::default()
    })
    .await;
    let spec = fake.spec(
        "generic",
        AuthStyle::Post,
        Pkce::Supported,
        &[Quirk::NonExpiringTokens],
    );
    let tokens = connect(&fake, &spec, &["read"]).await;
    assert_eq!(tokens.expires_in, None);
    assert_eq!(tokens.scope, None);
    assert_eq!(
        tokens.refresh_token_expires_in,
        Some(Duration::from_secs(86_400))
    );
}

#[tokio::test]
async fn id_token_account() {
    let fake = FakeProvider::start(FakeConfig {
        issue_id_token: true,
        ..FakeConfig::default()
    })
    .await;
    let mut spec = fake.spec("google", AuthStyle::Post, Pkce::Supported, &[]);
    spec.account = AccountSource::IdToken;
    let tokens = connect(&fake, &spec, &["openid", "email"]).await;
    let account = identify(&spec, &tokens).await.unwrap();
    assert_eq!(account.subject, "user-1");
    assert_eq!(account.label, "user-1@example.com");
    assert_eq!(fake.userinfo_calls(), 0);
}

#[tokio::test]
async fn failures_are_classified() {
    let fake = FakeProvider::start(FakeConfig::default()).await;
    let spec = fake.spec("generic", AuthStyle::Post, Pkce::None, &[]);
    let client = fake.client_credentials();
    let (_, refresh) = fake.issue_grant("user-1");
    let refresh = SecretString::from(refresh);
    let oauth = http();
    let empty = BTreeMap::new();
    let run = || oauth.refresh(&spec, &client, &refresh, &empty, &empty);

    fake.push_token_failure(TokenFailure::ServerError);
    let err = run().await.unwrap_err();
    assert!(
        matches!(
            err,
            OAuthError::Transient {
                status: Some(500),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());

    fake.push_token_failure(TokenFailure::RateLimited {
        retry_after_secs: 7,
    });
    let err = run().await.unwrap_err();
    assert!(
        matches!(err, OAuthError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(7)),
        "{err:?}"
    );

    fake.push_token_failure(TokenFailure::InvalidGrant);
    let err = run().await.unwrap_err();
    assert!(matches!(err, OAuthError::InvalidGrant { .. }), "{err:?}");

    fake.push_token_failure(TokenFailure::OversizedBody);
    let err = run().await.unwrap_err();
    assert!(matches!(err, OAuthError::Protocol(_)), "{err:?}");

    fake.push_token_failure(TokenFailure::MalformedJson);
    let err = run().await.unwrap_err();
    assert!(matches!(err, OAuthError::Protocol(_)), "{err:?}");

    // The queue is drained: the next refresh works, and every call was counted.
    run().await.unwrap();
    assert_eq!(fake.refresh_calls(), 6);

    // Sticky failure, switched on and off while running.
    fake.configure(|c| c.token_failure = Some(TokenFailure::ServerError));
    assert!(run().await.unwrap_err().is_transient());
    assert!(run().await.unwrap_err().is_transient());
    fake.configure(|c| c.token_failure = None);
    run().await.unwrap();
}

#[tokio::test]
async fn slow_provider_times_out_as_transient() {
    let fake = FakeProvider::start(FakeConfig {
        token_delay: Duration::from_secs(5),
        ..FakeConfig::default()
    })
    .await;
    let spec = fake.spec("generic", AuthStyle::Post, Pkce::None, &[]);
    let (_, refresh) = fake.issue_grant("user-1");
    let oauth = OAuthHttp::new(HttpConfig {
        total_timeout: Duration::from_millis(200),
        ..FakeProvider::http_config()
    })
    .unwrap();
    let err = plain_refresh(
        &oauth,
        &spec,
        &fake.client_credentials(),
        &SecretString::from(refresh.clone()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, OAuthError::Transient { status: None, .. }),
        "{err:?}"
    );
    let shown = format!("{err:?} {err}");
    assert!(
        !shown.contains(&refresh) && !shown.contains("127.0.0.1"),
        "{shown}"
    );
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let fake = FakeProvider::start(FakeConfig::default()).await;
    let spec = fake.spec("generic", AuthStyle::Post, Pkce::None, &[]);
    let client = fake.client_credentials();
    drop(fake);
    tokio::task::yield_now().await;
    let err = plain_refresh(&http(), &spec, &client, &SecretString::from("rt"))
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}

#[tokio::test]
async fn redirects_from_the_token_endpoint_are_not_followed() {
    let fake = FakeProvider::start(FakeConfig::default()).await;
    let mut spec = fake.spec("generic", AuthStyle::Post, Pkce::None, &[]);
    spec.token_url = format!("{}/redirect", fake.base_url());
    let (_, refresh) = fake.issue_grant("user-1");
    let err = plain_refresh(
        &http(),
        &spec,
        &fake.client_credentials(),
        &SecretString::from(refresh),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, OAuthError::Protocol(_)), "{err:?}");
    assert_eq!(fake.token_calls(), 0);
}

#[tokio::test]
async fn rfc7009_revocation() {
    let fake = FakeProvider::start(FakeConfig {
        client_auth: Some(ClientAuth::Basic),
        ..FakeConfig::default()
    })
    .await;
    let spec = fake.spec("generic", AuthStyle::Basic, Pkce::None, &[]);
    let (access, refresh) = fake.issue_grant("user-1");
    assert!(!cb_oauth::revokes_with_access_token(&spec));

    fake.configure(|c| c.revoke_fails = true);
    let err = revoke(
        &fake,
        &spec,
        &SecretString::from(refresh.clone()),
        "refresh_token",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            OAuthError::Transient {
                status: Some(503),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!fake.is_revoked(&refresh));

    fake.configure(|c| c.revoke_fails = false);
    let outcome = revoke(
        &fake,
        &spec,
        &SecretString::from(refresh.clone()),
        "refresh_token",
    )
    .await
    .unwrap();
    assert_eq!(outcome, RevokeOutcome::Revoked);
    assert_eq!(fake.revocations(), 1);
    assert!(fake.is_revoked(&refresh));
    assert!(fake.is_revoked(&access));

    // The access token no longer identifies anyone.
    let dead = TokenResponse::bearer(SecretString::from(access));
    let err = identify(&spec, &dead).await.unwrap_err();
    assert!(matches!(err, OAuthError::InvalidGrant { .. }), "{err:?}");

    let mut without = spec.clone();
    without.revocation_url = None;
    let outcome = revoke(
        &fake,
        &without,
        &SecretString::from(refresh),
        "refresh_token",
    )
    .await
    .unwrap();
    assert_eq!(outcome, RevokeOutcome::NotSupported);
}

// --- built-in catalog entries against a fake that behaves like the real provider ---------------

/// The built-in catalog entry `id` with its endpoints moved to `fake` (everything else — client
/// authentication, PKCE, token parameters, lifetimes — as shipped). The account is read from the
/// fake's userinfo unless the entry reads the id token.
fn catalog_entry(fake: &FakeProvider, id: &str) -> ProviderSpec {
    let catalog = cb_oauth::catalog::Catalog::builtin().unwrap();
    let mut spec = catalog.get(id).unwrap().clone();
    let base = fake.base_url();
    spec.authorize_url = format!("{base}/authorize");
    spec.token_url = format!("{base}/token");
    spec.revocation_url = spec
        .revocation_url
        .as_ref()
        .map(|_| format!("{base}/revoke"));
    if spec.account != AccountSource::IdToken {
        spec.account = fake.userinfo();
    }
    // Placeholders ({shop}) are gone with the real hosts.
    spec.quirks.retain(|q| *q != Quirk::ShopSubdomain);
    spec
}

#[tokio::test]
async fn salesforce_tokens_without_expires_in_get_the_catalog_lifetime() {
    // Salesforce: no expires_in on exchange or refresh; refreshes go to instance_url.
    let fake = FakeProvider::start(FakeConfig {
        dialect: Dialect::Salesforce,
        client_auth: Some(ClientAuth::Post),
        issue_id_token: true,
        ..FakeConfig::default()
    })
    .await;
    for id in ["salesforce", "salesforce-sandbox"] {
        let spec = catalog_entry(&fake, id);
        let tokens = connect(&fake, &spec, &["api", "refresh_token", "openid", "email"]).await;
        assert_eq!(
            tokens.expires_in, None,
            "{id}: the fake sends no expires_in"
        );
        assert_eq!(
            tokens.access_token_lifetime,
            Some(Duration::from_secs(7200)),
            "{id}: a token without expires_in must still expire and be refreshed"
        );
        let account = identify(&spec, &tokens).await.unwrap();
        assert_eq!(account.subject, "user-1");
        let refreshed = http()
            .refresh(
                &spec,
                &fake.client_credentials(),
                tokens.refresh_token.as_ref().unwrap(),
                &tokens.extras,
                &no_placeholders(),
            )
            .await
            .unwrap();
        assert_eq!(refreshed.expires_in, None);
        assert_eq!(
            refreshed.access_token_lifetime,
            Some(Duration::from_secs(7200))
        );
    }
}

#[tokio::test]
async fn shopify_asks_for_expiring_offline_tokens() {
    // Shopify: expiring tokens (expires_in, rotating refresh token) only with expiring=1.
    let fake = FakeProvider::start(FakeConfig {
        client_auth: Some(ClientAuth::Post),
        expiring_only_with: Some(("expiring".into(), "1".into())),
        rotate_refresh_tokens: true,
        ..FakeConfig::default()
    })
    .await;
    let spec = catalog_entry(&fake, "shopify");
    let tokens = connect(&fake, &spec, &["read_products"]).await;
    assert_eq!(tokens.expires_in, Some(Duration::from_secs(3600)));
    let first = tokens
        .refresh_token
        .expect("an expiring token comes with a refresh token");
    let refreshed = plain_refresh(&http(), &spec, &fake.client_credentials(), &first)
        .await
        .unwrap();
    let second = refreshed.refresh_token.expect("rotated");
    assert_ne!(second.expose_secret(), first.expose_secret());

    // Without the parameter (the catalog before the fix) the fake, like Shopify, hands out a
    // token that never expires and cannot be refreshed.
    let mut old = spec.clone();
    old.extra_token_params.clear();
    let tokens = connect(&fake, &old, &["read_products"]).await;
    assert_eq!(tokens.expires_in, None);
    assert!(tokens.refresh_token.is_none());
}

#[tokio::test]
async fn tiktok_sends_client_key_and_reads_refresh_expires_in() {
    // TikTok: `client_key` instead of `client_id`, credentials in the body, 2 h access tokens,
    // 180-day single-use refresh tokens announced as `refresh_expires_in`.
    let fake = FakeProvider::start(FakeConfig {
        client_auth: Some(ClientAuth::Post),
        client_id_param: "client_key".into(),
        access_token_ttl: Some(Duration::from_secs(7200)),
        refresh_token_ttl: Some(Duration::from_secs(15_552_000)),
        refresh_expiry_field: "refresh_expires_in".into(),
        rotate_refresh_tokens: true,
        ..FakeConfig::default()
    })
    .await;
    let spec = catalog_entry(&fake, "tiktok");
    let tokens = connect(&fake, &spec, &["user.info.basic"]).await;
    assert_eq!(tokens.expires_in, Some(Duration::from_secs(7200)));
    assert_eq!(
        tokens.refresh_token_expires_in,
        Some(Duration::from_secs(15_552_000))
    );
    let client = fake.client_credentials();
    let first = tokens.refresh_token.unwrap();
    let refreshed = plain_refresh(&http(), &spec, &client, &first)
        .await
        .unwrap();
    assert!(refreshed.refresh_token.is_some());
    // The previous refresh token stops working once a new one is issued.
    let err = plain_refresh(&http(), &spec, &client, &first)
        .await
        .unwrap_err();
    assert!(matches!(err, OAuthError::InvalidGrant { .. }), "{err:?}");

    // Naming the client `client_id` (the catalog before the fix) gets nowhere.
    let mut old = spec.clone();
    old.client_id_param = None;
    let url = authorize_url(
        &old,
        &client,
        &AuthorizeRequest {
            redirect_uri: REDIRECT,
            scopes: &[],
            state: "s",
            pkce_challenge: None,
        },
        &no_placeholders(),
    )
    .unwrap();
    let status = reqwest::get(url).await.unwrap().status();
    assert_eq!(
        status, 400,
        "the fake refuses an authorize request without client_key"
    );
    let (code, _) = authorize(&fake, &spec, &[]).await;
    let err = exchange(&fake, &old, &code, REDIRECT, None)
        .await
        .unwrap_err();
    assert!(matches!(err, OAuthError::InvalidClient { .. }), "{err:?}");
}

#[tokio::test]
async fn calendly_authenticates_with_basic_only() {
    let fake = FakeProvider::start(FakeConfig {
        client_auth: Some(ClientAuth::Basic),
        ..FakeConfig::default()
    })
    .await;
    let spec = catalog_entry(&fake, "calendly");
    let tokens = connect(&fake, &spec, &["users:read"]).await;
    assert_eq!(fake.token_requests().pop().unwrap().client_auth, "basic");
    assert!(tokens.refresh_token.is_some());

    // Credentials in the form body (the catalog before the fix) are refused.
    let mut old = spec.clone();
    old.auth_style = AuthStyle::Post;
    let err = try_connect(&fake, &old, &["users:read"]).await.unwrap_err();
    assert!(matches!(err, OAuthError::InvalidClient { .. }), "{err:?}");
}

// --- what the broker makes of it -----------------------------------------------------------------

mod through_the_broker {
    use super::*;
    use crate::support::broker::TestBroker;
    use crate::support::client::ALICE;

    /// A broker with `fake` as provider `fake`; the test drives time itself.
    async fn broker(fake: &FakeProvider) -> TestBroker {
        TestBroker::with_fake(fake, None, |_| {}).await
    }

    #[tokio::test]
    async fn tokens_without_expires_in_are_refreshed_on_the_catalog_lifetime() {
        // Salesforce-like: no expires_in ever; the entry says access tokens last an hour.
        let fake = FakeProvider::start(FakeConfig {
            dialect: Dialect::Salesforce,
            ..FakeConfig::default()
        })
        .await;
        let b = broker(&fake).await;
        let mut c = b.client(ALICE).await;
        let id = c.connect(&fake).await.unwrap().credential_id;
        let first = c.token(&id).await.unwrap();
        assert!(
            first.expire_time.is_some(),
            "a token without expires_in still gets an expiry"
        );
        assert_eq!(fake.refresh_calls(), 0);
        // An hour later the broker refreshes instead of handing out a stale token.
        b.clock.advance(Duration::from_secs(3600));
        let second = c.token(&id).await.unwrap();
        assert_eq!(fake.refresh_calls(), 1);
        assert_ne!(second.access_token, first.access_token);
    }

    #[tokio::test]
    async fn list_providers_reports_which_entries_are_verified() {
        let fake = FakeProvider::start(FakeConfig::default()).await;
        let b = broker(&fake).await;
        let providers = b.client(ALICE).await.providers().await.unwrap();
        let verified = |id: &str| {
            providers
                .iter()
                .find(|p| p.provider_id == id)
                .unwrap_or_else(|| panic!("{id} missing"))
                .verified
        };
        assert_eq!(verified("gmail"), Some(true));
        assert_eq!(verified("salesforce"), Some(true));
        assert_eq!(verified("trello"), Some(false));
        // A provider declared in config without sources is reported unverified.
        assert_eq!(verified("fake"), Some(false));
    }
}

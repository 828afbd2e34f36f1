//! The fake's own protocol behaviour over HTTP, through the public API only: what the broker's tests build on (rotation, reuse
//! detection, per-grant counters, fault injection) and what `serve --dev-provider` needs (random
//! tokens, Basic-only clients, the `/callback` page).

use crate::{ClientAuth, FakeConfig, FakeProvider, TokenFailure, TokenStyle};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use std::collections::BTreeMap;

const REDIRECT: &str = "https://broker.test/oauth/callback";
const VERIFIER: &str = "a-verifier-of-at-least-43-characters-xxxxxxxxxxxxx";

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The JSON page `/authorize` answers with for a redirect URI that returns one (the callback).
async fn authorize_page(fake: &FakeProvider, redirect_uri: &str) -> Value {
    let response = authorize(&reqwest::Client::new(), fake, redirect_uri).await;
    response.json().await.unwrap()
}

/// `/authorize` with PKCE (`VERIFIER`) for `redirect_uri`: a redirect when approved.
async fn authorize(
    client: &reqwest::Client,
    fake: &FakeProvider,
    redirect_uri: &str,
) -> reqwest::Response {
    let challenge = URL_SAFE_NO_PAD.encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, VERIFIER.as_bytes()).as_ref(),
    );
    let config = fake.config();
    let mut url = url::Url::parse(&format!("{}/authorize", fake.base_url())).unwrap();
    url.query_pairs_mut().extend_pairs([
        ("response_type", "code"),
        ("client_id", config.client_id.as_str()),
        ("redirect_uri", redirect_uri),
        ("state", "st-1"),
        ("scope", "read write"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ]);
    client.get(url).send().await.unwrap()
}

/// A token request with the client credentials in the body: (status, JSON body).
async fn token(fake: &FakeProvider, params: &[(&str, &str)]) -> (u16, Value) {
    let config = fake.config();
    let mut form = params.to_vec();
    form.push(("client_id", config.client_id.as_str()));
    form.push(("client_secret", config.client_secret.as_str()));
    let resp = reqwest::Client::new()
        .post(format!("{}/token", fake.base_url()))
        .form(&form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn field(body: &Value, name: &str) -> String {
    body[name].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn reusing_a_rotated_refresh_token_revokes_the_grant_and_counts_on_it() {
    let fake = FakeProvider::start(FakeConfig {
        rotate_refresh_tokens: true,
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let resp = authorize(&no_redirects(), &fake, REDIRECT).await;
    assert_eq!(resp.status(), 302);
    let location = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    let query: BTreeMap<String, String> = location.query_pairs().into_owned().collect();
    assert_eq!(query["state"], "st-1");

    // A wrong verifier is refused; the right one exchanges the code.
    let exchange = |verifier| {
        [
            ("grant_type", "authorization_code"),
            ("code", query["code"].as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ]
    };
    let (status, body) = token(&fake, &exchange("wrong-verifier")).await;
    assert_eq!(
        (status, field(&body, "error").as_str()),
        (400, "invalid_grant")
    );
    let (status, body) = token(&fake, &exchange(VERIFIER)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(field(&body, "scope"), "read write");
    let (access, first) = (field(&body, "access_token"), field(&body, "refresh_token"));

    fn refresh(token: &str) -> [(&str, &str); 2] {
        [("grant_type", "refresh_token"), ("refresh_token", token)]
    }
    let (status, body) = token(&fake, &refresh(&first)).await;
    assert_eq!(status, 200, "{body}");
    let second = field(&body, "refresh_token");
    assert_ne!(second, first);
    assert!(fake.is_current_refresh_token(&second));
    assert!(!fake.is_current_refresh_token(&first));

    let (status, body) = token(&fake, &refresh(&first)).await;
    assert_eq!(
        (status, field(&body, "error").as_str()),
        (400, "invalid_grant")
    );
    assert!(fake.is_revoked(&access));
    assert!(!fake.is_current_refresh_token(&second));
    let grant = fake.grant_stats(&second).unwrap();
    assert_eq!(grant.subject, "user-1");
    assert_eq!(grant.scopes, ["read", "write"]);
    assert_eq!(grant.refresh_calls, 2);
    assert_eq!(grant.access_tokens_issued, 2);
    assert_eq!(grant.reuse_detections, 1);
    assert!(grant.revoked);
    let counters = fake.counters();
    assert_eq!(counters.authorize_calls, 1);
    assert_eq!(counters.token_calls, 4);
    assert_eq!(counters.refresh_calls, 2);
    assert_eq!(counters.token_errors, 2);
    assert_eq!(counters.reuse_detections, 1);
}

#[tokio::test]
async fn queued_failures_answer_first_and_count_as_errors() {
    let fake = FakeProvider::start(FakeConfig::default()).await.unwrap();
    let (_, refresh) = fake.issue_grant("acct-1");
    fake.push_token_failure(TokenFailure::ServerError);
    fake.push_token_failure(TokenFailure::RateLimited {
        retry_after_secs: 7,
    });
    let params = [("grant_type", "refresh_token"), ("refresh_token", &refresh)];
    assert_eq!(token(&fake, &params).await.0, 500);
    assert_eq!(token(&fake, &params).await.0, 429);
    let (status, body) = token(&fake, &params).await;
    assert_eq!(status, 200, "{body}");
    assert!(fake.is_valid_access_token(&field(&body, "access_token")));

    assert_eq!(fake.token_errors(), 2);
    assert_eq!(fake.grant_stats(&refresh).unwrap().refresh_calls, 3);
    let seen = fake.token_requests();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|r| r.client_auth == "post"));
    assert!(
        seen.windows(2)
            .all(|w| w[0].received_at <= w[1].received_at)
    );
}

#[tokio::test]
async fn dev_style_random_tokens_basic_only_and_the_callback_page() {
    let fake = FakeProvider::start(FakeConfig {
        client_auth: Some(ClientAuth::Basic),
        token_style: TokenStyle::Random {
            prefix: "dev".into(),
        },
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let callback = format!("{}/callback", fake.base_url());
    fake.configure(|c| c.redirect_uris = vec![callback.clone()]);

    // Following the redirect lands on /callback, which echoes what CompleteConnect needs.
    let page = authorize_page(&fake, &callback).await;
    assert_eq!(page["state"], "st-1");
    assert_eq!(page["error"], Value::Null);
    let code = field(&page, "code");
    assert!(code.starts_with("dev-code-"), "{code}");

    // Client credentials in the body are refused: this client authenticates with Basic only.
    let exchange = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", callback.as_str()),
        ("code_verifier", VERIFIER),
    ];
    let (status, body) = token(&fake, &exchange).await;
    assert_eq!(
        (status, field(&body, "error").as_str()),
        (401, "invalid_client")
    );
    let config = fake.config();
    let body: Value = reqwest::Client::new()
        .post(format!("{}/token", fake.base_url()))
        .basic_auth(&config.client_id, Some(&config.client_secret))
        .form(&exchange)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        field(&body, "access_token").starts_with("dev-at-"),
        "{body}"
    );
    assert!(
        field(&body, "refresh_token").starts_with("dev-rt-"),
        "{body}"
    );
}

#[tokio::test]
async fn a_declared_issuer_goes_into_every_authorization_response() {
    let fake = FakeProvider::start(FakeConfig::default()).await.unwrap();
    let callback = format!("{}/callback", fake.base_url());
    fake.configure(|c| c.redirect_uris = vec![REDIRECT.to_owned(), callback.clone()]);
    let query = |resp: reqwest::Response| -> BTreeMap<String, String> {
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        url::Url::parse(&location)
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect()
    };

    // Without an issuer: no `iss`, and /callback's body has no `iss` key.
    let q = query(authorize(&no_redirects(), &fake, REDIRECT).await);
    assert!(q.contains_key("code") && !q.contains_key("iss"), "{q:?}");
    let page = authorize_page(&fake, &callback).await;
    assert!(page.get("iss").is_none(), "{page}");

    fake.configure(|c| c.issuer = Some("https://issuer.test".into()));
    let q = query(authorize(&no_redirects(), &fake, REDIRECT).await);
    assert_eq!(
        q.get("iss").map(String::as_str),
        Some("https://issuer.test")
    );
    let page = authorize_page(&fake, &callback).await;
    assert_eq!(page["iss"], "https://issuer.test");
    // Error responses carry it too.
    fake.configure(|c| c.deny = true);
    let q = query(authorize(&no_redirects(), &fake, REDIRECT).await);
    assert_eq!(q.get("error").map(String::as_str), Some("access_denied"));
    assert_eq!(
        q.get("iss").map(String::as_str),
        Some("https://issuer.test")
    );
}

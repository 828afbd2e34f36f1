//! The HTTP side of the protocol: code exchange, refresh, revocation and account lookup.
//!
//! Requests are made with reqwest directly rather than through `oauth2::Client`: every provider
//! the broker supports bends RFC 6749 somewhere the crate's typed client cannot follow — Slack and
//! GitHub report errors with HTTP 200, Notion wants a JSON body, Salesforce refreshes go to a
//! per-org host, GitHub/Slack/Dropbox revoke through their own APIs — and the crate's errors keep
//! the raw response body, which may hold tokens. The `oauth2` crate is used for what is standard:
//! the S256 PKCE challenge and the RFC 6749 / RFC 7009 error response types.
//!
//! The client follows no redirects (a token endpoint that redirects would resend secrets
//! elsewhere), caps response bodies, and times out.

use crate::account::{self, AccountInfo};
use crate::catalog::{AccountSource, AuthStyle, ProviderSpec, Quirk};
use crate::client::{ClientCredentials, bearer_header};
use crate::endpoint;
use crate::error::{OAuthError, Operation, sanitize_description};
use crate::outbound::OutboundClient;
use crate::quirks::{self, RevocationStyle};
use crate::token::{self, TokenResponse};
use oauth2::{RevocationErrorResponseType, StandardErrorResponse};
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeMap;
use std::time::Duration;

/// HTTP settings for provider calls.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Time allowed to open a connection (TCP + TLS).
    pub connect_timeout: Duration,
    /// Time allowed for a whole request, body included.
    pub total_timeout: Duration,
    /// Largest response body accepted; a larger one is a [`OAuthError::Protocol`].
    pub max_body_bytes: usize,
    /// Allow plain http to loopback hosts (tests, local development). Off in production: every
    /// provider call is https.
    pub allow_http_loopback: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(10),
            max_body_bytes: 256 * 1024,
            allow_http_loopback: false,
        }
    }
}

/// Whether a revocation happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// The provider accepted the revocation (RFC 7009 also answers so for unknown tokens).
    Revoked,
    /// The provider has no revocation endpoint, or does not revoke this kind of token.
    NotSupported,
}

/// An authorization code to exchange, with what its authorization request sent.
#[derive(Clone, Copy, Debug)]
pub struct CodeGrant<'a> {
    /// The code the provider's redirect brought.
    pub code: &'a SecretString,
    /// The `redirect_uri` of the authorization request (the provider compares them).
    pub redirect_uri: &'a str,
    /// The verifier of the request's PKCE challenge, if it sent one.
    pub pkce_verifier: Option<&'a SecretString>,
}

/// The OAuth client for provider endpoints. Cheap to clone (one connection pool).
#[derive(Clone, Debug)]
pub struct OAuthHttp {
    client: reqwest::Client,
    max_body_bytes: usize,
    allow_http_loopback: bool,
    /// Set for providers a workspace defined: every request's URL is checked by the guard, and
    /// `client` is the guard's (its resolver refuses disallowed ranges and pins the address).
    guard: Option<OutboundClient>,
}

/// A provider response, body read within the cap.
struct Reply {
    status: StatusCode,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

/// Who authenticates a request, which decides what HTTP 401 means.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// The client (id + secret): 401 means the client was rejected.
    Client,
    /// A token: 401 means the token was rejected.
    Token,
}

impl OAuthHttp {
    /// Builds the client: no redirects, timeouts, `User-Agent: credential-broker`, https only
    /// unless loopback http is allowed.
    pub fn new(cfg: HttpConfig) -> Result<Self, OAuthError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.total_timeout)
            .user_agent("credential-broker")
            .https_only(!cfg.allow_http_loopback)
            .build()
            .map_err(|_| OAuthError::Config("cannot build the http client".to_owned()))?;
        Ok(Self {
            client,
            max_body_bytes: cfg.max_body_bytes,
            allow_http_loopback: cfg.allow_http_loopback,
            guard: None,
        })
    }

    /// The client for providers a workspace defined at runtime: every call (token, refresh,
    /// revocation, userinfo) goes through `outbound` (no redirects, refused address ranges,
    /// resolved-address pinning, its time and size bounds).
    pub fn over_outbound(outbound: &OutboundClient) -> Self {
        let policy = outbound.policy();
        Self {
            client: outbound.inner().clone(),
            max_body_bytes: policy.max_response_bytes,
            allow_http_loopback: policy.allow_loopback,
            guard: Some(outbound.clone()),
        }
    }

    /// Exchanges an authorization code for tokens (RFC 6749 §4.1.3).
    pub async fn exchange_code(
        &self,
        spec: &ProviderSpec,
        client: &ClientCredentials,
        grant: CodeGrant<'_>,
        placeholders: &BTreeMap<String, String>,
    ) -> Result<TokenResponse, OAuthError> {
        let req = self.exchange_request(spec, client, grant, placeholders)?;
        let mut sent = vec![
            grant.code.expose_secret(),
            client.client_secret.expose_secret(),
        ];
        sent.extend(grant.pkce_verifier.map(|v| v.expose_secret()));
        self.token_call(spec, req, Operation::Exchange, &sent).await
    }

    /// The code exchange request, built but not sent: the standard parameters, then the spec's
    /// `extra_token_params` (Shopify `expiring=1`), with the spec's client authentication.
    fn exchange_request(
        &self,
        spec: &ProviderSpec,
        client: &ClientCredentials,
        grant: CodeGrant<'_>,
        placeholders: &BTreeMap<String, String>,
    ) -> Result<reqwest::RequestBuilder, OAuthError> {
        let url = self.token_url(spec, placeholders)?;
        let mut params = vec![
            ("grant_type", "authorization_code"),
            ("code", grant.code.expose_secret()),
            ("redirect_uri", grant.redirect_uri),
        ];
        if let Some(v) = grant.pkce_verifier {
            params.push(("code_verifier", v.expose_secret()));
        }
        self.token_request(spec, client, url, params, &spec.extra_token_params)
    }

    /// Refreshes an access token (RFC 6749 §6). A `refresh_token` in the result means the
    /// provider rotated it: store it, the old one is or will soon be dead. `None` means keep the
    /// current one. `extras` are the credential's stored extras (Salesforce refreshes go to the
    /// validated `instance_url`).
    pub async fn refresh(
        &self,
        spec: &ProviderSpec,
        client: &ClientCredentials,
        refresh_token: &SecretString,
        extras: &BTreeMap<String, String>,
        placeholders: &BTreeMap<String, String>,
    ) -> Result<TokenResponse, OAuthError> {
        let req = self.refresh_request(spec, client, refresh_token, extras, placeholders)?;
        let sent = [
            refresh_token.expose_secret(),
            client.client_secret.expose_secret(),
        ];
        self.token_call(spec, req, Operation::Refresh, &sent).await
    }

    /// The refresh request, built but not sent: `grant_type`, `refresh_token`, then the spec's
    /// `extra_refresh_params`, with the spec's client authentication.
    fn refresh_request(
        &self,
        spec: &ProviderSpec,
        client: &ClientCredentials,
        refresh_token: &SecretString,
        extras: &BTreeMap<String, String>,
        placeholders: &BTreeMap<String, String>,
    ) -> Result<reqwest::RequestBuilder, OAuthError> {
        let instance = extras
            .get("instance_url")
            .filter(|_| spec.quirks.contains(&Quirk::SalesforceInstanceUrl));
        let url = match instance {
            Some(instance) => quirks::salesforce_token_url(instance, self.allow_http_loopback)?,
            None => self.token_url(spec, placeholders)?,
        };
        let params = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
        ];
        self.token_request(spec, client, url, params, &spec.extra_refresh_params)
    }

    /// Revokes a token. RFC 7009 endpoints take either token (`token_type_hint`
    /// `refresh_token` revokes the whole grant); GitHub, Slack and Dropbox revoke with the
    /// *access* token (see [`revokes_with_access_token`]). No `revocation_url` →
    /// [`RevokeOutcome::NotSupported`].
    pub async fn revoke(
        &self,
        spec: &ProviderSpec,
        client: &ClientCredentials,
        token: &SecretString,
        token_type_hint: &str,
        placeholders: &BTreeMap<String, String>,
    ) -> Result<RevokeOutcome, OAuthError> {
        let Some(template) = spec.revocation_url.as_deref() else {
            return Ok(RevokeOutcome::NotSupported);
        };
        let style = quirks::revocation_style(spec, template);
        if style != RevocationStyle::Rfc7009 && token_type_hint == "refresh_token" {
            return Err(OAuthError::Config(format!(
                "provider {} revokes with the access token, not the refresh token",
                spec.id
            )));
        }
        let url = endpoint::fill(template, placeholders, Some(&client.client_id))?;
        let url = endpoint::parse_server_url("revocation_url", &url, self.allow_http_loopback)?;
        let sent = [token.expose_secret(), client.client_secret.expose_secret()];
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let (request, caller) = match style {
            RevocationStyle::Rfc7009 => {
                let mut params = vec![("token", token.expose_secret())];
                if !token_type_hint.is_empty() {
                    params.push(("token_type_hint", token_type_hint));
                }
                let req = self.client.post(url);
                (
                    self.with_client_auth(spec, client, req, params, headers)?,
                    Caller::Client,
                )
            }
            RevocationStyle::GithubGrant => {
                headers.insert(
                    ACCEPT,
                    HeaderValue::from_static("application/vnd.github+json"),
                );
                headers.insert(AUTHORIZATION, basic(client)?);
                let body = serde_json::json!({ "access_token": token.expose_secret() });
                let req = self
                    .client
                    .request(Method::DELETE, url)
                    .headers(headers)
                    .json(&body);
                (req, Caller::Client)
            }
            RevocationStyle::BearerSelf => {
                let auth = bearer_header(token)
                    .ok_or_else(|| OAuthError::Config("token is not a valid header".to_owned()))?;
                headers.insert(AUTHORIZATION, auth);
                (self.client.post(url).headers(headers), Caller::Token)
            }
        };
        let reply = self.send(request).await?;
        tracing::debug!(provider = %spec.id, status = reply.status.as_u16(), "revocation answered");
        if reply.status.is_success() {
            // Slack answers errors with 200 and `ok: false`.
            if let Ok(serde_json::Value::Object(obj)) =
                serde_json::from_slice::<serde_json::Value>(&reply.body)
            {
                let ok_false = obj.get("ok").and_then(serde_json::Value::as_bool) == Some(false);
                if ok_false || obj.get("error").is_some_and(serde_json::Value::is_string) {
                    return Err(token::parse_error_object(&obj, Operation::Revoke, &sent)
                        .unwrap_or_else(|| {
                            OAuthError::Protocol("revocation answered ok:false".to_owned())
                        }));
                }
            }
            return Ok(RevokeOutcome::Revoked);
        }
        if reply.status == StatusCode::BAD_REQUEST && unsupported_token_type(&reply.body) {
            return Ok(RevokeOutcome::NotSupported);
        }
        Err(status_error(&reply, Operation::Revoke, caller, &sent))
    }

    /// Runs the spec's post-connect lookup (Atlassian cloud id, Xero tenant id) and returns the
    /// extras it finds; empty when the spec has none.
    pub async fn post_connect_extras(
        &self,
        spec: &ProviderSpec,
        tokens: &TokenResponse,
        placeholders: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, OAuthError> {
        let Some(lookup) = &spec.post_connect else {
            return Ok(BTreeMap::new());
        };
        let url = endpoint::fill(&lookup.url, placeholders, None)?;
        let url = endpoint::parse_server_url("post_connect.url", &url, self.allow_http_loopback)?;
        let mut auth = bearer_header(&tokens.access_token)
            .ok_or_else(|| OAuthError::Protocol("access token is not a valid header".to_owned()))?;
        auth.set_sensitive(true);
        let request = self
            .client
            .get(url)
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .header(AUTHORIZATION, auth);
        let doc = self
            .identity_json(request, tokens, "post-connect lookup")
            .await?;
        let mut extras = BTreeMap::new();
        for (name, pointer) in &lookup.extras {
            let value = match doc.pointer(pointer) {
                Some(serde_json::Value::String(v)) => v.clone(),
                Some(serde_json::Value::Number(n)) => n.to_string(),
                _ => {
                    return Err(OAuthError::Protocol(format!(
                        "the provider listed no {name}: is the app authorized for a site or organisation?"
                    )));
                }
            };
            extras.insert(
                name.clone(),
                value
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(256)
                    .collect(),
            );
        }
        Ok(extras)
    }

    /// Finds out which account the tokens belong to, per the spec's [`AccountSource`].
    pub async fn identify(
        &self,
        spec: &ProviderSpec,
        tokens: &TokenResponse,
        placeholders: &BTreeMap<String, String>,
    ) -> Result<AccountInfo, OAuthError> {
        match &spec.account {
            AccountSource::IdToken => account::from_id_token(tokens),
            AccountSource::TokenResponse {
                subject_pointer,
                label_pointer,
            } => {
                let raw = tokens.raw_account.as_ref().ok_or_else(|| {
                    OAuthError::Protocol("token response kept no account data".to_owned())
                })?;
                account::from_document(raw, subject_pointer, label_pointer, "token response")
            }
            AccountSource::Userinfo {
                url,
                subject_pointer,
                label_pointer,
                headers: extra_headers,
                body,
                token_header,
            } => {
                let url = endpoint::fill(url, placeholders, None)?;
                let url =
                    endpoint::parse_server_url("account.url", &url, self.allow_http_loopback)?;
                let mut headers = HeaderMap::new();
                headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
                for (name, value) in extra_headers {
                    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                        OAuthError::Config("account header name is invalid".to_owned())
                    })?;
                    if name == AUTHORIZATION {
                        return Err(OAuthError::Config(
                            "account headers may not set authorization".to_owned(),
                        ));
                    }
                    let value = HeaderValue::from_str(value).map_err(|_| {
                        OAuthError::Config("account header value is invalid".to_owned())
                    })?;
                    headers.insert(name, value);
                }
                // The token goes as Bearer, or as-is in the spec's header (Shopify).
                let (name, value) = match token_header {
                    Some(name) => (
                        HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                            OAuthError::Config("account token header name is invalid".to_owned())
                        })?,
                        HeaderValue::from_str(tokens.access_token.expose_secret()).ok(),
                    ),
                    None => (AUTHORIZATION, bearer_header(&tokens.access_token)),
                };
                let mut value = value.ok_or_else(|| {
                    OAuthError::Protocol("access token is not a valid header".to_owned())
                })?;
                value.set_sensitive(true);
                headers.insert(name, value);
                // GraphQL-only APIs (Linear, monday.com) are asked with a POSTed query.
                let request = match body {
                    Some(body) => {
                        headers.insert(
                            reqwest::header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        );
                        self.client.post(url).headers(headers).body(body.clone())
                    }
                    None => self.client.get(url).headers(headers),
                };
                let doc = self.identity_json(request, tokens, "userinfo").await?;
                let sent = [tokens.access_token.expose_secret()];
                if spec.quirks.contains(&Quirk::OkFalseErrors)
                    && doc.get("ok").and_then(serde_json::Value::as_bool) == Some(false)
                {
                    if let serde_json::Value::Object(obj) = &doc
                        && let Some(e) = token::parse_error_object(obj, Operation::Identify, &sent)
                    {
                        return Err(e);
                    }
                    return Err(OAuthError::Protocol(
                        "userinfo answered ok:false".to_owned(),
                    ));
                }
                account::from_document(&doc, subject_pointer, label_pointer, "userinfo")
            }
        }
    }

    /// Sends a lookup made with the access token (userinfo, post-connect) and parses its JSON
    /// answer; `what` names the lookup in errors.
    async fn identity_json(
        &self,
        request: reqwest::RequestBuilder,
        tokens: &TokenResponse,
        what: &str,
    ) -> Result<serde_json::Value, OAuthError> {
        let reply = self.send(request).await?;
        if !reply.status.is_success() {
            let sent = [tokens.access_token.expose_secret()];
            return Err(status_error(
                &reply,
                Operation::Identify,
                Caller::Token,
                &sent,
            ));
        }
        serde_json::from_slice(&reply.body)
            .map_err(|_| OAuthError::Protocol(format!("{what} is not json")))
    }

    /// The spec's token endpoint with its placeholders filled.
    fn token_url(
        &self,
        spec: &ProviderSpec,
        placeholders: &BTreeMap<String, String>,
    ) -> Result<url::Url, OAuthError> {
        let url = endpoint::fill(&spec.token_url, placeholders, None)?;
        endpoint::parse_server_url("token_url", &url, self.allow_http_loopback)
    }

    /// A token request POST of `params` then `extra`, with the spec's client authentication and
    /// body format.
    fn token_request<'a>(
        &self,
        spec: &ProviderSpec,
        client: &ClientCredentials,
        url: url::Url,
        mut params: Vec<(&'a str, &'a str)>,
        extra: &'a BTreeMap<String, String>,
    ) -> Result<reqwest::RequestBuilder, OAuthError> {
        params.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut headers = HeaderMap::new();
        // Always asked for: GitHub answers form-encoded otherwise; nobody else minds.
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let req = self.client.post(url);
        self.with_client_auth(spec, client, req, params, headers)
    }

    /// Sends a token request and reads the answer.
    async fn token_call(
        &self,
        spec: &ProviderSpec,
        req: reqwest::RequestBuilder,
        operation: Operation,
        sent: &[&str],
    ) -> Result<TokenResponse, OAuthError> {
        let reply = self.send(req).await?;
        tracing::debug!(
            provider = %spec.id,
            operation = ?operation,
            status = reply.status.as_u16(),
            "token endpoint answered"
        );
        if reply.status.is_success() {
            token::parse_success(spec, &reply.body, operation, sent)
        } else {
            Err(status_error(&reply, operation, Caller::Client, sent))
        }
    }

    /// Adds client authentication per [`AuthStyle`] and the body: a form, or JSON with
    /// [`Quirk::JsonTokenRequest`].
    fn with_client_auth<'a>(
        &self,
        spec: &'a ProviderSpec,
        client: &'a ClientCredentials,
        req: reqwest::RequestBuilder,
        mut params: Vec<(&'a str, &'a str)>,
        mut headers: HeaderMap,
    ) -> Result<reqwest::RequestBuilder, OAuthError> {
        match spec.auth_style {
            AuthStyle::Basic => {
                headers.insert(AUTHORIZATION, basic(client)?);
            }
            AuthStyle::Post => {
                params.push((spec.client_id_param(), &client.client_id));
                params.push(("client_secret", client.client_secret.expose_secret()));
            }
        }
        let req = req.headers(headers);
        Ok(if spec.quirks.contains(&Quirk::JsonTokenRequest) {
            let body: serde_json::Map<String, serde_json::Value> = params
                .into_iter()
                .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v.to_owned())))
                .collect();
            req.json(&body)
        } else {
            req.form(&params)
        })
    }

    /// Sends a request and reads the body, refusing redirects and bodies over the cap.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Reply, OAuthError> {
        let mut resp = match &self.guard {
            Some(guard) => {
                let (client, request) = req.build_split();
                let request = request.map_err(transport_error)?;
                guard
                    .check_url(request.url())
                    .map_err(|e| OAuthError::Protocol(format!("outbound request refused: {e}")))?;
                client.execute(request).await.map_err(transport_error)?
            }
            None => req.send().await.map_err(transport_error)?,
        };
        let status = resp.status();
        if status.is_redirection() {
            return Err(OAuthError::Protocol(format!(
                "provider answered with a redirect (http {})",
                status.as_u16()
            )));
        }
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let too_big = || {
            OAuthError::Protocol(format!(
                "provider response larger than {} bytes",
                self.max_body_bytes
            ))
        };
        if resp
            .content_length()
            .is_some_and(|n| n > self.max_body_bytes as u64)
        {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport_error)? {
            if body.len() + chunk.len() > self.max_body_bytes {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Reply {
            status,
            retry_after,
            body,
        })
    }
}

/// Whether this provider revokes with the access token (GitHub grant API, Slack, Dropbox) rather
/// than accepting a refresh token at an RFC 7009 endpoint.
pub fn revokes_with_access_token(spec: &ProviderSpec) -> bool {
    spec.revocation_url
        .as_deref()
        .is_some_and(|url| quirks::revocation_style(spec, url) != RevocationStyle::Rfc7009)
}

fn basic(client: &ClientCredentials) -> Result<HeaderValue, OAuthError> {
    client
        .basic_header()
        .ok_or_else(|| OAuthError::Config("client credentials are not a valid header".to_owned()))
}

/// RFC 7009 §2.2.1 `unsupported_token_type`, read with the `oauth2` crate's revocation error type.
fn unsupported_token_type(body: &[u8]) -> bool {
    serde_json::from_slice::<StandardErrorResponse<RevocationErrorResponseType>>(body)
        .is_ok_and(|e| matches!(e.error(), RevocationErrorResponseType::UnsupportedTokenType))
}

/// Classifies a non-2xx answer.
fn status_error(reply: &Reply, operation: Operation, caller: Caller, sent: &[&str]) -> OAuthError {
    let status = reply.status;
    if status == StatusCode::TOO_MANY_REQUESTS {
        return OAuthError::RateLimited {
            retry_after: reply.retry_after,
        };
    }
    if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        return OAuthError::Transient {
            status: Some(status.as_u16()),
            detail: format!("http {}", status.as_u16()),
        };
    }
    if let Some(e) = token::parse_error_body(&reply.body, operation, sent) {
        return e;
    }
    match (status, caller) {
        (StatusCode::UNAUTHORIZED, Caller::Client) => OAuthError::InvalidClient {
            error: "http_401".to_owned(),
            description: None,
        },
        (StatusCode::UNAUTHORIZED, Caller::Token) => OAuthError::InvalidGrant {
            error: "invalid_token".to_owned(),
            description: None,
        },
        (StatusCode::FORBIDDEN, Caller::Token) => OAuthError::AccessDenied {
            description: Some("http 403".to_owned()),
        },
        _ => OAuthError::Protocol(format!(
            "provider answered http {} without an oauth error",
            status.as_u16()
        )),
    }
}

/// Maps a transport failure to [`OAuthError::Transient`] without the URL (reqwest's own message
/// names it) — only the kind of failure and its causes.
fn transport_error(e: reqwest::Error) -> OAuthError {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "reading the response failed"
    } else {
        "request failed"
    };
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        causes.push(s.to_string());
        source = s.source();
    }
    let detail = if causes.is_empty() {
        kind.to_owned()
    } else {
        let joined = format!("{kind}: {}", causes.join(": "));
        sanitize_description(&joined, &[]).unwrap_or_else(|| kind.to_owned())
    };
    OAuthError::Transient {
        status: e.status().map(|s| s.as_u16()),
        detail,
    }
}

#[cfg(test)]
mod tests {
    //! The token requests as they would go on the wire, built but not sent.
    use super::*;
    use crate::catalog::Pkce;
    use crate::test_support::spec;

    fn oauth() -> OAuthHttp {
        OAuthHttp::new(HttpConfig::default()).unwrap()
    }

    fn client() -> ClientCredentials {
        ClientCredentials::new("cid", SecretString::from("csecret"))
    }

    /// The form fields and the Authorization header of a built request.
    fn wire(req: reqwest::RequestBuilder) -> (Vec<(String, String)>, Option<String>) {
        let req = req.build().unwrap();
        let body = req.body().and_then(|b| b.as_bytes()).unwrap_or_default();
        let form = url::form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let auth = req
            .headers()
            .get(AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_owned());
        (form, auth)
    }

    fn exchange(spec: &ProviderSpec) -> (Vec<(String, String)>, Option<String>) {
        let req = oauth()
            .exchange_request(
                spec,
                &client(),
                CodeGrant {
                    code: &SecretString::from("the-code"),
                    redirect_uri: "https://broker.example/cb",
                    pkce_verifier: None,
                },
                &BTreeMap::new(),
            )
            .unwrap();
        wire(req)
    }

    fn refresh(spec: &ProviderSpec) -> (Vec<(String, String)>, Option<String>) {
        let req = oauth()
            .refresh_request(
                spec,
                &client(),
                &SecretString::from("the-refresh-token"),
                &BTreeMap::new(),
                &BTreeMap::new(),
            )
            .unwrap();
        wire(req)
    }

    fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn extra_token_params_go_on_the_exchange_only() {
        let mut shopify = spec(
            "https://acme.myshopify.com/admin/oauth/authorize",
            Pkce::None,
            &[],
        );
        shopify
            .extra_token_params
            .insert("expiring".to_owned(), "1".to_owned());
        let (form, _) = exchange(&shopify);
        assert_eq!(field(&form, "expiring"), Some("1"));
        assert_eq!(field(&form, "grant_type"), Some("authorization_code"));
        assert_eq!(field(&form, "code"), Some("the-code"));
        let (form, _) = refresh(&shopify);
        assert_eq!(field(&form, "expiring"), None);

        shopify
            .extra_refresh_params
            .insert("scope".to_owned(), "read".to_owned());
        let (form, _) = refresh(&shopify);
        assert_eq!(field(&form, "grant_type"), Some("refresh_token"));
        assert_eq!(field(&form, "refresh_token"), Some("the-refresh-token"));
        assert_eq!(field(&form, "scope"), Some("read"));
    }

    #[test]
    fn client_id_parameter_name_is_the_specs() {
        let mut tiktok = spec("https://www.tiktok.com/v2/auth/authorize/", Pkce::None, &[]);
        tiktok.client_id_param = Some("client_key".to_owned());
        for (form, auth) in [exchange(&tiktok), refresh(&tiktok)] {
            assert_eq!(field(&form, "client_key"), Some("cid"));
            assert_eq!(field(&form, "client_id"), None);
            assert_eq!(field(&form, "client_secret"), Some("csecret"));
            assert_eq!(auth, None);
        }
    }

    #[test]
    fn basic_clients_send_no_credentials_in_the_body() {
        let mut calendly = spec(
            "https://auth.calendly.com/oauth/authorize",
            Pkce::Supported,
            &[],
        );
        calendly.auth_style = AuthStyle::Basic;
        for (form, auth) in [exchange(&calendly), refresh(&calendly)] {
            assert_eq!(field(&form, "client_id"), None);
            assert_eq!(field(&form, "client_secret"), None);
            let auth = auth.expect("basic header");
            assert!(auth.starts_with("Basic "), "{auth}");
        }
    }
}

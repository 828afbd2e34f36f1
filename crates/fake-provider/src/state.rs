//! The authorization server's memory (codes, grants, tokens, counters) and the protocol decisions
//! taken on it: authorize, code exchange, refresh with rotation and reuse detection, revocation.
//! No HTTP here: `routes` parses the requests and renders the outcomes in the configured dialect.

use crate::config::{ClientAuth, Dialect, FakeConfig, TokenFailure, TokenStyle};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Instant;

/// How often the fake was asked what, since it started (failures included unless said otherwise).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// `/authorize` requests.
    pub authorize_calls: u64,
    /// Requests received by the token endpoints (any grant type).
    pub token_calls: u64,
    /// `grant_type=refresh_token` requests.
    pub refresh_calls: u64,
    /// Token endpoint requests answered with an error (injected or not).
    pub token_errors: u64,
    /// Successful revocation requests (any revocation endpoint).
    pub revocations: u64,
    /// Times a superseded (rotated-away) refresh token was presented again.
    pub reuse_detections: u64,
    /// Successful `/userinfo` requests.
    pub userinfo_calls: u64,
}

/// What the fake knows of one grant (one user's consent to the client), found by any of its tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantStats {
    /// The account that consented.
    pub subject: String,
    /// The scopes granted.
    pub scopes: Vec<String>,
    /// `grant_type=refresh_token` requests that presented one of its refresh tokens.
    pub refresh_calls: u64,
    /// Access tokens issued for it.
    pub access_tokens_issued: u64,
    /// Times one of its superseded refresh tokens was presented again.
    pub reuse_detections: u64,
    /// Whether the whole grant was revoked (revocation, replayed code or refresh token reuse).
    pub revoked: bool,
}

/// What the fake saw of one token endpoint request (no secrets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequestRecord {
    /// Request path (`/token`, `/services/oauth2/token`).
    pub path: String,
    /// `grant_type`, if parsable.
    pub grant_type: Option<String>,
    /// `basic`, `post`, `both` or `none`.
    pub client_auth: &'static str,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The `Accept` header.
    pub accept: Option<String>,
    /// The client id the request named (Basic or form), if any.
    pub client_id: Option<String>,
    /// Whether a `code_verifier` was sent.
    pub has_code_verifier: bool,
    /// When it arrived (before any configured delay).
    pub received_at: Instant,
}

/// The token endpoint's error kinds; `routes` renders them per dialect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenError {
    InvalidGrant,
    InvalidClient,
    InvalidRequest,
    UnsupportedGrantType,
    RedirectMismatch,
}

/// A successful token answer, before rendering.
pub(crate) struct Issued {
    pub access: String,
    pub refresh: Option<String>,
    /// Whether the answer says when the token expires (Shopify's non-expiring tokens do not).
    pub expiring: bool,
    pub subject: String,
    pub scopes: Vec<String>,
    /// A stable numeric id for the subject (GitHub-style `id`, Notion `bot_id`).
    pub user_id: u64,
}

/// What `/authorize` answers.
pub(crate) enum Authorization {
    /// Refused without redirecting (unknown client, unregistered redirect URI).
    Refused(&'static str),
    /// Redirect the browser here (with `code` and `state`, or `error`).
    Redirect(String),
}

struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    challenge: Option<String>,
    subject: String,
    scopes: Vec<String>,
    used: bool,
    /// The grant created by the first exchange (revoked if the code is replayed).
    grant: Option<usize>,
}

struct Grant {
    subject: String,
    client_id: String,
    scopes: Vec<String>,
    revoked: bool,
    refresh_calls: u64,
    access_tokens_issued: u64,
    reuse_detections: u64,
}

struct RefreshEntry {
    grant: usize,
    superseded: bool,
}

/// Everything the fake remembers; one lock around it keeps counters and rotation exact under
/// concurrency (it is never held across an `.await`).
pub(crate) struct State {
    pub config: FakeConfig,
    pub port: u16,
    pub failures: VecDeque<TokenFailure>,
    pub counters: Counters,
    pub token_requests: Vec<TokenRequestRecord>,
    /// The client id of each accepted RFC 7009 revocation, in order.
    pub revocation_clients: Vec<String>,
    pub authorize_queries: Vec<BTreeMap<String, String>>,
    seq: u64,
    codes: HashMap<String, CodeGrant>,
    grants: Vec<Grant>,
    access: HashMap<String, usize>,
    refresh: HashMap<String, RefreshEntry>,
    revoked_tokens: HashSet<String>,
    user_ids: BTreeMap<String, u64>,
}

impl State {
    pub fn new(config: FakeConfig, port: u16) -> Self {
        Self {
            config,
            port,
            failures: VecDeque::new(),
            counters: Counters::default(),
            token_requests: Vec::new(),
            revocation_clients: Vec::new(),
            authorize_queries: Vec::new(),
            seq: 0,
            codes: HashMap::new(),
            grants: Vec::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
            revoked_tokens: HashSet::new(),
            user_ids: BTreeMap::new(),
        }
    }

    // --- authorization endpoint -------------------------------------------------------------

    /// Auto-approves (or denies, per config) an authorization request (RFC 6749 §4.1.1).
    pub fn authorize(&mut self, q: &BTreeMap<String, String>) -> Authorization {
        self.counters.authorize_calls += 1;
        self.authorize_queries.push(q.clone());
        let cfg = &self.config;
        let Some(client_id) = q
            .get(&cfg.client_id_param)
            .filter(|id| cfg.secret_of(id).is_some())
            .cloned()
        else {
            return Authorization::Refused("unknown client_id");
        };
        let Some(redirect_uri) = q
            .get("redirect_uri")
            .filter(|r| cfg.redirect_uri_registered(&client_id, r))
            .cloned()
        else {
            // Never redirect to an unregistered URI.
            return Authorization::Refused("redirect_uri not registered");
        };
        let state = q.get("state").map(String::as_str).unwrap_or_default();
        let iss = cfg.issuer.clone();
        // RFC 9207 §2: `iss` goes into success and error responses alike.
        let respond = |params: &[(&str, &str)]| {
            let mut all = params.to_vec();
            if let Some(iss) = &iss {
                all.push(("iss", iss));
            }
            with_params(&redirect_uri, &all)
        };
        let fail = |error: &str| {
            respond(&[("error", error), ("state", state)])
                .map_or(Authorization::Refused("redirect_uri is not a url"), |url| {
                    Authorization::Redirect(url)
                })
        };
        if q.get("response_type").map(String::as_str) != Some("code") {
            return fail("unsupported_response_type");
        }
        let challenge = q.get("code_challenge").cloned();
        if challenge.is_some() && q.get("code_challenge_method").map(String::as_str) != Some("S256")
        {
            return fail("invalid_request");
        }
        if cfg.require_pkce && challenge.is_none() {
            return fail("invalid_request");
        }
        if cfg.deny {
            return fail("access_denied");
        }
        // Slack asks for user token scopes in `user_scope`.
        let scope_param = if cfg.dialect == Dialect::Slack {
            q.get("user_scope").or_else(|| q.get("scope"))
        } else {
            q.get("scope")
        };
        let scopes = scope_param.map(|s| split_scopes(s)).unwrap_or_default();
        let grant = CodeGrant {
            client_id,
            redirect_uri: redirect_uri.clone(),
            challenge,
            subject: cfg.subject.clone(),
            scopes,
            used: false,
            grant: None,
        };
        let code = self.next_token("code");
        let Some(url) = respond(&[("code", &code), ("state", state)]) else {
            return Authorization::Refused("redirect_uri is not a url");
        };
        self.codes.insert(code, grant);
        Authorization::Redirect(url)
    }

    // --- token endpoint ---------------------------------------------------------------------

    /// Counts a token request on arrival and records it; returns the failure to answer with,
    /// if one is queued or configured.
    pub fn arrive(
        &mut self,
        record: TokenRequestRecord,
        refresh_token: Option<&str>,
    ) -> Option<TokenFailure> {
        self.counters.token_calls += 1;
        if record.grant_type.as_deref() == Some("refresh_token") {
            self.counters.refresh_calls += 1;
            if let Some(entry) = refresh_token.and_then(|t| self.refresh.get(t)) {
                self.grants[entry.grant].refresh_calls += 1;
            }
        }
        self.token_requests.push(record);
        let failure = self.failures.pop_front().or(self.config.token_failure);
        if failure.is_some() {
            self.counters.token_errors += 1;
        }
        failure
    }

    /// Processes an authenticated token request (RFC 6749 §4.1.3 and §6).
    pub fn token(
        &mut self,
        params: &BTreeMap<String, String>,
        client_id: &str,
    ) -> Result<Issued, TokenError> {
        let result = match params.get("grant_type").map(String::as_str) {
            Some("authorization_code") => self.exchange(params, client_id),
            Some("refresh_token") => self.refresh(params, client_id),
            _ => Err(TokenError::UnsupportedGrantType),
        };
        if result.is_err() {
            self.counters.token_errors += 1;
        }
        result
    }

    /// Counts a request refused before processing (unparsable body, bad client authentication).
    pub fn refuse(&mut self, error: TokenError) -> TokenError {
        self.counters.token_errors += 1;
        error
    }

    fn exchange(
        &mut self,
        params: &BTreeMap<String, String>,
        client_id: &str,
    ) -> Result<Issued, TokenError> {
        let code = params.get("code").ok_or(TokenError::InvalidRequest)?;
        let entry = self.codes.get_mut(code).ok_or(TokenError::InvalidGrant)?;
        if entry.used {
            // RFC 6749 §4.1.2: a replayed code revokes what it produced.
            if let Some(g) = entry.grant {
                self.grants[g].revoked = true;
            }
            return Err(TokenError::InvalidGrant);
        }
        if entry.client_id != client_id {
            return Err(TokenError::InvalidGrant);
        }
        if params.get("redirect_uri") != Some(&entry.redirect_uri) {
            return Err(TokenError::RedirectMismatch);
        }
        if let Some(challenge) = &entry.challenge {
            match params.get("code_verifier") {
                Some(v) if s256(v) == *challenge => {}
                _ => return Err(TokenError::InvalidGrant),
            }
        }
        entry.used = true;
        let (subject, requested) = (entry.subject.clone(), entry.scopes.clone());
        let scopes = match &self.config.granted_scopes {
            Some(allowed) => requested
                .into_iter()
                .filter(|s| allowed.contains(s))
                .collect(),
            None => requested,
        };
        let grant = self.new_grant(&subject, client_id, scopes);
        if let Some(entry) = self.codes.get_mut(code) {
            entry.grant = Some(grant);
        }
        // Shopify hands out expiring tokens only to clients that ask (`expiring=1`).
        let expiring = self
            .config
            .expiring_only_with
            .as_ref()
            .is_none_or(|(name, value)| params.get(name) == Some(value));
        let refresh =
            (self.config.issue_refresh_tokens && expiring).then(|| self.new_refresh(grant));
        let mut issued = self.issue(grant, refresh);
        issued.expiring = expiring;
        Ok(issued)
    }

    fn refresh(
        &mut self,
        params: &BTreeMap<String, String>,
        client_id: &str,
    ) -> Result<Issued, TokenError> {
        let token = params
            .get("refresh_token")
            .ok_or(TokenError::InvalidRequest)?;
        let entry = self.refresh.get(token).ok_or(TokenError::InvalidGrant)?;
        let (grant, superseded) = (entry.grant, entry.superseded);
        if self.grants[grant].client_id != client_id {
            return Err(TokenError::InvalidGrant);
        }
        if superseded {
            self.counters.reuse_detections += 1;
            self.grants[grant].reuse_detections += 1;
            if self.config.reuse_revokes_grant {
                self.grants[grant].revoked = true;
            }
            return Err(TokenError::InvalidGrant);
        }
        if self.grants[grant].revoked || self.revoked_tokens.contains(token) {
            return Err(TokenError::InvalidGrant);
        }
        let refresh = if self.config.rotate_refresh_tokens {
            if let Some(e) = self.refresh.get_mut(token) {
                e.superseded = true;
            }
            Some(self.new_refresh(grant))
        } else {
            None
        };
        Ok(self.issue(grant, refresh))
    }

    fn issue(&mut self, grant: usize, refresh: Option<String>) -> Issued {
        let access = self.new_access(grant);
        let subject = self.grants[grant].subject.clone();
        Issued {
            access,
            refresh,
            expiring: true,
            scopes: self.grants[grant].scopes.clone(),
            user_id: self.user_id(&subject),
            subject,
        }
    }

    /// A grant issued directly to `client_id`, as if a user had connected through it: (access
    /// token, refresh token).
    pub fn issue_grant(&mut self, subject: &str, client_id: &str) -> (String, String) {
        let grant = self.new_grant(subject, client_id, vec!["read".to_owned()]);
        let access = self.new_access(grant);
        let refresh = self.new_refresh(grant);
        (access, refresh)
    }

    // --- revocation and resources -----------------------------------------------------------

    /// RFC 7009: revoking a refresh token revokes its grant, an access token only itself;
    /// unknown tokens are accepted silently (§2.2).
    pub fn revoke(&mut self, token: &str) {
        if let Some(entry) = self.refresh.get(token) {
            self.grants[entry.grant].revoked = true;
        } else if self.access.contains_key(token) {
            self.revoked_tokens.insert(token.to_owned());
        }
        self.counters.revocations += 1;
    }

    /// Revokes the grant of a live access token (Slack, Dropbox and GitHub revoke by access
    /// token); false when the token is not live.
    pub fn revoke_by_access_token(&mut self, token: &str) -> bool {
        let Some(grant) = self.valid_access(token) else {
            return false;
        };
        self.grants[grant].revoked = true;
        self.counters.revocations += 1;
        true
    }

    /// The subject behind a live access token, with its numeric id.
    pub fn userinfo(&mut self, token: &str) -> Option<(String, u64)> {
        let grant = self.valid_access(token)?;
        self.counters.userinfo_calls += 1;
        let subject = self.grants[grant].subject.clone();
        let id = self.user_id(&subject);
        Some((subject, id))
    }

    /// The grant of a live access token.
    pub fn valid_access(&self, token: &str) -> Option<usize> {
        let grant = *self.access.get(token)?;
        (!self.grants[grant].revoked && !self.revoked_tokens.contains(token)).then_some(grant)
    }

    // --- inspection -------------------------------------------------------------------------

    /// Whether `token` (access or refresh) was revoked, alone or with its grant.
    pub fn is_revoked(&self, token: &str) -> bool {
        self.revoked_tokens.contains(token) || self.grant_of(token).is_some_and(|g| g.revoked)
    }

    /// Whether `token` is the live refresh token of a live grant.
    pub fn is_current_refresh_token(&self, token: &str) -> bool {
        self.refresh.get(token).is_some_and(|r| {
            !r.superseded && !self.grants[r.grant].revoked && !self.revoked_tokens.contains(token)
        })
    }

    /// The grant any of whose tokens (access or refresh, current or not) is `token`.
    pub fn grant_stats(&self, token: &str) -> Option<GrantStats> {
        self.grant_of(token).map(|g| GrantStats {
            subject: g.subject.clone(),
            scopes: g.scopes.clone(),
            refresh_calls: g.refresh_calls,
            access_tokens_issued: g.access_tokens_issued,
            reuse_detections: g.reuse_detections,
            revoked: g.revoked,
        })
    }

    fn grant_of(&self, token: &str) -> Option<&Grant> {
        let index = self
            .access
            .get(token)
            .copied()
            .or_else(|| self.refresh.get(token).map(|r| r.grant))?;
        self.grants.get(index)
    }

    /// The separator of the `scope` values in answers.
    pub fn scope_separator(&self) -> &'static str {
        match self.config.dialect {
            Dialect::Slack | Dialect::Github => ",",
            _ => " ",
        }
    }

    // --- bookkeeping ------------------------------------------------------------------------

    fn next_token(&mut self, kind: &str) -> String {
        self.seq += 1;
        match &self.config.token_style {
            TokenStyle::Sequential => format!("{kind}_{}_{}", self.port, self.seq),
            // The sequence number keeps tokens unique even if the random source failed.
            TokenStyle::Random { prefix } => format!("{prefix}-{kind}-{}{}", random(), self.seq),
        }
    }

    fn new_grant(&mut self, subject: &str, client_id: &str, scopes: Vec<String>) -> usize {
        self.grants.push(Grant {
            subject: subject.to_owned(),
            client_id: client_id.to_owned(),
            scopes,
            revoked: false,
            refresh_calls: 0,
            access_tokens_issued: 0,
            reuse_detections: 0,
        });
        self.grants.len() - 1
    }

    fn new_access(&mut self, grant: usize) -> String {
        let token = self.next_token("at");
        self.access.insert(token.clone(), grant);
        self.grants[grant].access_tokens_issued += 1;
        token
    }

    fn new_refresh(&mut self, grant: usize) -> String {
        let token = self.next_token("rt");
        self.refresh.insert(
            token.clone(),
            RefreshEntry {
                grant,
                superseded: false,
            },
        );
        token
    }

    fn user_id(&mut self, subject: &str) -> u64 {
        let next = 1000 + self.user_ids.len() as u64;
        *self.user_ids.entry(subject.to_owned()).or_insert(next)
    }
}

/// Checks client authentication (RFC 6749 §2.3.1) against the registered client. Returns how the
/// client authenticated (`basic`, `post`, `both`, `none`) and its id or the error.
pub(crate) fn authenticate(
    cfg: &FakeConfig,
    basic: Option<(String, String)>,
    params: &BTreeMap<String, String>,
) -> (&'static str, Result<String, TokenError>) {
    let post = params.get("client_secret").map(|secret| {
        (
            params
                .get(&cfg.client_id_param)
                .cloned()
                .unwrap_or_default(),
            secret.clone(),
        )
    });
    let (used, (id, secret)) = match (basic, post) {
        (Some(_), Some(_)) => return ("both", Err(TokenError::InvalidRequest)),
        (Some(b), None) => (ClientAuth::Basic, b),
        (None, Some(p)) => (ClientAuth::Post, p),
        (None, None) => return ("none", Err(TokenError::InvalidClient)),
    };
    let label = match used {
        ClientAuth::Basic => "basic",
        ClientAuth::Post => "post",
    };
    if cfg.client_auth.is_some_and(|want| want != used) {
        return (label, Err(TokenError::InvalidClient));
    }
    if cfg.secret_of(&id) != Some(secret.as_str()) {
        return (label, Err(TokenError::InvalidClient));
    }
    (label, Ok(id))
}

/// The client id a token or revocation request names (Basic first, else the form), whether or
/// not it authenticates.
pub(crate) fn presented_client_id(
    cfg: &FakeConfig,
    basic: Option<&(String, String)>,
    params: &BTreeMap<String, String>,
) -> Option<String> {
    basic
        .map(|(id, _)| id.clone())
        .or_else(|| params.get(&cfg.client_id_param).cloned())
}

/// `redirect_uri` with extra query parameters appended; `None` if it is not a URL.
fn with_params(redirect_uri: &str, params: &[(&str, &str)]) -> Option<String> {
    let mut url = url::Url::parse(redirect_uri).ok()?;
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
    }
    Some(url.to_string())
}

fn split_scopes(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The PKCE S256 challenge of `verifier` (RFC 7636 §4.2).
fn s256(verifier: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

fn random() -> String {
    let mut bytes = [0u8; 24];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

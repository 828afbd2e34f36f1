//! The provider catalog: one entry per OAuth service, loaded from `catalog/providers.toml`
//! (compiled into the binary) and extended or overridden by config.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How the client authenticates at the token endpoint.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthStyle {
    /// HTTP Basic with client id and secret (RFC 6749 §2.3.1).
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

/// Whether the provider uses PKCE (RFC 7636, S256).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Pkce {
    /// The provider requires it.
    Required,
    /// The provider accepts it; the broker sends it.
    Supported,
    /// The provider rejects or ignores it; the broker does not send it.
    None,
}

/// How the broker learns which account was connected.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AccountSource {
    /// GET a JSON document with the access token as Bearer and read two JSON pointers from it.
    Userinfo {
        /// The endpoint (https).
        url: String,
        /// JSON pointer (RFC 6901) of the stable account id, e.g. `/sub` or `/id`.
        subject_pointer: String,
        /// JSON pointer of the human label (email or login), e.g. `/email`.
        label_pointer: String,
        /// Extra request headers some APIs need (e.g. `Notion-Version`).
        #[serde(default)]
        headers: BTreeMap<String, String>,
        /// When set, the request is a POST with this JSON body (`Content-Type: application/json`)
        /// instead of a GET; for GraphQL-only APIs (Linear, monday.com).
        #[serde(default)]
        body: Option<String>,
        /// When set, the access token goes in this header as-is instead of
        /// `Authorization: Bearer` (Shopify: `X-Shopify-Access-Token`).
        #[serde(default)]
        token_header: Option<String>,
    },
    /// Read `sub` and `email` from the OpenID Connect id token in the token response.
    IdToken,
    /// Read the account from the token response itself, with JSON pointers.
    TokenResponse {
        /// JSON pointer of the stable account id, e.g. `/authed_user/id`.
        subject_pointer: String,
        /// JSON pointer of the label.
        label_pointer: String,
    },
}

/// Token lifetimes and rotation, as documented by the provider.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RefreshBehaviour {
    /// Typical access token lifetime in seconds (None: tokens do not expire, or unknown).
    pub access_token_lifetime_seconds: Option<u64>,
    /// Whether each refresh returns a new refresh token that replaces the old one.
    #[serde(default)]
    pub rotates_refresh_tokens: bool,
    /// Whether an old refresh token stops working once used (single use, e.g. Box).
    #[serde(default)]
    pub single_use_refresh_tokens: bool,
    /// Refresh token lifetime in seconds, if bounded.
    pub refresh_token_lifetime_seconds: Option<u64>,
    /// Refresh token expires after this many seconds without use (Microsoft ~90 days, Xero 60 days).
    /// A keep-alive refresh before this limit keeps the grant alive.
    pub refresh_token_idle_seconds: Option<u64>,
    /// The grant ends this many seconds after the user's consent whatever the broker does
    /// (Spotify 6 months, Atlassian 365 days): refreshing does not extend it, only reconnecting.
    pub refresh_token_absolute_seconds: Option<u64>,
    /// How long a rotated-out refresh token is still accepted (Atlassian 10 minutes, Xero 30):
    /// a refresh whose answer was lost may be retried with the old token within this window.
    pub reuse_grace_seconds: Option<u64>,
    /// Most live refresh tokens the provider keeps per user and client (Google 100, Zoho 20): one
    /// more silently invalidates the oldest, so connecting the same account again kills a grant.
    pub max_refresh_tokens_per_user: Option<u32>,
}

/// A provider behaviour that the generic RFC 6749 code does not cover; handled in code.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Quirk {
    /// Errors come as HTTP 200 with `{"ok": false, "error": ...}` (Slack).
    OkFalseErrors,
    /// User tokens are under `authed_user` in the token response (Slack v2 user scopes).
    SlackAuthedUser,
    /// The token endpoint needs `Accept: application/json` and reports errors with HTTP 200 (GitHub).
    GithubJsonAccept,
    /// The token endpoint takes a JSON body instead of a form (Notion).
    JsonTokenRequest,
    /// Keep `instance_url` from the token response and send refreshes to that host (Salesforce).
    SalesforceInstanceUrl,
    /// Look up the Atlassian cloud id(s) after connecting and keep them as an extra.
    AtlassianCloudId,
    /// Keep the QuickBooks `realmId` from the callback as an extra.
    QuickbooksRealmId,
    /// Look up the Xero tenant id after connecting and keep it as an extra.
    XeroTenantId,
    /// Shopify: authorize/token URLs contain the shop domain (`{shop}` placeholder).
    ShopSubdomain,
    /// Zendesk and similar: URLs contain the customer's subdomain (`{subdomain}` placeholder).
    Subdomain,
    /// Scopes are separated by commas instead of spaces.
    CommaSeparatedScopes,
    /// The provider may grant fewer scopes than requested; the granted set is in `scope`.
    PartialScopeGrant,
    /// Access tokens do not expire (no `expires_in`).
    NonExpiringTokens,
}

/// One offered scope and what it allows, in words a user understands.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScopeSpec {
    /// The scope string.
    pub name: String,
    /// Human description ("Read your email").
    pub description: String,
}

/// One catalog entry.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// Catalog id (`gmail`, `slack`, ...).
    pub id: String,
    /// Name shown in the UI.
    pub display_name: String,
    /// Icon URL (https).
    pub icon_url: String,
    /// Category (`email`, `chat`, `crm`, `storage`, `developer`, `productivity`, ...).
    pub category: String,
    /// Authorization endpoint.
    pub authorize_url: String,
    /// Token endpoint.
    pub token_url: String,
    /// Revocation endpoint (RFC 7009 or the provider's API), if any.
    pub revocation_url: Option<String>,
    /// Revoking any token ends the user's whole authorization of the app, every grant of that
    /// account included (Google, GitHub's grant endpoint), rather than that one grant (RFC 7009).
    /// The broker then never revokes a grant of an account it keeps another grant of.
    #[serde(default)]
    pub revocation_ends_authorization: bool,
    /// The authorization server's issuer identifier (RFC 9207), set only where the provider
    /// documents that its authorization responses carry `iss`: CompleteConnect then refuses a
    /// response whose `iss` is missing or different, before the code is exchanged (mix-up defence).
    #[serde(default)]
    pub issuer: Option<String>,
    /// How the connected account is identified.
    pub account: AccountSource,
    /// Scopes requested when the caller names none.
    pub default_scopes: Vec<String>,
    /// Every offered scope with its description (defaults included).
    pub scopes: Vec<ScopeSpec>,
    /// Client authentication at the token endpoint.
    pub auth_style: AuthStyle,
    /// PKCE use.
    pub pkce: Pkce,
    /// Extra authorize parameters (e.g. Google `access_type=offline`, `prompt=consent`).
    #[serde(default)]
    pub extra_authorize_params: BTreeMap<String, String>,
    /// Extra parameters of the code exchange (Shopify `expiring=1` for expiring offline tokens).
    #[serde(default)]
    pub extra_token_params: BTreeMap<String, String>,
    /// Extra parameters of every refresh request.
    #[serde(default)]
    pub extra_refresh_params: BTreeMap<String, String>,
    /// Name of the client id parameter in the authorize URL and, with `auth_style = "post"`, in
    /// token requests; `client_id` when unset (TikTok: `client_key`).
    #[serde(default)]
    pub client_id_param: Option<String>,
    /// Token lifetimes and rotation.
    #[serde(default)]
    pub refresh: RefreshBehaviour,
    /// Behaviours handled in code.
    #[serde(default)]
    pub quirks: Vec<Quirk>,
    /// Link to the provider's OAuth documentation the entry was checked against.
    pub docs_url: String,
    /// The documents the entry's values come from (https URLs): provider docs, changelogs,
    /// discovery documents, official SDKs.
    #[serde(default)]
    pub sources: Vec<String>,
    /// The day the entry was last checked against its sources (`YYYY-MM-DD`).
    #[serde(default)]
    pub checked: Option<String>,
    /// `false` when a value the broker relies on (endpoints, client authentication, account,
    /// lifetimes) could not be confirmed from a source; see [`ProviderSpec::is_verified`].
    #[serde(default = "default_true")]
    pub verified: bool,
    /// The values not confirmed by any source, in words (`"token_url"`, `"1-hour access tokens"`).
    #[serde(default)]
    pub unsure: Vec<String>,
    /// A lookup made right after connecting whose answers are kept as provider extras
    /// (Atlassian cloud id, Xero tenant id).
    #[serde(default)]
    pub post_connect: Option<PostConnectLookup>,
}

fn default_true() -> bool {
    true
}

/// Access token lifetime assumed when neither the provider's answer (`expires_in`) nor the
/// catalog gives one but a refresh token can renew the token: an hour, the most common lifetime;
/// refreshing too early costs a request, refreshing too late hands out dead tokens.
pub const DEFAULT_ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

impl ProviderSpec {
    /// The parameter that carries the client id (`client_id` unless the entry names another).
    pub fn client_id_param(&self) -> &str {
        self.client_id_param.as_deref().unwrap_or("client_id")
    }

    /// Whether the entry's values are backed by sources: marked verified and naming at least
    /// one source. Entries declared in config without `sources` are reported unverified.
    pub fn is_verified(&self) -> bool {
        self.verified && !self.sources.is_empty()
    }

    /// The access token lifetime to assume when the provider sent no `expires_in`: the catalog's
    /// `access_token_lifetime_seconds`, else [`DEFAULT_ACCESS_TOKEN_LIFETIME`]. `None` when the
    /// tokens do not expire (`non_expiring_tokens`) or when nothing could renew the token
    /// (`refreshable` false): a token assumed dead without a refresh token could never be used
    /// again, while a wrongly assumed live one is only rejected at use.
    pub fn fallback_access_token_lifetime(&self, refreshable: bool) -> Option<Duration> {
        if !refreshable || self.quirks.contains(&Quirk::NonExpiringTokens) {
            return None;
        }
        Some(
            self.refresh
                .access_token_lifetime_seconds
                .map_or(DEFAULT_ACCESS_TOKEN_LIFETIME, Duration::from_secs),
        )
    }
}

/// After connecting, GET `url` with the new access token and keep values from the JSON answer.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PostConnectLookup {
    /// The endpoint (https; placeholders allowed).
    pub url: String,
    /// Extra name → JSON pointer into the answer (e.g. `cloud_id = "/0/id"`).
    pub extras: BTreeMap<String, String>,
}

/// The built-in catalog, compiled into the binary.
const BUILTIN_TOML: &str = include_str!("../catalog/providers.toml");

/// URL placeholders filled in per connection, each with the quirk that declares it.
const PLACEHOLDERS: [(&str, Quirk); 2] = [
    ("{shop}", Quirk::ShopSubdomain),
    ("{subdomain}", Quirk::Subdomain),
];

/// Placeholder allowed only in `revocation_url`: the app's client id (GitHub's grant API).
const CLIENT_ID_PLACEHOLDER: &str = "{client_id}";

/// Authorize parameters the broker always sets itself; `extra_authorize_params` may not set them.
const RESERVED_AUTHORIZE_PARAMS: [&str; 7] = [
    "client_id",
    "redirect_uri",
    "response_type",
    "state",
    "scope",
    "code_challenge",
    "code_challenge_method",
];

/// The file format: a list of `[[provider]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    /// The entries, in file order.
    #[serde(default)]
    provider: Vec<ProviderSpec>,
}

/// A validated set of providers keyed by id: the built-in entries plus any added or overridden
/// by config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Entries by id (ordered, so listings are stable).
    providers: BTreeMap<String, ProviderSpec>,
    /// Whether entries inserted into this catalog may use `http://127.0.0.1` / `http://localhost`.
    allow_http_loopback: bool,
}

/// Why a catalog or one of its entries was rejected, with every problem found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_error(.provider.as_deref(), .problems))]
pub struct CatalogError {
    /// The provider id the problems belong to; `None` when the catalog text itself is malformed.
    pub provider: Option<String>,
    /// Each problem, in words.
    pub problems: Vec<String>,
}

/// Formats a [`CatalogError`] as one line naming the provider.
fn render_error(provider: Option<&str>, problems: &[String]) -> String {
    match provider {
        Some(id) => format!("invalid provider `{id}`: {}", problems.join("; ")),
        None => format!("invalid provider catalog: {}", problems.join("; ")),
    }
}

impl CatalogError {
    /// An error for one provider.
    fn for_provider(id: &str, problems: Vec<String>) -> Self {
        Self {
            provider: Some(id.to_owned()),
            problems,
        }
    }
}

impl Catalog {
    /// An empty catalog that accepts only https URLs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets whether entries inserted from now on may use plain-http loopback URLs
    /// (`http://127.0.0.1`, `http://localhost`): for tests and the local dev provider.
    #[must_use]
    pub fn with_http_loopback(mut self, allow: bool) -> Self {
        self.allow_http_loopback = allow;
        self
    }

    /// The catalog compiled into the binary (`catalog/providers.toml`).
    pub fn builtin() -> Result<Catalog, CatalogError> {
        Self::from_toml(BUILTIN_TOML)
    }

    /// Parses and validates a catalog from TOML `[[provider]]` tables (https URLs only).
    /// Rejects unknown fields, duplicate ids and invalid entries; the error names the provider.
    pub fn from_toml(text: &str) -> Result<Catalog, CatalogError> {
        let mut catalog = Self::new();
        catalog.extend_from_toml(text)?;
        Ok(catalog)
    }

    /// Parses TOML `[[provider]]` tables and inserts every entry (replacing entries with the same
    /// id), as config does to add custom providers or override built-in ones. Nothing is inserted
    /// unless every entry is valid and no id repeats within `text`.
    pub fn extend_from_toml(&mut self, text: &str) -> Result<(), CatalogError> {
        let file: CatalogFile = toml::from_str(text).map_err(|e| CatalogError {
            provider: None,
            problems: vec![e.to_string().trim().to_owned()],
        })?;
        let mut seen = BTreeSet::new();
        for spec in &file.provider {
            if !seen.insert(spec.id.as_str()) {
                return Err(CatalogError::for_provider(
                    &spec.id,
                    vec![
                        "duplicate provider id: the id appears more than once in the catalog"
                            .to_owned(),
                    ],
                ));
            }
            Self::validate(spec, self.allow_http_loopback)
                .map_err(|problems| CatalogError::for_provider(&spec.id, problems))?;
        }
        for spec in file.provider {
            self.providers.insert(spec.id.clone(), spec);
        }
        Ok(())
    }

    /// The entry with this id.
    pub fn get(&self, id: &str) -> Option<&ProviderSpec> {
        self.providers.get(id)
    }

    /// All entries, ordered by id.
    pub fn iter(&self) -> impl Iterator<Item = &ProviderSpec> {
        self.providers.values()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.providers.len()
    }

    /// Whether the catalog has no entries.
    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// Validates `spec` and adds it, replacing any entry with the same id (how config adds
    /// custom providers or overrides built-in ones).
    pub fn insert(&mut self, spec: ProviderSpec) -> Result<(), CatalogError> {
        Self::validate(&spec, self.allow_http_loopback)
            .map_err(|problems| CatalogError::for_provider(&spec.id, problems))?;
        self.providers.insert(spec.id.clone(), spec);
        Ok(())
    }

    /// Removes and returns the entry with this id (config can disable a built-in provider).
    pub fn remove(&mut self, id: &str) -> Option<ProviderSpec> {
        self.providers.remove(id)
    }

    /// Checks one entry and lists every problem found: https-only URLs (plain http only for
    /// loopback hosts when `allow_http_loopback`), id syntax, required texts, scope lists,
    /// quirk consistency, placeholders, account source and refresh settings.
    pub fn validate(spec: &ProviderSpec, allow_http_loopback: bool) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        check_identity(spec, &mut problems);
        check_urls(spec, allow_http_loopback, &mut problems);
        check_scopes(spec, &mut problems);
        check_quirks(spec, &mut problems);
        check_placeholders(spec, &mut problems);
        check_account(spec, allow_http_loopback, &mut problems);
        check_refresh(spec, &mut problems);
        check_extra_params(spec, &mut problems);
        check_provenance(spec, allow_http_loopback, &mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// The snake_case name of a quirk, as written in the catalog.
fn quirk_name(quirk: Quirk) -> &'static str {
    match quirk {
        Quirk::OkFalseErrors => "ok_false_errors",
        Quirk::SlackAuthedUser => "slack_authed_user",
        Quirk::GithubJsonAccept => "github_json_accept",
        Quirk::JsonTokenRequest => "json_token_request",
        Quirk::SalesforceInstanceUrl => "salesforce_instance_url",
        Quirk::AtlassianCloudId => "atlassian_cloud_id",
        Quirk::QuickbooksRealmId => "quickbooks_realm_id",
        Quirk::XeroTenantId => "xero_tenant_id",
        Quirk::ShopSubdomain => "shop_subdomain",
        Quirk::Subdomain => "subdomain",
        Quirk::CommaSeparatedScopes => "comma_separated_scopes",
        Quirk::PartialScopeGrant => "partial_scope_grant",
        Quirk::NonExpiringTokens => "non_expiring_tokens",
    }
}

/// Whether `id` matches `^[a-z][a-z0-9_-]{0,63}$`.
fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some('a'..='z'))
        && id.len() <= 64
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
}

/// Id syntax and the required human texts.
fn check_identity(spec: &ProviderSpec, problems: &mut Vec<String>) {
    if !valid_id(&spec.id) {
        problems.push(format!(
            "id `{}` must match ^[a-z][a-z0-9_-]{{0,63}}$",
            spec.id
        ));
    }
    for (field, value) in [
        ("display_name", &spec.display_name),
        ("category", &spec.category),
        ("docs_url", &spec.docs_url),
        ("icon_url", &spec.icon_url),
    ] {
        if value.trim().is_empty() {
            problems.push(format!("{field} is empty"));
        }
    }
    let category_ok = spec
        .category
        .chars()
        .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-'));
    if !spec.category.is_empty() && !category_ok {
        problems.push(format!(
            "category `{}` must be lowercase letters, digits and `-`",
            spec.category
        ));
    }
}

/// Every URL of the entry except the account source's.
fn check_urls(spec: &ProviderSpec, allow_http_loopback: bool, problems: &mut Vec<String>) {
    check_url(
        "authorize_url",
        &spec.authorize_url,
        allow_http_loopback,
        problems,
    );
    check_url("token_url", &spec.token_url, allow_http_loopback, problems);
    if let Some(url) = &spec.revocation_url {
        check_url("revocation_url", url, allow_http_loopback, problems);
    }
    // RFC 8414 §2: an issuer identifier has no query and no fragment.
    if let Some(issuer) = &spec.issuer
        && check_link("issuer", issuer, allow_http_loopback, problems)
        && issuer.contains(['?', '#'])
    {
        problems.push(format!(
            "issuer `{issuer}` must not contain a query or fragment"
        ));
    }
    if let Some(lookup) = &spec.post_connect {
        check_url(
            "post_connect.url",
            &lookup.url,
            allow_http_loopback,
            problems,
        );
        if lookup.extras.is_empty() || lookup.extras.values().any(|p| !p.starts_with('/')) {
            problems.push(
                "post_connect.extras must map names to JSON pointers starting with `/`".to_owned(),
            );
        }
    }
    // Links shown to people (not called by the broker) may carry a fragment.
    if !spec.icon_url.trim().is_empty() {
        check_link("icon_url", &spec.icon_url, allow_http_loopback, problems);
    }
    if !spec.docs_url.trim().is_empty() {
        check_link("docs_url", &spec.docs_url, allow_http_loopback, problems);
    }
}

/// Checks an endpoint the broker calls: [`check_link`] rules, and no fragment.
fn check_url(field: &str, url: &str, allow_http_loopback: bool, problems: &mut Vec<String>) {
    if check_link(field, url, allow_http_loopback, problems) && url.contains('#') {
        problems.push(format!("{field} `{url}` must not contain a fragment"));
    }
}

/// Checks that `url` is an absolute https URL with a host (or plain http to a loopback host when
/// allowed), without whitespace or credentials. Returns whether it passed.
fn check_link(
    field: &str,
    url: &str,
    allow_http_loopback: bool,
    problems: &mut Vec<String>,
) -> bool {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        problems.push(format!("{field} `{url}` contains whitespace"));
        return false;
    }
    let (rest, is_http) = if let Some(rest) = url.strip_prefix("https://") {
        (rest, false)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (rest, true)
    } else {
        problems.push(format!("{field} `{url}` must be an https:// URL"));
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        problems.push(format!("{field} `{url}` must not contain credentials"));
        return false;
    }
    let host = if authority.starts_with('[') {
        authority
            .find(']')
            .map_or(authority, |end| &authority[..=end])
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    if host.is_empty() {
        problems.push(format!("{field} `{url}` has no host"));
        return false;
    }
    if is_http {
        let loopback = matches!(host, "127.0.0.1" | "localhost" | "[::1]");
        if !(allow_http_loopback && loopback) {
            problems.push(format!(
                "{field} `{url}` must use https (plain http is only allowed for 127.0.0.1/localhost in tests and local development)"
            ));
            return false;
        }
    }
    true
}

/// Scope names and descriptions, duplicates, and default scopes.
fn check_scopes(spec: &ProviderSpec, problems: &mut Vec<String>) {
    let comma_separated = spec.quirks.contains(&Quirk::CommaSeparatedScopes);
    let mut names = BTreeSet::new();
    for scope in &spec.scopes {
        if scope.name.is_empty() {
            problems.push("a scope has an empty name".to_owned());
        } else if scope.name.chars().any(char::is_whitespace) {
            problems.push(format!("scope `{}` contains whitespace", scope.name));
        } else if comma_separated && scope.name.contains(',') {
            problems.push(format!(
                "scope `{}` contains a comma but scopes are comma-separated",
                scope.name
            ));
        }
        if scope.description.trim().is_empty() {
            problems.push(format!("scope `{}` has no description", scope.name));
        }
        if !names.insert(scope.name.as_str()) {
            problems.push(format!("scope `{}` is listed more than once", scope.name));
        }
    }
    let mut defaults = BTreeSet::new();
    for name in &spec.default_scopes {
        if !names.contains(name.as_str()) {
            problems.push(format!(
                "default scope `{name}` is not described in `scopes`"
            ));
        }
        if !defaults.insert(name.as_str()) {
            problems.push(format!("default scope `{name}` is listed more than once"));
        }
    }
}

/// Quirks that contradict each other or the rest of the entry.
fn check_quirks(spec: &ProviderSpec, problems: &mut Vec<String>) {
    let mut quirks = BTreeSet::new();
    for quirk in &spec.quirks {
        if !quirks.insert(*quirk) {
            problems.push(format!(
                "quirk `{}` is listed more than once",
                quirk_name(*quirk)
            ));
        }
    }
    for q in [Quirk::AtlassianCloudId, Quirk::XeroTenantId] {
        if quirks.contains(&q) && spec.post_connect.is_none() {
            problems.push(format!(
                "quirk `{}` requires a post_connect lookup that finds the tenant",
                quirk_name(q)
            ));
        }
    }
    if quirks.contains(&Quirk::SlackAuthedUser) && !quirks.contains(&Quirk::OkFalseErrors) {
        problems.push(
            "quirk `slack_authed_user` requires `ok_false_errors` (Slack reports errors as HTTP 200 with ok=false)"
                .to_owned(),
        );
    }
    if quirks.contains(&Quirk::SalesforceInstanceUrl) && !spec.id.contains("salesforce") {
        problems.push(format!(
            "quirk `salesforce_instance_url` is only for Salesforce providers (id containing `salesforce`), not `{}`",
            spec.id
        ));
    }
    if quirks.contains(&Quirk::NonExpiringTokens)
        && spec.refresh.access_token_lifetime_seconds.is_some()
    {
        problems.push(
            "quirk `non_expiring_tokens` contradicts refresh.access_token_lifetime_seconds (leave it unset)"
                .to_owned(),
        );
    }
    if spec.refresh.single_use_refresh_tokens && !spec.refresh.rotates_refresh_tokens {
        problems.push(
            "refresh.single_use_refresh_tokens requires refresh.rotates_refresh_tokens".to_owned(),
        );
    }
}

/// All URLs that may carry placeholders, with their field names.
fn placeholder_urls(spec: &ProviderSpec) -> Vec<(&'static str, &str)> {
    let mut urls = vec![
        ("authorize_url", spec.authorize_url.as_str()),
        ("token_url", spec.token_url.as_str()),
    ];
    if let Some(url) = &spec.revocation_url {
        urls.push(("revocation_url", url.as_str()));
    }
    if let AccountSource::Userinfo { url, .. } = &spec.account {
        urls.push(("account.url", url.as_str()));
    }
    urls
}

/// `{shop}` / `{subdomain}` placeholders agree with their quirks; no unknown placeholders.
fn check_placeholders(spec: &ProviderSpec, problems: &mut Vec<String>) {
    let urls = placeholder_urls(spec);
    for (placeholder, quirk) in PLACEHOLDERS {
        let name = quirk_name(quirk);
        if spec.quirks.contains(&quirk) {
            for (field, url) in &urls[..2] {
                if !url.contains(placeholder) {
                    problems.push(format!(
                        "quirk `{name}` requires the `{placeholder}` placeholder in {field}"
                    ));
                }
            }
        } else {
            for (field, url) in &urls {
                if url.contains(placeholder) {
                    problems.push(format!(
                        "{field} contains `{placeholder}` but quirk `{name}` is not set"
                    ));
                }
            }
        }
    }
    for (field, url) in &urls {
        let mut remaining = (*url).to_owned();
        for (placeholder, _) in PLACEHOLDERS {
            remaining = remaining.replace(placeholder, "");
        }
        if *field == "revocation_url" {
            remaining = remaining.replace(CLIENT_ID_PLACEHOLDER, "");
        }
        if remaining.contains('{') || remaining.contains('}') {
            problems.push(format!("{field} `{url}` contains an unknown placeholder"));
        }
    }
}

/// The account source: its URL, pointers, headers and body; id tokens need `openid`.
fn check_account(spec: &ProviderSpec, allow_http_loopback: bool, problems: &mut Vec<String>) {
    match &spec.account {
        AccountSource::Userinfo {
            url,
            subject_pointer,
            label_pointer,
            headers,
            body,
            token_header,
        } => {
            check_url("account.url", url, allow_http_loopback, problems);
            check_pointer("account.subject_pointer", subject_pointer, problems);
            check_pointer("account.label_pointer", label_pointer, problems);
            for (name, value) in headers {
                if !valid_header_name(name) {
                    problems.push(format!(
                        "account header name `{name}` is not a valid header name"
                    ));
                } else if name.eq_ignore_ascii_case("authorization") {
                    problems.push(
                        "account headers may not set Authorization (the access token goes there, or in token_header)"
                            .to_owned(),
                    );
                }
                if value.chars().any(|c| c == '\r' || c == '\n') {
                    problems.push(format!(
                        "account header `{name}` has a line break in its value"
                    ));
                }
            }
            if let Some(body) = body
                && serde_json::from_str::<serde_json::Value>(body).is_err()
            {
                problems.push("account.body is not valid JSON".to_owned());
            }
            if let Some(name) = token_header
                && !valid_header_name(name)
            {
                problems.push(format!(
                    "account.token_header `{name}` is not a valid header name"
                ));
            }
        }
        AccountSource::IdToken => {
            if !spec.default_scopes.iter().any(|s| s == "openid") {
                problems.push(
                    "account kind `id_token` needs `openid` in default_scopes (no id token is issued otherwise)"
                        .to_owned(),
                );
            }
        }
        AccountSource::TokenResponse {
            subject_pointer,
            label_pointer,
        } => {
            check_pointer("account.subject_pointer", subject_pointer, problems);
            check_pointer("account.label_pointer", label_pointer, problems);
        }
    }
}

/// A JSON pointer (RFC 6901) naming a member: starts with `/`.
fn check_pointer(field: &str, pointer: &str, problems: &mut Vec<String>) {
    if !pointer.starts_with('/') {
        problems.push(format!(
            "{field} `{pointer}` must be a JSON pointer starting with `/`"
        ));
    }
}

/// An HTTP header name (RFC 9110 token characters).
fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

/// Lifetimes are positive and agree with each other and with the rotation rules.
fn check_refresh(spec: &ProviderSpec, problems: &mut Vec<String>) {
    let refresh = &spec.refresh;
    for (field, value) in [
        (
            "access_token_lifetime_seconds",
            refresh.access_token_lifetime_seconds,
        ),
        (
            "refresh_token_lifetime_seconds",
            refresh.refresh_token_lifetime_seconds,
        ),
        (
            "refresh_token_idle_seconds",
            refresh.refresh_token_idle_seconds,
        ),
        (
            "refresh_token_absolute_seconds",
            refresh.refresh_token_absolute_seconds,
        ),
        ("reuse_grace_seconds", refresh.reuse_grace_seconds),
        (
            "max_refresh_tokens_per_user",
            refresh.max_refresh_tokens_per_user.map(u64::from),
        ),
    ] {
        if value == Some(0) {
            problems.push(format!("refresh.{field} must be positive"));
        }
    }
    if refresh.reuse_grace_seconds.is_some() && !refresh.rotates_refresh_tokens {
        problems.push(
            "refresh.reuse_grace_seconds requires refresh.rotates_refresh_tokens (only a rotated-out token has a grace period)"
                .to_owned(),
        );
    }
    let idle = refresh.refresh_token_idle_seconds;
    for (field, limit) in [
        (
            "refresh_token_lifetime_seconds",
            refresh.refresh_token_lifetime_seconds,
        ),
        (
            "refresh_token_absolute_seconds",
            refresh.refresh_token_absolute_seconds,
        ),
    ] {
        if let (Some(idle), Some(limit)) = (idle, limit)
            && idle > limit
        {
            problems.push(format!(
                "refresh.refresh_token_idle_seconds ({idle}) exceeds refresh.{field} ({limit}): the token ends before it can idle out"
            ));
        }
    }
    if let Some(access) = refresh.access_token_lifetime_seconds {
        for (field, limit) in [
            (
                "refresh_token_lifetime_seconds",
                refresh.refresh_token_lifetime_seconds,
            ),
            ("refresh_token_idle_seconds", idle),
            (
                "refresh_token_absolute_seconds",
                refresh.refresh_token_absolute_seconds,
            ),
        ] {
            if limit.is_some_and(|limit| access >= limit) {
                problems.push(format!(
                    "refresh.access_token_lifetime_seconds ({access}) must be shorter than refresh.{field}"
                ));
            }
        }
    }
}

/// Token request parameters the broker always sets itself.
const RESERVED_TOKEN_PARAMS: [&str; 7] = [
    "grant_type",
    "code",
    "redirect_uri",
    "code_verifier",
    "refresh_token",
    "client_id",
    "client_secret",
];

/// Extra parameters may not replace the ones the broker sets; the client id parameter name is
/// a plain parameter name.
fn check_extra_params(spec: &ProviderSpec, problems: &mut Vec<String>) {
    let id_param = spec.client_id_param();
    if let Some(name) = &spec.client_id_param {
        let plain = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !plain {
            problems.push(format!(
                "client_id_param `{name}` must be letters, digits, `_`, `-` or `.`"
            ));
        } else if name != "client_id"
            && (RESERVED_AUTHORIZE_PARAMS.contains(&name.as_str())
                || RESERVED_TOKEN_PARAMS.contains(&name.as_str())
                || name == "user_scope")
        {
            problems.push(format!(
                "client_id_param `{name}` is a parameter the broker sets for something else"
            ));
        }
    }
    let sets: [(&str, &BTreeMap<String, String>, &[&str]); 3] = [
        (
            "extra_authorize_params",
            &spec.extra_authorize_params,
            &RESERVED_AUTHORIZE_PARAMS,
        ),
        (
            "extra_token_params",
            &spec.extra_token_params,
            &RESERVED_TOKEN_PARAMS,
        ),
        (
            "extra_refresh_params",
            &spec.extra_refresh_params,
            &RESERVED_TOKEN_PARAMS,
        ),
    ];
    for (field, params, reserved) in sets {
        for (name, value) in params {
            if name.trim().is_empty() {
                problems.push(format!("{field} has an empty parameter name"));
            } else if reserved.contains(&name.as_str())
                || name == id_param
                || (field == "extra_authorize_params" && name == "user_scope")
            {
                problems.push(format!("{field} may not set `{name}` (the broker sets it)"));
            }
            if value.is_empty() {
                problems.push(format!("{field} `{name}` has an empty value"));
            }
        }
    }
}

/// Sources are https links and `checked` is a `YYYY-MM-DD` date. (Whether an entry has sources
/// decides [`ProviderSpec::is_verified`], not validity: config entries need none.)
fn check_provenance(spec: &ProviderSpec, allow_http_loopback: bool, problems: &mut Vec<String>) {
    for url in &spec.sources {
        check_link("sources", url, allow_http_loopback, problems);
    }
    if let Some(day) = &spec.checked
        && !valid_date(day)
    {
        problems.push(format!("checked `{day}` must be a date like 2026-11-29"));
    }
    if spec.unsure.iter().any(|u| u.trim().is_empty()) {
        problems.push("unsure has an empty entry".to_owned());
    }
}

/// Whether `day` looks like `YYYY-MM-DD` with a month 01–12 and a day 01–31.
fn valid_date(day: &str) -> bool {
    let parts: Vec<&str> = day.split('-').collect();
    let number = |s: &str, len: usize| {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    match parts.as_slice() {
        [y, m, d] => {
            number(y, 4).is_some()
                && number(m, 2).is_some_and(|m| (1..=12).contains(&m))
                && number(d, 2).is_some_and(|d| (1..=31).contains(&d))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid entry used as the base of the negative tests.
    const GOOD: &str = r#"
[[provider]]
id = "acme"
display_name = "Acme"
icon_url = "https://acme.example/icon.png"
category = "crm"
authorize_url = "https://acme.example/oauth/authorize"
token_url = "https://acme.example/oauth/token"
revocation_url = "https://acme.example/oauth/revoke"
default_scopes = ["read"]
auth_style = "basic"
pkce = "required"
docs_url = "https://acme.example/docs/oauth"

[provider.account]
kind = "userinfo"
url = "https://api.acme.example/me"
subject_pointer = "/id"
label_pointer = "/email"

[provider.refresh]
access_token_lifetime_seconds = 3600

[[provider.scopes]]
name = "read"
description = "Read your data"

[[provider.scopes]]
name = "write"
description = "Change your data"
"#;

    fn builtin() -> Catalog {
        match Catalog::builtin() {
            Ok(catalog) => catalog,
            Err(e) => panic!("built-in catalog does not load: {e}"),
        }
    }

    /// Parses `text` and returns the error, failing the test if it parses.
    fn rejected(text: &str) -> CatalogError {
        match Catalog::from_toml(text) {
            Ok(_) => panic!("catalog unexpectedly accepted:\n{text}"),
            Err(e) => e,
        }
    }

    /// Asserts the entry is rejected, the error names `acme`, and some problem contains `needle`.
    fn assert_rejected(text: &str, needle: &str) {
        let err = rejected(text);
        assert_eq!(err.provider.as_deref(), Some("acme"), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("`acme`"),
            "message does not name the provider: {message}"
        );
        assert!(
            err.problems.iter().any(|p| p.contains(needle)),
            "no problem mentions {needle:?}: {message}"
        );
    }

    fn good_spec() -> ProviderSpec {
        match Catalog::from_toml(GOOD) {
            Ok(catalog) => catalog.get("acme").cloned().expect("acme present"),
            Err(e) => panic!("GOOD does not load: {e}"),
        }
    }

    #[test]
    fn builtin_catalog_loads_with_enough_entries() {
        let catalog = builtin();
        assert!(catalog.len() >= 54, "only {} providers", catalog.len());
        assert!(!catalog.is_empty());
    }

    /// Google's revoke endpoint and GitHub's grant endpoint end the user's whole authorization
    /// of the app: an entry that forgets to say so would let the broker revoke a kept grant.
    #[test]
    fn whole_authorization_revocation_is_declared() {
        for spec in builtin().iter() {
            let url = spec.revocation_url.as_deref().unwrap_or_default();
            let ends = url.starts_with("https://oauth2.googleapis.com/revoke")
                || url.ends_with("/applications/{client_id}/grant");
            assert_eq!(
                spec.revocation_ends_authorization, ends,
                "{}: revocation_ends_authorization must be {ends} for {url:?}",
                spec.id
            );
        }
    }

    #[test]
    fn builtin_ids_are_unique_in_the_file() {
        let file: CatalogFile = toml::from_str(BUILTIN_TOML).expect("parses");
        let ids: BTreeSet<&str> = file.provider.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(
            ids.len(),
            file.provider.len(),
            "duplicate ids in providers.toml"
        );
        assert_eq!(builtin().len(), file.provider.len());
    }

    #[test]
    fn every_builtin_entry_validates_strictly() {
        for spec in builtin().iter() {
            if let Err(problems) = Catalog::validate(spec, false) {
                panic!("{}: {problems:?}", spec.id);
            }
        }
    }

    #[test]
    fn iteration_is_ordered_by_id() {
        let catalog = builtin();
        let ids: Vec<&str> = catalog.iter().map(|p| p.id.as_str()).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn required_services_are_present() {
        let catalog = builtin();
        for id in [
            "gmail",
            "google-drive",
            "google-sheets",
            "google-docs",
            "google-calendar",
            "google-contacts",
            "google-forms",
            "google-tasks",
            "google-bigquery",
            "google-chat",
            "google-meet",
            "google-groups",
            "google-ads",
            "outlook",
            "microsoft-teams",
            "onedrive",
            "sharepoint",
            "microsoft-excel",
            "microsoft-planner",
            "microsoft-entra-id",
            "slack",
            "github",
            "dropbox",
            "notion",
            "linear",
            "jira",
            "confluence",
            "bitbucket",
            "salesforce",
            "salesforce-sandbox",
            "hubspot",
            "airtable",
            "asana",
            "monday",
            "clickup",
            "attio",
            "pipedrive",
            "wealthbox",
            "zoho-desk",
            "box",
            "webflow",
            "zoom",
            "x",
            "linkedin",
            "reddit",
            "spotify",
            "tiktok",
            "discord",
            "docusign",
            "cal-com",
            "wordpress-com",
            "trello",
            "shopify",
            "zendesk",
            "intercom",
            "calendly",
            "gitlab",
            "quickbooks",
            "xero",
        ] {
            assert!(catalog.get(id).is_some(), "missing provider {id}");
        }
    }

    #[test]
    fn every_scope_is_described() {
        for spec in builtin().iter() {
            for scope in &spec.scopes {
                assert!(
                    !scope.description.trim().is_empty(),
                    "{}: scope {} has no description",
                    spec.id,
                    scope.name
                );
            }
            for default in &spec.default_scopes {
                assert!(
                    spec.scopes.iter().any(|s| &s.name == default),
                    "{}: default scope {default} not described",
                    spec.id
                );
            }
        }
    }

    #[test]
    fn gmail_entry_is_offline_and_identifies_the_account() {
        let catalog = builtin();
        let gmail = catalog.get("gmail").expect("gmail");
        assert_eq!(gmail.account, AccountSource::IdToken);
        assert!(gmail.default_scopes.iter().any(|s| s == "openid"));
        assert!(gmail.default_scopes.iter().any(|s| s == "email"));
        assert!(
            gmail
                .default_scopes
                .iter()
                .any(|s| s == "https://www.googleapis.com/auth/gmail.modify")
        );
        let params = &gmail.extra_authorize_params;
        assert_eq!(
            params.get("access_type").map(String::as_str),
            Some("offline")
        );
        assert_eq!(params.get("prompt").map(String::as_str), Some("consent"));
        assert_eq!(
            params.get("include_granted_scopes").map(String::as_str),
            Some("true")
        );
        assert_eq!(
            gmail.revocation_url.as_deref(),
            Some("https://oauth2.googleapis.com/revoke")
        );
    }

    #[test]
    fn slack_github_dropbox_have_their_quirks() {
        let catalog = builtin();
        let slack = catalog.get("slack").expect("slack");
        assert!(slack.quirks.contains(&Quirk::OkFalseErrors));
        assert!(slack.quirks.contains(&Quirk::SlackAuthedUser));
        assert_eq!(
            slack.account,
            AccountSource::TokenResponse {
                subject_pointer: "/authed_user/id".to_owned(),
                label_pointer: "/team/name".to_owned(),
            }
        );

        let github = catalog.get("github").expect("github");
        assert!(github.quirks.contains(&Quirk::GithubJsonAccept));
        assert!(github.quirks.contains(&Quirk::NonExpiringTokens));
        assert_eq!(github.refresh.access_token_lifetime_seconds, None);
        match &github.account {
            AccountSource::Userinfo {
                url,
                subject_pointer,
                label_pointer,
                ..
            } => {
                assert_eq!(url, "https://api.github.com/user");
                assert_eq!(subject_pointer, "/id");
                assert_eq!(label_pointer, "/login");
            }
            other => panic!("github account source: {other:?}"),
        }

        let dropbox = catalog.get("dropbox").expect("dropbox");
        assert_eq!(
            dropbox
                .extra_authorize_params
                .get("token_access_type")
                .map(String::as_str),
            Some("offline")
        );
    }

    #[test]
    fn rotation_facts_for_key_providers() {
        let catalog = builtin();
        let box_ = catalog.get("box").expect("box");
        assert!(box_.refresh.single_use_refresh_tokens && box_.refresh.rotates_refresh_tokens);
        let xero = catalog.get("xero").expect("xero");
        assert_eq!(
            xero.refresh.refresh_token_idle_seconds,
            Some(60 * 24 * 3600)
        );
        assert!(xero.quirks.contains(&Quirk::XeroTenantId));
        let outlook = catalog.get("outlook").expect("outlook");
        assert!(outlook.refresh.rotates_refresh_tokens);
        assert_eq!(
            outlook.refresh.refresh_token_idle_seconds,
            Some(90 * 24 * 3600)
        );
        let jira = catalog.get("jira").expect("jira");
        assert!(jira.refresh.rotates_refresh_tokens);
        assert!(jira.quirks.contains(&Quirk::AtlassianCloudId));
        assert_eq!(
            jira.extra_authorize_params
                .get("audience")
                .map(String::as_str),
            Some("api.atlassian.com")
        );
        let shopify = catalog.get("shopify").expect("shopify");
        assert!(shopify.authorize_url.contains("{shop}"));
        let zendesk = catalog.get("zendesk").expect("zendesk");
        assert!(zendesk.token_url.contains("{subdomain}"));
    }

    #[test]
    fn good_entry_is_accepted() {
        let catalog = Catalog::from_toml(GOOD).expect("valid");
        assert_eq!(catalog.len(), 1);
        assert_eq!(
            catalog.get("acme").map(|p| p.display_name.as_str()),
            Some("Acme")
        );
    }

    #[test]
    fn duplicate_ids_are_rejected() {
        let err = rejected(&format!("{GOOD}\n{GOOD}"));
        assert_eq!(err.provider.as_deref(), Some("acme"));
        assert!(err.to_string().contains("duplicate provider id"), "{err}");
    }

    #[test]
    fn http_url_is_rejected_with_provider_and_problem() {
        let text = GOOD.replace(
            "https://acme.example/oauth/token",
            "http://acme.example/oauth/token",
        );
        assert_rejected(
            &text,
            "token_url `http://acme.example/oauth/token` must use https",
        );
    }

    #[test]
    fn issuer_must_be_an_https_identifier() {
        let declare = |issuer: &str| {
            GOOD.replacen(
                "token_url = ",
                &format!("issuer = \"{issuer}\"\ntoken_url = "),
                1,
            )
        };
        let ok = Catalog::from_toml(&declare("https://acme.example")).unwrap();
        assert_eq!(
            ok.get("acme").unwrap().issuer.as_deref(),
            Some("https://acme.example")
        );
        assert!(good_spec().issuer.is_none());
        assert_rejected(
            &declare("https://acme.example/?tenant=1"),
            "issuer `https://acme.example/?tenant=1` must not contain a query or fragment",
        );
        assert_rejected(&declare("acme.example"), "issuer `acme.example`");
    }

    #[test]
    fn non_url_is_rejected() {
        let text = GOOD.replace("https://acme.example/oauth/revoke", "acme.example/revoke");
        assert_rejected(
            &text,
            "revocation_url `acme.example/revoke` must be an https:// URL",
        );
    }

    #[test]
    fn undescribed_default_scope_is_rejected() {
        let text = GOOD.replace(
            r#"default_scopes = ["read"]"#,
            r#"default_scopes = ["read", "admin"]"#,
        );
        assert_rejected(&text, "default scope `admin` is not described");
    }

    #[test]
    fn scope_problems_are_all_listed() {
        let text = GOOD
            .replace(r#"name = "write""#, r#"name = "read""#)
            .replace(r#"description = "Read your data""#, r#"description = " ""#);
        let err = rejected(&text);
        let message = err.to_string();
        assert!(
            message.contains("scope `read` has no description"),
            "{message}"
        );
        assert!(
            message.contains("scope `read` is listed more than once"),
            "{message}"
        );
        let text = GOOD.replace(r#"name = "write""#, r#"name = "write all""#);
        assert_rejected(&text, "scope `write all` contains whitespace");
    }

    #[test]
    fn inconsistent_quirks_are_rejected() {
        let slack_like = GOOD.replace(
            r#"docs_url = "https://acme.example/docs/oauth""#,
            "docs_url = \"https://acme.example/docs/oauth\"\nquirks = [\"slack_authed_user\"]",
        );
        assert_rejected(
            &slack_like,
            "`slack_authed_user` requires `ok_false_errors`",
        );

        let salesforce = GOOD.replace(
            r#"docs_url = "https://acme.example/docs/oauth""#,
            "docs_url = \"https://acme.example/docs/oauth\"\nquirks = [\"salesforce_instance_url\"]",
        );
        assert_rejected(&salesforce, "only for Salesforce providers");

        let non_expiring = GOOD.replace(
            r#"docs_url = "https://acme.example/docs/oauth""#,
            "docs_url = \"https://acme.example/docs/oauth\"\nquirks = [\"non_expiring_tokens\"]",
        );
        assert_rejected(&non_expiring, "`non_expiring_tokens` contradicts");

        let single_use = GOOD.replace(
            "access_token_lifetime_seconds = 3600",
            "access_token_lifetime_seconds = 3600\nsingle_use_refresh_tokens = true",
        );
        assert_rejected(&single_use, "single_use_refresh_tokens requires");
    }

    #[test]
    fn placeholders_must_match_quirks() {
        let missing_placeholder = GOOD.replace(
            r#"docs_url = "https://acme.example/docs/oauth""#,
            "docs_url = \"https://acme.example/docs/oauth\"\nquirks = [\"shop_subdomain\"]",
        );
        assert_rejected(
            &missing_placeholder,
            "requires the `{shop}` placeholder in authorize_url",
        );

        let missing_quirk = GOOD
            .replace(
                "https://acme.example/oauth/authorize",
                "https://{subdomain}.acme.example/oauth/authorize",
            )
            .replace(
                "https://acme.example/oauth/token",
                "https://{subdomain}.acme.example/oauth/token",
            );
        assert_rejected(
            &missing_quirk,
            "contains `{subdomain}` but quirk `subdomain` is not set",
        );

        let with_quirk = missing_quirk.replace(
            r#"docs_url = "https://acme.example/docs/oauth""#,
            "docs_url = \"https://acme.example/docs/oauth\"\nquirks = [\"subdomain\"]",
        );
        assert!(Catalog::from_toml(&with_quirk).is_ok());

        let unknown = GOOD.replace(
            "https://api.acme.example/me",
            "https://api.acme.example/{tenant}/me",
        );
        assert_rejected(&unknown, "unknown placeholder");
    }

    #[test]
    fn account_source_is_checked() {
        let bad_pointer = GOOD.replace(r#"subject_pointer = "/id""#, r#"subject_pointer = "id""#);
        assert_rejected(
            &bad_pointer,
            "account.subject_pointer `id` must be a JSON pointer",
        );

        let http_userinfo =
            GOOD.replace("https://api.acme.example/me", "http://api.acme.example/me");
        assert_rejected(&http_userinfo, "account.url");

        let id_token = GOOD.replace(
            "kind = \"userinfo\"\nurl = \"https://api.acme.example/me\"\nsubject_pointer = \"/id\"\nlabel_pointer = \"/email\"",
            "kind = \"id_token\"",
        );
        assert_rejected(&id_token, "needs `openid` in default_scopes");

        let bad_body = GOOD.replace(
            r#"label_pointer = "/email""#,
            "label_pointer = \"/email\"\nbody = \"{not json\"",
        );
        assert_rejected(&bad_body, "account.body is not valid JSON");
    }

    #[test]
    fn reserved_extra_params_and_bad_ids_are_rejected() {
        let reserved = format!(
            "{GOOD}\n[provider.extra_authorize_params]\nredirect_uri = \"https://evil.example\"\n"
        );
        assert_rejected(&reserved, "may not set `redirect_uri`");

        let mut spec = good_spec();
        spec.id = "Acme!".to_owned();
        let problems = Catalog::validate(&spec, false).expect_err("bad id");
        assert!(
            problems.iter().any(|p| p.contains("must match")),
            "{problems:?}"
        );

        let mut spec = good_spec();
        spec.display_name = String::new();
        spec.category = "  ".to_owned();
        let problems = Catalog::validate(&spec, false).expect_err("empty texts");
        assert!(
            problems.iter().any(|p| p == "display_name is empty"),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p == "category is empty"),
            "{problems:?}"
        );
    }

    #[test]
    fn unknown_fields_and_malformed_text_are_rejected() {
        let err =
            rejected(&GOOD.replace("pkce = \"required\"", "pkce = \"required\"\nsurprise = 1"));
        assert_eq!(err.provider, None);
        assert!(err.to_string().contains("surprise"), "{err}");
        let err = rejected("[[provider]\nid = ");
        assert_eq!(err.provider, None);
        assert!(
            err.to_string().starts_with("invalid provider catalog"),
            "{err}"
        );
    }

    #[test]
    fn http_loopback_only_when_allowed() {
        let local = GOOD
            .replace(
                "https://acme.example/oauth/authorize",
                "http://127.0.0.1:8080/authorize",
            )
            .replace(
                "https://acme.example/oauth/token",
                "http://localhost:8080/token",
            );
        assert_rejected(&local, "must use https");
        let mut catalog = Catalog::new().with_http_loopback(true);
        catalog.extend_from_toml(&local).expect("loopback allowed");
        assert!(catalog.get("acme").is_some());

        let elsewhere = GOOD.replace("https://acme.example/oauth/token", "http://10.0.0.1/token");
        let mut catalog = Catalog::new().with_http_loopback(true);
        let err = catalog
            .extend_from_toml(&elsewhere)
            .expect_err("not loopback");
        assert!(err.to_string().contains("must use https"), "{err}");

        let spoofed = GOOD.replace(
            "https://acme.example/oauth/token",
            "http://localhost.evil.example/token",
        );
        let mut catalog = Catalog::new().with_http_loopback(true);
        assert!(catalog.extend_from_toml(&spoofed).is_err());
    }

    #[test]
    fn insert_validates_and_replaces() {
        let mut catalog = builtin();
        let before = catalog.len();
        let mut custom = good_spec();
        custom.id = "gmail".to_owned();
        custom.display_name = "Gmail (custom app)".to_owned();
        catalog.insert(custom).expect("override accepted");
        assert_eq!(catalog.len(), before);
        assert_eq!(
            catalog.get("gmail").map(|p| p.display_name.as_str()),
            Some("Gmail (custom app)")
        );

        catalog.insert(good_spec()).expect("new provider accepted");
        assert_eq!(catalog.len(), before + 1);

        let mut bad = good_spec();
        bad.id = "acme2".to_owned();
        bad.token_url = "http://acme.example/token".to_owned();
        let err = catalog.insert(bad).expect_err("http rejected");
        assert_eq!(err.provider.as_deref(), Some("acme2"));
        assert!(
            err.to_string().contains("invalid provider `acme2`"),
            "{err}"
        );
        assert!(catalog.get("acme2").is_none());

        assert!(catalog.remove("acme").is_some());
        assert_eq!(catalog.len(), before);
    }

    #[test]
    fn extend_is_all_or_nothing() {
        let mut catalog = builtin();
        let before = catalog.len();
        let bad = GOOD
            .replace(r#"id = "acme""#, r#"id = "acme-two""#)
            .replace(
                "https://acme.example/oauth/token",
                "http://acme.example/oauth/token",
            );
        let text = format!("{GOOD}\n{bad}");
        assert!(catalog.extend_from_toml(&text).is_err());
        assert_eq!(catalog.len(), before);
        assert!(catalog.get("acme").is_none());
    }

    /// The ids of the built-in entries not backed by sources.
    fn unverified_ids() -> Vec<String> {
        builtin()
            .iter()
            .filter(|p| !p.is_verified())
            .map(|p| p.id.clone())
            .collect()
    }

    #[test]
    fn every_builtin_entry_is_sourced_or_marked_unverified() {
        for spec in builtin().iter() {
            assert!(spec.checked.is_some(), "{}: no checked date", spec.id);
            if spec.verified {
                assert!(
                    !spec.sources.is_empty(),
                    "{}: verified without sources",
                    spec.id
                );
            } else {
                assert!(
                    !spec.unsure.is_empty(),
                    "{}: unverified without saying what is unsure",
                    spec.id
                );
            }
        }
        let unverified = unverified_ids();
        for id in ["trello", "shopify", "calendly", "hubspot", "clickup"] {
            assert!(
                unverified.iter().any(|u| u == id),
                "{id} should be unverified"
            );
        }
        for id in ["gmail", "salesforce", "tiktok", "spotify", "box"] {
            assert!(
                !unverified.iter().any(|u| u == id),
                "{id} should be verified"
            );
        }
    }

    #[test]
    fn entries_without_sources_are_reported_unverified() {
        // A config entry that names no source is reported unverified.
        let spec = good_spec();
        assert!(spec.verified && spec.sources.is_empty());
        assert!(!spec.is_verified());
        let sourced = GOOD.replace(
            r#"docs_url = "https://acme.example/docs/oauth""#,
            "docs_url = \"https://acme.example/docs/oauth\"\nsources = [\"https://acme.example/docs/oauth\"]\nchecked = \"2026-11-29\"",
        );
        let catalog = Catalog::from_toml(&sourced).expect("valid");
        assert!(catalog.get("acme").is_some_and(ProviderSpec::is_verified));
        let doubted = sourced.replace(
            "checked = \"2026-11-29\"",
            "checked = \"2026-11-29\"\nverified = false\nunsure = [\"token_url\"]",
        );
        let catalog = Catalog::from_toml(&doubted).expect("valid");
        assert!(!catalog.get("acme").is_some_and(ProviderSpec::is_verified));
    }

    #[test]
    fn docs_list_exactly_the_unverified_entries() {
        let docs = include_str!("../../../docs/providers.md");
        let start = "<!-- unverified-providers:start -->";
        let end = "<!-- unverified-providers:end -->";
        let (Some(a), Some(b)) = (docs.find(start), docs.find(end)) else {
            panic!("docs/providers.md has no unverified-providers list");
        };
        let listed: Vec<String> = docs[a + start.len()..b]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        assert_eq!(
            listed,
            unverified_ids(),
            "update the list in docs/providers.md"
        );
    }

    #[test]
    fn the_audited_errors_stay_fixed() {
        let catalog = builtin();
        let get = |id: &str| catalog.get(id).cloned().expect(id);
        // Salesforce sends no expires_in: the catalog lifetime is what the broker assumes.
        for id in ["salesforce", "salesforce-sandbox"] {
            assert_eq!(
                get(id).fallback_access_token_lifetime(true),
                Some(Duration::from_secs(7200)),
                "{id}"
            );
        }
        // Shopify issues expiring offline tokens only with expiring=1 on the code exchange.
        let shopify = get("shopify");
        assert_eq!(
            shopify
                .extra_token_params
                .get("expiring")
                .map(String::as_str),
            Some("1")
        );
        // TikTok: client_key, 2-hour access tokens, 180-day single-use refresh tokens.
        let tiktok = get("tiktok");
        assert_eq!(tiktok.client_id_param(), "client_key");
        assert_eq!(tiktok.refresh.access_token_lifetime_seconds, Some(7200));
        assert_eq!(
            tiktok.refresh.refresh_token_lifetime_seconds,
            Some(180 * 86_400)
        );
        assert!(tiktok.refresh.single_use_refresh_tokens);
        // Trello: only Trello's own scopes.
        let trello = get("trello");
        for scope in trello.scopes.iter().map(|s| s.name.as_str()) {
            assert!(
                scope.ends_with(":trello") || scope == "offline_access",
                "trello scope {scope}"
            );
        }
        assert!(trello.pkce == Pkce::Required);
        // Calendly web clients authenticate with HTTP Basic.
        assert_eq!(get("calendly").auth_style, AuthStyle::Basic);
        // Spotify refresh tokens end 6 months after consent, refreshed or not.
        let spotify = get("spotify").refresh;
        assert!(
            spotify
                .refresh_token_absolute_seconds
                .is_some_and(|s| s <= 183 * 86_400)
        );
        // The other findings.
        assert!(!get("box").scopes.iter().any(|s| s.name == "manage_users"));
        let zoom = get("zoom").refresh;
        assert_eq!(zoom.refresh_token_idle_seconds, None);
        assert_eq!(zoom.refresh_token_lifetime_seconds, Some(15 * 365 * 86_400));
        assert!(matches!(
            get("quickbooks").account,
            AccountSource::Userinfo { .. }
        ));
        assert!(get("wealthbox").refresh.rotates_refresh_tokens);
        assert!(get("hubspot").token_url.contains("/oauth/2026-03/"));
        assert!(get("wordpress-com").token_url.contains("/oauth2-1/"));
        assert_eq!(get("gmail").refresh.max_refresh_tokens_per_user, Some(100));
        assert_eq!(
            get("zoho-crm").refresh.max_refresh_tokens_per_user,
            Some(20)
        );
        let jira = get("jira").refresh;
        assert_eq!(jira.reuse_grace_seconds, Some(600));
        assert_eq!(jira.refresh_token_absolute_seconds, Some(365 * 86_400));
    }

    #[test]
    fn refresh_rules_must_agree() {
        let with_refresh = |extra: &str| {
            GOOD.replace(
                "access_token_lifetime_seconds = 3600",
                &format!("access_token_lifetime_seconds = 3600\n{extra}"),
            )
        };
        assert_rejected(
            &with_refresh("reuse_grace_seconds = 600"),
            "reuse_grace_seconds requires refresh.rotates_refresh_tokens",
        );
        assert_rejected(
            &with_refresh(
                "refresh_token_idle_seconds = 900000\nrefresh_token_absolute_seconds = 86400",
            ),
            "exceeds refresh.refresh_token_absolute_seconds",
        );
        assert_rejected(
            &with_refresh("refresh_token_idle_seconds = 3600"),
            "must be shorter than refresh.refresh_token_idle_seconds",
        );
        assert_rejected(
            &with_refresh("max_refresh_tokens_per_user = 0"),
            "refresh.max_refresh_tokens_per_user must be positive",
        );
        assert!(
            Catalog::from_toml(&with_refresh(
                "rotates_refresh_tokens = true\nsingle_use_refresh_tokens = true\nreuse_grace_seconds = 600\nrefresh_token_idle_seconds = 7776000\nrefresh_token_absolute_seconds = 31536000\nmax_refresh_tokens_per_user = 20"
            ))
            .is_ok()
        );
    }

    #[test]
    fn token_parameters_and_provenance_are_checked() {
        let with = |extra: &str| {
            GOOD.replace(
                r#"docs_url = "https://acme.example/docs/oauth""#,
                &format!("docs_url = \"https://acme.example/docs/oauth\"\n{extra}"),
            )
        };
        assert_rejected(
            &with("extra_token_params = { grant_type = \"password\" }"),
            "extra_token_params may not set `grant_type`",
        );
        assert_rejected(
            &with("extra_refresh_params = { client_secret = \"x\" }"),
            "extra_refresh_params may not set `client_secret`",
        );
        assert_rejected(
            &with("client_id_param = \"client key\""),
            "client_id_param `client key` must be",
        );
        assert_rejected(
            &with("client_id_param = \"redirect_uri\""),
            "is a parameter the broker sets",
        );
        assert_rejected(
            &with("client_id_param = \"client_key\"\nextra_token_params = { client_key = \"x\" }"),
            "extra_token_params may not set `client_key`",
        );
        assert_rejected(&with("checked = \"29.11.2026\""), "checked `29.11.2026`");
        assert_rejected(
            &with("sources = [\"ftp://acme.example\"]"),
            "sources `ftp://acme.example`",
        );
        let ok = with(
            "client_id_param = \"client_key\"\nextra_token_params = { expiring = \"1\" }\nsources = [\"https://acme.example/docs\"]\nchecked = \"2026-11-29\"",
        );
        let catalog = Catalog::from_toml(&ok).expect("valid");
        assert_eq!(
            catalog.get("acme").map(ProviderSpec::client_id_param),
            Some("client_key")
        );
    }

    #[test]
    fn graphql_userinfo_and_token_header_parse() {
        let catalog = builtin();
        match &catalog.get("linear").expect("linear").account {
            AccountSource::Userinfo { body, .. } => {
                let body = body.as_deref().expect("linear posts a GraphQL query");
                assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
            }
            other => panic!("linear account: {other:?}"),
        }
        match &catalog.get("shopify").expect("shopify").account {
            AccountSource::Userinfo { token_header, .. } => {
                assert_eq!(token_header.as_deref(), Some("X-Shopify-Access-Token"));
            }
            other => panic!("shopify account: {other:?}"),
        }
    }
}

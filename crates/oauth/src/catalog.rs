//! The provider catalog: one entry per OAuth service, loaded from `catalog/providers.toml`
//! (compiled into the binary) and extended or overridden by config.

use serde::Deserialize;
use std::collections::BTreeMap;

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
    pub refresh_token_idle_seconds: Option<u64>,
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
    /// Token lifetimes and rotation.
    #[serde(default)]
    pub refresh: RefreshBehaviour,
    /// Behaviours handled in code.
    #[serde(default)]
    pub quirks: Vec<Quirk>,
    /// Link to the provider's OAuth documentation the entry was checked against.
    pub docs_url: String,
}

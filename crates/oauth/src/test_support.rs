//! Helpers shared by the unit tests.

use crate::catalog::{AccountSource, AuthStyle, Pkce, ProviderSpec, Quirk, RefreshBehaviour};
use std::collections::BTreeMap;

/// A minimal spec with the given authorize URL, PKCE use and quirks.
pub(crate) fn spec(authorize_url: &str, pkce: Pkce, quirks: &[Quirk]) -> ProviderSpec {
    ProviderSpec {
        id: "test".into(),
        display_name: "Test".into(),
        icon_url: "https://example.com/icon.png".into(),
        category: "developer".into(),
        authorize_url: authorize_url.into(),
        token_url: "https://example.com/token".into(),
        revocation_url: None,
        revocation_ends_authorization: false,
        issuer: None,
        account: AccountSource::IdToken,
        default_scopes: vec![],
        scopes: vec![],
        auth_style: AuthStyle::Post,
        pkce,
        extra_authorize_params: BTreeMap::new(),
        extra_token_params: BTreeMap::new(),
        extra_refresh_params: BTreeMap::new(),
        client_id_param: None,
        refresh: RefreshBehaviour::default(),
        quirks: quirks.to_vec(),
        docs_url: "https://example.com/docs".into(),
        sources: vec![],
        checked: None,
        verified: true,
        unsure: vec![],
        post_connect: None,
    }
}

/// A GitHub-like spec (its authorize URL, no PKCE) with `quirks`.
pub(crate) fn github(quirks: &[Quirk]) -> ProviderSpec {
    spec(
        "https://github.com/login/oauth/authorize",
        Pkce::None,
        quirks,
    )
}

//! When revoking a grant at the provider is safe. At most providers a revocation ends one grant
//! (RFC 7009). At some (Google, GitHub's grant endpoint) it ends the user's whole authorization
//! of the app, and with it every other grant of that account: revoking a replaced or refused
//! grant there would kill the grant another credential keeps, in this or another workspace.

use crate::gateway::ProviderGateway;
use cb_store::Store;

/// Whether revoking a grant of `provider`'s account `subject` would also end a grant the broker
/// keeps for a credential other than `except`.
/// When the database cannot tell, the answer is yes: an old grant left alive is better than a
/// kept one lost.
pub(crate) async fn would_end_a_kept_grant(
    store: &dyn Store,
    gateway: &dyn ProviderGateway,
    provider: &str,
    subject: &str,
    except: Option<&str>,
) -> bool {
    let ends_authorization = gateway
        .get(provider)
        .is_some_and(|p| p.revocation_ends_authorization);
    if !ends_authorization {
        return false;
    }
    match store.live_credentials_of_account(provider, subject).await {
        Ok(ids) => ids.iter().any(|id| Some(id.as_str()) != except),
        Err(e) => {
            tracing::warn!(provider, error = %e, "cannot tell whether the grant is shared; not revoked");
            true
        }
    }
}

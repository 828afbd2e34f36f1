//! Issuance against a real SQLite store, a local key and a scripted provider: time moves on a
//! manual clock, retries do not sleep, jitter is pinned.

use super::cache::{Entry, TokenParts};
use super::*;
use crate::access::ServiceRole;
use crate::clock::ManualClock;
use crate::gateway::{AccountInfo, GrantedTokens, ProviderError, ProviderInfo, RevokeResult};
use crate::random::{FixedRandom, Fraction};
use crate::service::{CredentialService, ImportCredential};
use crate::tokens::TokenBundle;
use crate::types::{
    Description, DisplayName, Email, ProviderAccount, ProviderId, Scopes, WorkspaceId,
};
use secrecy::ExposeSecret;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize};

const T0: Timestamp = Timestamp::from_millis(1_767_225_600_000);

/// A provider whose refreshes hand out `at-N` / `rt-N`; it can be unconfigured or panic once.
struct ScriptedProvider {
    configured: bool,
    lifetime: Duration,
    refreshes: AtomicUsize,
    panic_next: AtomicBool,
    /// Refreshes running now, and the most seen at once.
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    /// How long a refresh takes (provider latency).
    latency: Duration,
    /// Refreshes answer `invalid_grant`.
    revoked: AtomicBool,
    /// When set, a refresh waits (after its latency) for a permit the test adds.
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl ScriptedProvider {
    fn new(configured: bool) -> Self {
        Self {
            configured,
            lifetime: Duration::from_secs(60),
            refreshes: AtomicUsize::new(0),
            panic_next: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
            latency: Duration::ZERO,
            revoked: AtomicBool::new(false),
            gate: None,
        }
    }
}

#[async_trait::async_trait]
impl ProviderGateway for ScriptedProvider {
    fn list(&self) -> Vec<ProviderInfo> {
        vec![]
    }
    fn get(&self, id: &str) -> Option<ProviderInfo> {
        Some(ProviderInfo {
            id: id.into(),
            display_name: "Fake".into(),
            icon_url: String::new(),
            category: "test".into(),
            configured: self.configured,
            missing_settings: vec![],
            scopes: vec![],
            supports_revocation: false,
            revocation_ends_authorization: false,
            custom: true,
            refresh_token_idle: None,
            refresh_token_absolute: None,
            verified: true,
            workspace_id: None,
        })
    }
    fn redirect_allowed(&self, _uri: &str) -> bool {
        false
    }
    fn authorize_url(
        &self,
        _provider: &str,
        _client: Option<&crate::gateway::AppClient>,
        _authorize: crate::gateway::AuthorizeRequest<'_>,
    ) -> Result<String, ProviderError> {
        Err(ProviderError::Other("not used".into()))
    }
    fn uses_pkce(&self, _provider: &str) -> bool {
        false
    }
    async fn exchange_code(
        &self,
        _provider: &str,
        _client: Option<&crate::gateway::AppClient>,
        _exchange: crate::gateway::CodeExchange<'_>,
    ) -> Result<(GrantedTokens, AccountInfo), ProviderError> {
        Err(ProviderError::Other("not used".into()))
    }
    async fn refresh(
        &self,
        _provider: &str,
        _client: Option<&crate::gateway::AppClient>,
        _refresh_token: &SecretString,
        _extras: &BTreeMap<String, String>,
    ) -> Result<GrantedTokens, ProviderError> {
        let n = self.refreshes.fetch_add(1, Ordering::SeqCst) + 1;
        if self.panic_next.swap(false, Ordering::SeqCst) {
            panic!("a bug in a provider adapter");
        }
        if !self.latency.is_zero() {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.latency).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        if let Some(gate) = &self.gate {
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            gate.acquire().await.map(|permit| permit.forget()).ok();
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        if self.revoked.load(Ordering::SeqCst) {
            return Err(ProviderError::Permanent("invalid_grant: revoked".into()));
        }
        Ok(GrantedTokens {
            access_token: SecretString::from(format!("at-{n}")),
            refresh_token: Some(SecretString::from(format!("rt-{n}"))),
            id_token: None,
            token_type: "Bearer".into(),
            expires_in: Some(self.lifetime),
            refresh_expires_in: None,
            scopes: None,
            extras: BTreeMap::new(),
        })
    }
    async fn probe_client(
        &self,
        _provider: &str,
        _client: Option<&crate::gateway::AppClient>,
        _redirect_uri: &str,
    ) -> crate::gateway::ClientProbe {
        crate::gateway::ClientProbe::Unexpected("not used".into())
    }

    async fn discover(
        &self,
        _provider: &str,
        _runtime: Option<&cb_oauth::catalog::ProviderSpec>,
    ) -> crate::gateway::Discovery {
        crate::gateway::Discovery::NoIssuer
    }

    async fn revoke(
        &self,
        _provider: &str,
        _client: Option<&crate::gateway::AppClient>,
        _tokens: &TokenBundle,
    ) -> Result<RevokeResult, ProviderError> {
        Ok(RevokeResult::NotSupported)
    }
}

/// Retry delays pass at once.
struct NoWait;

impl Sleeper for NoWait {
    fn sleep(&self, _d: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(std::future::ready(()))
    }
}

struct Kit {
    _dir: tempfile::TempDir,
    clock: ManualClock,
    provider: Arc<ScriptedProvider>,
    credentials: CredentialService,
    tokens: Arc<TokenService>,
    store: Arc<dyn Store>,
    envelope: Arc<Envelope>,
    audit: Audit,
}

async fn kit(provider: ScriptedProvider) -> Kit {
    let (dir, store, envelope) = crate::test_support::sqlite_with_keys().await;
    let clock = ManualClock::new(T0);
    let audit = Audit::new(store.clone(), Arc::new(clock.clone()));
    let cache = Arc::new(TokenCache::default());
    let provider = Arc::new(provider);
    let pinned: Arc<dyn Random> = Arc::new(FixedRandom(Fraction::ZERO));
    let credentials = CredentialService::new(
        store.clone(),
        envelope.clone(),
        Arc::new(clock.clone()),
        provider.clone(),
        cache.clone(),
        audit.clone(),
        Duration::from_secs(600),
    )
    .with_random(pinned.clone());
    let tokens = TokenService::new(
        store.clone(),
        envelope.clone(),
        Arc::new(clock.clone()),
        provider.clone(),
        audit.clone(),
        cache,
        IssuanceConfig::default(),
        "replica-1".into(),
    )
    .with_random(pinned)
    .with_sleeper(Arc::new(NoWait));
    Kit {
        _dir: dir,
        clock,
        provider,
        credentials,
        tokens: Arc::new(tokens),
        store,
        envelope,
        audit,
    }
}

/// Waits until `cond` holds, at most 10 s.
async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !cond() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not within 10 s: {what}"));
}

fn dev() -> Caller {
    Caller {
        service: "dev".into(),
        role: ServiceRole::Development,
        actor: None,
    }
}

impl Kit {
    /// Imports a grant whose access token `at-0` expires at `expires_at`.
    async fn import(&self, expires_at: Timestamp) -> CredentialId {
        self.import_account("acct-1", expires_at).await
    }

    /// [`Kit::import`] for another provider account.
    async fn import_account(&self, account: &str, expires_at: Timestamp) -> CredentialId {
        let view = self
            .credentials
            .import(
                &dev(),
                ImportCredential {
                    workspace_id: WorkspaceId::parse("workspace_id", "ws1").unwrap(),
                    provider_id: ProviderId::parse("provider_id", "fake").unwrap(),
                    account: ProviderAccount::parse("account", account, "").unwrap(),
                    display_name: DisplayName::parse("display_name", "Fake").unwrap(),
                    description: Description::parse("description", "").unwrap(),
                    scopes: Scopes::default(),
                    tokens: TokenBundle {
                        access_token: SecretString::from("at-0"),
                        refresh_token: Some(SecretString::from("rt-0")),
                        id_token: None,
                        token_type: "Bearer".into(),
                        access_expires_at: Some(expires_at),
                        refresh_expires_at: None,
                        obtained_at: None,
                        extras: BTreeMap::new(),
                    },
                    admin_email: Some(Email::parse("admin_email", "a@example.com").unwrap()),
                    oauth_app_id: None,
                },
            )
            .await
            .unwrap();
        view.credential.id
    }

    async fn token(
        &self,
        id: &CredentialId,
        min_valid: Option<Duration>,
    ) -> Result<String, BrokerError> {
        self.tokens
            .get_access_token(&dev(), id, min_valid, UsageContext::default())
            .await
            .map(|t| t.access_token().expose_secret().to_owned())
    }

    fn refreshes(&self) -> usize {
        self.provider.refreshes.load(Ordering::SeqCst)
    }

    /// Another replica on the same database (its own cache and flights).
    fn replica(&self, holder: &str, config: IssuanceConfig) -> Arc<TokenService> {
        Arc::new(
            TokenService::new(
                self.store.clone(),
                self.envelope.clone(),
                Arc::new(self.clock.clone()),
                self.provider.clone(),
                self.audit.clone(),
                Arc::new(TokenCache::default()),
                config,
                holder.into(),
            )
            .with_random(Arc::new(FixedRandom(Fraction::ZERO)))
            .with_sleeper(Arc::new(NoWait)),
        )
    }
}

/// A replica waiting on another's lease answers when the leader's write is announced, not at
/// its next poll: with an hour between polls it still answers at provider speed.
#[tokio::test]
async fn a_waiting_replica_is_woken_by_the_leaders_write() {
    let mut slow = ScriptedProvider::new(true);
    slow.latency = Duration::from_millis(300);
    let kit = kit(slow).await;
    let id = kit.import(T0.minus(Duration::from_secs(10))).await;
    let patient = kit.replica(
        "replica-2",
        IssuanceConfig {
            follower_poll: Duration::from_secs(3600),
            ..IssuanceConfig::default()
        },
    );
    let leader = {
        let (tokens, id) = (kit.tokens.clone(), id.clone());
        tokio::spawn(async move {
            tokens
                .get_access_token(&dev(), &id, None, UsageContext::default())
                .await
                .map(|t| t.access_token().expose_secret().to_owned())
        })
    };
    wait_until("the leader calls the provider", || {
        kit.provider.in_flight.load(Ordering::SeqCst) > 0
    })
    .await;
    let followed = tokio::time::timeout(
        Duration::from_secs(10),
        patient.get_access_token(&dev(), &id, None, UsageContext::default()),
    )
    .await
    .expect("woken by the change feed, not by its hourly poll")
    .unwrap();
    assert_eq!(followed.access_token().expose_secret(), "at-1");
    assert_eq!(leader.await.unwrap().unwrap(), "at-1");
    assert_eq!(kit.refreshes(), 1);
    assert_eq!(
        patient.stats().lease_waits,
        1,
        "the follower did wait on the lease"
    );
}

#[tokio::test]
async fn short_lived_tokens_are_refreshed_once_per_three_quarters_of_their_lifetime() {
    let kit = kit(ScriptedProvider::new(true)).await;
    let id = kit.import(T0.minus(Duration::from_secs(1))).await;
    // 60 s tokens, the default min_valid_for (3 min 45 s): one call a second for 10 minutes.
    for _ in 0..600 {
        kit.token(&id, None).await.unwrap();
        kit.clock.advance(Duration::from_secs(1));
    }
    // A refresh at 0 s, then every 45 s (a quarter of the lifetime left): 14 in 600 s.
    assert_eq!(kit.refreshes(), 14);
    // A fresh token satisfies any request, even one longer than its lifetime.
    let before = kit.refreshes();
    kit.token(&id, Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(kit.refreshes(), before);
}

#[tokio::test]
async fn a_leader_that_panics_leaves_no_flight_behind() {
    let kit = kit(ScriptedProvider::new(true)).await;
    let id = kit.import(T0.minus(Duration::from_secs(10))).await;
    kit.provider.panic_next.store(true, Ordering::SeqCst);
    let err = kit.token(&id, None).await.unwrap_err();
    assert_eq!(err.reason(), crate::error::reason::INTERNAL);
    // The panicked leader's lease runs out; the next call leads a new flight and refreshes.
    kit.clock.advance(IssuanceConfig::default().lease_duration);
    assert_eq!(kit.token(&id, None).await.unwrap(), "at-2");
    assert_eq!(kit.refreshes(), 2);
}

#[tokio::test]
async fn a_provider_without_client_credentials_is_not_a_transient_failure() {
    let kit = kit(ScriptedProvider::new(false)).await;
    let expired = kit.import(T0.minus(Duration::from_secs(10))).await;
    for _ in 0..10 {
        let err = kit.token(&expired, None).await.unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::FailedPrecondition);
        assert_eq!(err.reason(), crate::error::reason::PROVIDER_NOT_CONFIGURED);
    }
    assert_eq!(kit.refreshes(), 0, "never sent, never retried");
    assert!(
        kit.tokens.circuit_states().iter().all(|(_, open)| !open),
        "the circuit stays closed"
    );
}

#[tokio::test]
async fn a_joiner_that_asked_for_more_than_the_leader_flies_again() {
    let kit = kit(ScriptedProvider::new(true)).await;
    // An imported token (lifetime unknown) valid for 2 more minutes.
    let expires = T0.plus(Duration::from_secs(120));
    let id = kit.import(expires).await;
    // A flight led for a request of 1 minute is in progress.
    let (tx, rx) = watch::channel(None);
    lock(&kit.tokens.flights).insert(id.to_string(), (Duration::from_secs(60), rx));
    let joiner = {
        let (tokens, id) = (kit.tokens.clone(), id.clone());
        tokio::spawn(async move {
            tokens
                .get_access_token(
                    &dev(),
                    &id,
                    Some(Duration::from_secs(300)),
                    UsageContext::default(),
                )
                .await
        })
    };
    wait_until("the joiner joins", || kit.tokens.stats().flight_joins > 0).await;
    // The leader answers with the token that satisfied it: 2 minutes, less than the joiner's 5.
    lock(&kit.tokens.flights).remove(id.as_str());
    tx.send_replace(Some(Ok(Arc::new(Entry::new(
        "ws1",
        TokenParts {
            access_token: SecretString::from("at-0"),
            token_type: "Bearer".into(),
            expires_at: Some(expires),
            scopes: vec![],
            extras: BTreeMap::new(),
        },
        None,
        [],
        kit.clock.now(),
    )))));
    let got = joiner.await.unwrap().unwrap();
    assert_eq!(got.access_token().expose_secret(), "at-1");
    assert_eq!(kit.refreshes(), 1);
}

#[tokio::test]
async fn refresh_ahead_refreshes_a_batch_with_bounded_concurrency() {
    let kit = kit(ScriptedProvider {
        latency: Duration::from_millis(20),
        ..ScriptedProvider::new(true)
    })
    .await;
    for n in 0..20 {
        kit.import_account(&format!("acct-{n}"), T0.minus(Duration::from_secs(1)))
            .await;
    }
    assert_eq!(kit.tokens.refresh_due(100).await, 20);
    assert_eq!(kit.refreshes(), 20);
    let most = kit.provider.most_in_flight.load(Ordering::SeqCst);
    let bound = kit.tokens.config().refresh_ahead_concurrency;
    assert!(most > 1, "refreshed one by one");
    assert!(most <= bound, "{most} at once, more than {bound}");
    // Nothing is due any more: the next pass claims nothing.
    assert_eq!(kit.tokens.refresh_due(100).await, 0);
    assert_eq!(kit.refreshes(), 20);
}

/// A credential disconnected while a leader holds what it read (between its database reads and
/// its cache put): the stale entry is never put, so the disconnect is never hidden.
#[tokio::test]
async fn an_invalidation_while_the_leader_reads_is_not_lost() {
    let kit = kit(ScriptedProvider::new(true)).await;
    let id = kit.import(T0.plus(Duration::from_secs(3600))).await;
    let reached = Arc::new(tokio::sync::Notify::new());
    let resume = Arc::new(tokio::sync::Notify::new());
    *lock(&kit.tokens.before_put) = Some((reached.clone(), resume.clone()));
    let call = {
        let (tokens, id) = (kit.tokens.clone(), id.clone());
        tokio::spawn(async move {
            tokens
                .get_access_token(&dev(), &id, None, UsageContext::default())
                .await
        })
    };
    reached.notified().await;
    let admin = Caller {
        service: "web".into(),
        role: ServiceRole::Web,
        actor: Some(crate::access::Actor {
            user_id: crate::types::UserId::parse("actor", "u-a").unwrap(),
            email: Email::parse("email", "a@example.com").unwrap(),
            workspace: None,
        }),
    };
    kit.credentials.disconnect(&admin, &id).await.unwrap();
    resume.notify_one();
    // The leader's own caller asked before the disconnect and gets what was read then.
    call.await.unwrap().unwrap();
    let err = kit.token(&id, None).await.unwrap_err();
    assert_eq!(err.reason(), crate::error::reason::CREDENTIAL_DISCONNECTED);
    assert_eq!(kit.refreshes(), 0);
}

/// A caller that joins a flight under way is authorized against its result instead of reading
/// the database first (a storm costs one membership read per credential, not per caller), and a
/// caller who may not see the credential learns nothing from the flight, not even that the grant
/// failed.
#[tokio::test]
async fn a_flight_joined_by_a_non_member_tells_it_nothing() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut held = ScriptedProvider::new(true);
    held.gate = Some(gate.clone());
    let kit = kit(held).await;
    let id = kit.import(T0.minus(Duration::from_secs(10))).await;
    let stranger = Caller {
        service: "executor".into(),
        role: ServiceRole::Executor,
        actor: Some(crate::access::Actor {
            user_id: crate::types::UserId::parse("actor", "u-stranger").unwrap(),
            email: Email::parse("email", "stranger@example.com").unwrap(),
            workspace: None,
        }),
    };
    for revoked in [false, true] {
        kit.provider.revoked.store(revoked, Ordering::SeqCst);
        let leader = {
            let (tokens, id) = (kit.tokens.clone(), id.clone());
            tokio::spawn(async move {
                tokens
                    .get_access_token(&dev(), &id, None, UsageContext::default())
                    .await
            })
        };
        wait_until("a refresh starts", || {
            kit.provider.in_flight.load(Ordering::SeqCst) > 0
        })
        .await;
        // The provider holds the refresh until the stranger has joined the flight.
        let joins = kit.tokens.stats().flight_joins;
        let joined = {
            let (tokens, id, stranger) = (kit.tokens.clone(), id.clone(), stranger.clone());
            tokio::spawn(async move {
                tokens
                    .get_access_token(&stranger, &id, None, UsageContext::default())
                    .await
            })
        };
        wait_until("the stranger joins the flight", || {
            kit.tokens.stats().flight_joins == joins + 1
        })
        .await;
        gate.add_permits(1);
        let err = joined.await.unwrap().unwrap_err();
        assert_eq!(
            err.reason(),
            crate::error::reason::CREDENTIAL_NOT_FOUND,
            "{revoked}"
        );
        let led = leader.await.unwrap();
        assert_eq!(led.is_err(), revoked);
        // The next round needs a cold cache: past the token's lifetime and the snapshot's age.
        kit.clock.advance(Duration::from_secs(120));
    }
}

/// A refresh on a cache miss opens the stored tokens once: the leader reuses what it read
/// before taking the lease (one data-key use to open them, one to seal the new set).
#[tokio::test]
async fn a_refresh_on_a_miss_opens_the_sealed_row_once() {
    let kit = kit(ScriptedProvider::new(true)).await;
    let id = kit.import(T0.minus(Duration::from_secs(10))).await;
    let uses = || {
        let s = kit.envelope.cache_stats();
        s.hits + s.misses
    };
    let before = uses();
    kit.token(&id, None).await.unwrap();
    assert_eq!(kit.refreshes(), 1);
    assert_eq!(uses() - before, 2, "opened once, sealed once");
}

/// A caller whose role may not receive tokens is refused for that before any run grant it
/// presents is looked at: it learns nothing about grants (not even that one is unknown).
#[tokio::test]
async fn a_caller_that_may_not_receive_tokens_learns_nothing_about_grants() {
    let kit = kit(ScriptedProvider::new(true)).await;
    let id = kit.import(T0.plus(Duration::from_secs(3600))).await;
    let web = Caller {
        service: "web".into(),
        role: ServiceRole::Web,
        actor: None,
    };
    let ctx = UsageContext {
        run_grant: super::RunGrantUse {
            presented: Some(secrecy::SecretString::from("cbrg_not-a-grant".to_owned())),
            required: true,
        },
        ..UsageContext::default()
    };
    let err = kit
        .tokens
        .get_access_token(&web, &id, None, ctx)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), crate::error::reason::CALLER_NOT_ALLOWED);
}

/// A refresh that cannot even resolve the client it must use (here: the recorded app is gone)
/// never reached the provider, so it leaves no refresh intent: the next leader must not take it
/// for an interrupted refresh.
#[tokio::test]
async fn a_refresh_that_cannot_resolve_its_app_leaves_no_intent() {
    let kit = kit(ScriptedProvider::new(true)).await;
    let id = kit.import(T0.minus(Duration::from_secs(10))).await;
    kit.store
        .set_credential_app(id.as_str(), Some(("app-gone", 1)))
        .await
        .unwrap();
    kit.token(&id, None).await.unwrap_err();
    assert_eq!(kit.refreshes(), 0, "the provider was never called");
    assert_eq!(kit.store.refresh_intent(id.as_str()).await.unwrap(), None);
}

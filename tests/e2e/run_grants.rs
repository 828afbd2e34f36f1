//! Run grants: an executor that must present one gets the tokens of its run's credentials only,
//! for the user whose run it is, while the grant lives and the user may use them; every issuance
//! is recorded as user → run → executor → credential, and the audit log answers "who received
//! tokens of this credential, for which runs".

use crate::support::broker::{T0, TestBroker, error_details, fake_grant_import, from_service};
use crate::support::client::{Answered, audit_count, audit_events};
use crate::support::fake_provider::{FakeConfig, FakeProvider};
use crate::support::pg;
use crate::support::wait::wait_for;
use cb_proto::v1 as pb;
use cb_proto::v1::credential_service_client::CredentialServiceClient;
use cb_proto::v1::membership_service_client::MembershipServiceClient;
use credential_broker::layers::auth::token_sha256_hex;
use credential_broker::runtime::config::{CallerConfig, RunGrantMode};
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

const WEB: &str = "rg-web-token";
const EXECUTOR: &str = "rg-executor-token";
const LEGACY_EXECUTOR: &str = "rg-legacy-executor-token";
const OPERATOR: &str = "rg-operator-token";

const ALICE: (&str, &str) = ("u-alice", "alice@example.com");
const BOB: (&str, &str) = ("u-bob", "bob@example.com");

/// A broker (SQLite, or `database_url`) with a web backend, an executor that must present run
/// grants (the default), one still allowed to name the actor itself, and an operator.
async fn broker(fake: &FakeProvider, database_url: Option<&str>) -> TestBroker {
    TestBroker::with_fake(fake, database_url, |config| {
        config.run_grants.max_lifetime_seconds = 3600;
        config.callers = [
            ("web", "web", WEB, true, None),
            ("executor", "executor", EXECUTOR, false, None),
            (
                "legacy-executor",
                "executor",
                LEGACY_EXECUTOR,
                true,
                Some(RunGrantMode::Optional),
            ),
            ("operator", "operator", OPERATOR, false, None),
        ]
        .into_iter()
        .map(
            |(name, role, token, unsigned_actor, run_grants)| CallerConfig {
                name: name.into(),
                role: role.into(),
                token_sha256: Some(token_sha256_hex(token)),
                unsigned_actor,
                run_grants,
                ..Default::default()
            },
        )
        .collect();
    })
    .await
}

/// A request from the service holding `token`, for `actor` (plain metadata), with `grant`.
fn call<T>(
    msg: T,
    token: &str,
    actor: Option<(&str, &str)>,
    grant: Option<&str>,
) -> tonic::Request<T> {
    let mut r = from_service(msg, token, actor);
    if let Some(g) = grant {
        r.metadata_mut().insert("x-run-grant", g.parse().unwrap());
    }
    r
}

/// A request from the web backend for `actor`.
fn web<T>(actor: (&str, &str), msg: T) -> tonic::Request<T> {
    from_service(msg, WEB, Some(actor))
}

struct Api {
    creds: CredentialServiceClient<Channel>,
    members: MembershipServiceClient<Channel>,
}

impl Api {
    async fn new(b: &TestBroker) -> Self {
        Self {
            creds: b.credentials().await,
            members: b.members().await,
        }
    }

    /// A credential of ws1 imported with ALICE as its Admin.
    async fn import(&mut self, fake: &FakeProvider, subject: &str) -> String {
        let (mut req, _, _) = fake_grant_import(fake, subject, T0.as_millis() / 1000 + 7200);
        req.admin_email = ALICE.1.into();
        self.creds
            .import_credential(from_service(req, OPERATOR, None))
            .await
            .credential()
            .credential_id
    }

    /// CreateRunGrant as the web backend for `actor`.
    async fn grant(
        &mut self,
        actor: (&str, &str),
        credential_ids: &[&str],
        execution: &str,
        lifetime_secs: Option<i64>,
    ) -> Result<pb::CreateRunGrantResponse, tonic::Status> {
        let req = pb::CreateRunGrantRequest {
            credential_ids: credential_ids.iter().map(|s| (*s).to_owned()).collect(),
            workflow_id: "wf-1".into(),
            execution_id: execution.into(),
            lifetime: lifetime_secs.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
        };
        self.creds
            .create_run_grant(web(actor, req))
            .await
            .map(tonic::Response::into_inner)
    }

    /// GetAccessToken from the service holding `token`, with `grant` (the block and a workflow
    /// of the executor's choosing are sent too: only the block may come from the call).
    async fn token(
        &mut self,
        token: &str,
        id: &str,
        actor: Option<(&str, &str)>,
        grant: Option<&str>,
    ) -> Result<String, tonic::Status> {
        let req = pb::GetAccessTokenRequest {
            credential_id: id.into(),
            workflow_id: "wf-claimed-by-executor".into(),
            block_id: "blk-1".into(),
            ..Default::default()
        };
        self.creds
            .get_access_token(call(req, token, actor, grant))
            .await
            .map(|r| r.into_inner().access_token)
    }
}

/// The code and ErrorInfo reason of a refusal.
fn refusal<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, String) {
    let s = r.expect_err("refused");
    (s.code(), error_details(&s).0)
}

fn reason(code: Code, reason: &str) -> (Code, String) {
    (code, reason.to_owned())
}

/// One issuance as the audit log tells it: (actor, executor, run grant id, workflow, execution).
type Recipient = (String, String, String, String, String);

/// "Who received tokens of `credential`, for which runs": ListAuditEvents filtered on the
/// credential, `token.issue` and outcome `ok`, every page, with each row's count.
async fn recipients(b: &TestBroker, api: &mut Api, credential: &str) -> BTreeMap<Recipient, u64> {
    let filter = pb::ListAuditEventsRequest {
        credential_id: credential.into(),
        action: "token.issue".into(),
        outcome: "ok".into(),
        ..Default::default()
    };
    let mut out = BTreeMap::new();
    for e in audit_events(b, &mut api.creds, OPERATOR, filter).await {
        assert_eq!(
            (
                e.action.as_str(),
                e.credential_id.as_str(),
                e.outcome.as_str()
            ),
            ("token.issue", credential, "ok")
        );
        let field = |k: &str| {
            e.detail
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .unwrap_or("")
                .to_owned()
        };
        *out.entry((
            e.actor.clone(),
            e.service.clone(),
            field("run_grant"),
            field("workflow"),
            field("execution"),
        ))
        .or_default() += audit_count(&e);
    }
    out
}

fn recipient(actor: &str, service: &str, grant: &str, wf: &str, ex: &str) -> Recipient {
    (
        actor.into(),
        service.into(),
        grant.into(),
        wf.into(),
        ex.into(),
    )
}

async fn executor_is_limited_to_its_run(database_url: Option<&str>) {
    let fake = FakeProvider::start(FakeConfig::default()).await;
    let b = broker(&fake, database_url).await;
    let mut api = Api::new(&b).await;
    let a = api.import(&fake, "acct-a").await;
    let other = api.import(&fake, "acct-b").await;
    // Bob becomes a Member of `a` only.
    api.members
        .add_member(web(
            ALICE,
            pb::AddMemberRequest {
                credential_id: a.clone(),
                email: BOB.1.into(),
                role: pb::MemberRole::Member as i32,
            },
        ))
        .await
        .unwrap();
    api.members
        .accept_invitation(web(
            BOB,
            pb::AcceptInvitationRequest {
                credential_id: a.clone(),
            },
        ))
        .await
        .unwrap();
    let mut expected: BTreeMap<Recipient, u64> = BTreeMap::new();

    // Without a grant the executor gets nothing, even naming a user it may not prove.
    assert_eq!(
        refusal(api.token(EXECUTOR, &a, None, None).await),
        reason(Code::PermissionDenied, "RUN_GRANT_REQUIRED")
    );
    // Bob may have a grant for `a`, not for a credential he cannot use.
    assert_eq!(
        refusal(api.grant(BOB, &[&other], "ex-1", None).await),
        reason(Code::NotFound, "CREDENTIAL_NOT_FOUND")
    );
    assert_eq!(
        refusal(api.grant(BOB, &[&a], "ex-1", Some(3601)).await).0,
        Code::InvalidArgument
    );
    let bobs = api.grant(BOB, &[&a], "ex-1", None).await.unwrap();
    assert!(bobs.run_grant.starts_with("cbrg_"));
    assert!(bobs.run_grant.len() >= 5 + 43, "256 bits of randomness");
    // The default lifetime (15 min).
    assert_eq!(
        bobs.expire_time.as_ref().map(|t| t.seconds),
        Some(T0.as_millis() / 1000 + 900)
    );
    let g = bobs.run_grant.as_str();
    // With it: `a`, as Bob, for his run (whatever workflow the executor claims).
    for _ in 0..3 {
        api.token(EXECUTOR, &a, None, Some(g)).await.unwrap();
    }
    *expected
        .entry(recipient(
            BOB.0,
            "executor",
            &bobs.run_grant_id,
            "wf-1",
            "ex-1",
        ))
        .or_default() += 3;
    // Actor metadata next to a grant changes nothing: the grant's actor counts.
    api.token(LEGACY_EXECUTOR, &a, Some(ALICE), Some(g))
        .await
        .unwrap();
    *expected
        .entry(recipient(
            BOB.0,
            "legacy-executor",
            &bobs.run_grant_id,
            "wf-1",
            "ex-1",
        ))
        .or_default() += 1;
    // Not another credential, even one Alice's grants could cover.
    assert_eq!(
        refusal(api.token(EXECUTOR, &other, None, Some(g)).await),
        reason(Code::PermissionDenied, "RUN_GRANT_NOT_COVERING")
    );
    // Not a grant the broker never issued.
    let forged = format!("cbrg_{}", "A".repeat(43));
    assert_eq!(
        refusal(api.token(EXECUTOR, &a, None, Some(&forged)).await),
        reason(Code::PermissionDenied, "RUN_GRANT_INVALID")
    );

    // Alice's run covers both; a short-lived grant expires with the broker's clock.
    let alices = api
        .grant(ALICE, &[&a, &other], "ex-2", Some(60))
        .await
        .unwrap();
    api.token(EXECUTOR, &other, None, Some(&alices.run_grant))
        .await
        .unwrap();
    b.clock.advance(Duration::from_secs(60));
    assert_eq!(
        refusal(
            api.token(EXECUTOR, &other, None, Some(&alices.run_grant))
                .await
        ),
        reason(Code::PermissionDenied, "RUN_GRANT_EXPIRED")
    );

    // Revoked: by its user only (Bob cannot end Alice's run).
    let revocable = api.grant(ALICE, &[&a], "ex-3", None).await.unwrap();
    api.token(EXECUTOR, &a, None, Some(&revocable.run_grant))
        .await
        .unwrap();
    *expected
        .entry(recipient(
            ALICE.0,
            "executor",
            &revocable.run_grant_id,
            "wf-1",
            "ex-3",
        ))
        .or_default() += 1;
    let revoke = |actor| {
        web(
            actor,
            pb::RevokeRunGrantRequest {
                run_grant_id: revocable.run_grant_id.clone(),
            },
        )
    };
    assert_eq!(
        refusal(api.creds.revoke_run_grant(revoke(BOB)).await),
        reason(Code::NotFound, "RUN_GRANT_NOT_FOUND")
    );
    api.creds.revoke_run_grant(revoke(ALICE)).await.unwrap();
    assert_eq!(
        refusal(
            api.token(EXECUTOR, &a, None, Some(&revocable.run_grant))
                .await
        ),
        reason(Code::PermissionDenied, "RUN_GRANT_REVOKED")
    );

    // An executor allowed to work without grants still can (old clients), as the named actor.
    api.token(LEGACY_EXECUTOR, &a, Some(ALICE), None)
        .await
        .unwrap();
    *expected
        .entry(recipient(
            ALICE.0,
            "legacy-executor",
            "",
            "wf-claimed-by-executor",
            "",
        ))
        .or_default() += 1;

    // Bob removed from `a`: his live grant gives nothing any more.
    api.members
        .remove_member(web(
            ALICE,
            pb::RemoveMemberRequest {
                credential_id: a.clone(),
                email: BOB.1.into(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        refusal(api.token(EXECUTOR, &a, None, Some(g)).await),
        reason(Code::NotFound, "CREDENTIAL_NOT_FOUND")
    );

    // Disconnected: Alice's live grant for `a` gives nothing, and no new grant names it.
    let before_disconnect = api.grant(ALICE, &[&a], "ex-4", None).await.unwrap();
    api.creds
        .disconnect_credential(web(
            ALICE,
            pb::DisconnectCredentialRequest {
                credential_id: a.clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        refusal(
            api.token(EXECUTOR, &a, None, Some(&before_disconnect.run_grant))
                .await
        ),
        reason(Code::FailedPrecondition, "CREDENTIAL_DISCONNECTED")
    );
    assert_eq!(
        refusal(api.grant(ALICE, &[&a], "ex-5", None).await),
        reason(Code::FailedPrecondition, "CREDENTIAL_DISCONNECTED")
    );

    // The audit answer matches the calls made, person → run → executor, and nothing else.
    assert_eq!(recipients(&b, &mut api, &a).await, expected);
}

#[tokio::test]
async fn executor_is_limited_to_its_run_sqlite() {
    executor_is_limited_to_its_run(None).await;
}

#[tokio::test]
async fn executor_is_limited_to_its_run_postgres() {
    let Some(db) = pg::fresh_database("run_grants_limited").await else {
        return;
    };
    executor_is_limited_to_its_run(Some(&db.url)).await;
    db.drop_database().await;
}

/// A grant revoked through one replica stops working on another that had it in memory.
#[tokio::test]
async fn revocation_reaches_every_replica() {
    let Some(db) = pg::fresh_database("run_grants_revocation").await else {
        return;
    };
    let fake = FakeProvider::start(FakeConfig::default()).await;
    let first = broker(&fake, Some(&db.url)).await;
    let mut config = first.config.clone();
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let second = TestBroker::start(config, first.dir.clone()).await.unwrap();
    let mut on_first = Api::new(&first).await;
    let on_second = Api::new(&second).await;
    let a = on_first.import(&fake, "acct-a").await;
    let g = on_first.grant(ALICE, &[&a], "ex-1", None).await.unwrap();
    // Used on the second replica until it answers from memory (its change feed is up, so the
    // grant is kept in memory too).
    let hits = second.issuance_stats().cache_hits;
    wait_for(
        Duration::from_secs(10),
        "the second replica serves the run's token from memory",
        || {
            let (mut api, a, grant) = (on_second.creds.clone(), a.clone(), g.run_grant.clone());
            let served_from_memory = second.issuance_stats().cache_hits > hits;
            async move {
                let req = pb::GetAccessTokenRequest {
                    credential_id: a,
                    ..Default::default()
                };
                api.get_access_token(call(req, EXECUTOR, None, Some(&grant)))
                    .await
                    .unwrap();
                if served_from_memory {
                    Ok(())
                } else {
                    Err("database")
                }
            }
        },
    )
    .await;
    on_first
        .creds
        .revoke_run_grant(web(
            ALICE,
            pb::RevokeRunGrantRequest {
                run_grant_id: g.run_grant_id.clone(),
            },
        ))
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(10),
        "the second replica refuses the revoked grant",
        || {
            let mut api = on_second.creds.clone();
            let (a, grant) = (a.clone(), g.run_grant.clone());
            async move {
                let req = pb::GetAccessTokenRequest {
                    credential_id: a,
                    ..Default::default()
                };
                match api
                    .get_access_token(call(req, EXECUTOR, None, Some(&grant)))
                    .await
                {
                    Err(s) if error_details(&s).0 == "RUN_GRANT_REVOKED" => Ok(()),
                    other => Err(other.map(drop).map_err(|s| error_details(&s).0)),
                }
            }
        },
    )
    .await;
    db.drop_database().await;
}

//! CredentialService through a real tonic client against the real server: the import → get →
//! list → rename → disconnect lifecycle, input validation, visibility, restarts and key checks.

use crate::support::broker::{TestBroker, as_actor, error_details};
use crate::support::client::{ALICE, BOB};
use crate::support::pg;
use crate::support::{contains, sqlite_bytes};
use cb_proto::v1 as pb;
use prost::Message;
use tonic::Code;

const ACCESS: &str = "ya29.ACCESS-TOKEN-sentinel-5f1c";
const REFRESH: &str = "1//REFRESH-TOKEN-sentinel-9a2e";

fn import_request(workspace: &str, subject: &str, name: &str) -> pb::ImportCredentialRequest {
    pb::ImportCredentialRequest {
        workspace_id: workspace.into(),
        provider_id: "gmail".into(),
        account: Some(pb::ProviderAccount {
            subject: subject.into(),
            label: format!("{subject}@example.com"),
        }),
        display_name: name.into(),
        description: "imported for tests".into(),
        tokens: Some(pb::TokenSet {
            access_token: format!("{ACCESS}-{subject}"),
            refresh_token: format!("{REFRESH}-{subject}"),
            token_type: "Bearer".into(),
            access_token_expire_time: Some(prost_types::Timestamp {
                seconds: 1_900_000_000,
                nanos: 0,
            }),
            ..Default::default()
        }),
        granted_scopes: vec!["https://www.googleapis.com/auth/gmail.readonly".into()],
        ..Default::default()
    }
}

/// An UpdateCredential of `credential` with the mask `paths`.
fn update_request(credential: pb::Credential, paths: &[&str]) -> pb::UpdateCredentialRequest {
    pb::UpdateCredentialRequest {
        credential: Some(credential),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
    }
}

/// Renames credential `id` to `name`, expecting `version` (0: any).
fn rename_request(id: &str, name: &str, version: i64) -> pb::UpdateCredentialRequest {
    let credential = pb::Credential {
        credential_id: id.into(),
        display_name: name.into(),
        version,
        ..Default::default()
    };
    update_request(credential, &["display_name"])
}

/// Fails unless `err` is INVALID_ARGUMENT naming `field` (case `what`).
fn assert_invalid_field(err: &tonic::Status, what: &str, field: &str) {
    assert_eq!(err.code(), Code::InvalidArgument, "{what}");
    assert!(
        error_details(err).1.iter().any(|f| f == field),
        "{what}: {:?}",
        error_details(err).1
    );
}

/// Fails if an encoded response holds any token material.
fn assert_no_token<M: Message>(m: &M) {
    let bytes = m.encode_to_vec();
    for needle in [ACCESS, REFRESH] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "a response carried token material"
        );
    }
}

async fn import_as_alice(b: &TestBroker, subject: &str, name: &str) -> pb::Credential {
    let mut client = b.client(ALICE).await;
    let credential = client
        .import(import_request("ws1", subject, name))
        .await
        .unwrap();
    assert_no_token(&credential);
    credential
}

async fn lifecycle(mut b: TestBroker) {
    let mut client = b.client(ALICE).await;
    let created = import_as_alice(&b, "acct-1", "Work Gmail").await;
    assert_eq!(created.status, pb::CredentialStatus::Active as i32);
    assert_eq!(created.caller_role, pb::MemberRole::Admin as i32);
    assert_eq!(created.created_by, ALICE.id);
    assert!(created.has_refresh_token);
    assert_eq!(
        created.access_token_expire_time.unwrap().seconds,
        1_900_000_000
    );
    let id = created.credential_id.clone();

    let got = client.get(&id).await.unwrap();
    assert_no_token(&got);
    assert_eq!(got.display_name, "Work Gmail");

    // More credentials, one in another workspace, then walk the pages.
    for i in 2..=5 {
        import_as_alice(&b, &format!("acct-{i}"), &format!("Gmail {i}")).await;
    }
    client
        .import(import_request("ws2", "acct-x", "Other workspace"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut last_page = false;
    // Five credentials in pages of two: three pages, so ten reads bound the walk.
    for _ in 0..10 {
        let page = client
            .list_page(pb::ListCredentialsRequest {
                workspace_id: "ws1".into(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_no_token(&page);
        assert!(page.credentials.len() <= 2);
        seen.extend(page.credentials.into_iter().map(|c| c.credential_id));
        if page.next_page_token.is_empty() {
            last_page = true;
            break;
        }
        token = page.next_page_token;
    }
    assert!(last_page, "the pages end");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen.len(), 5, "every ws1 credential exactly once: {seen:?}");
    assert_eq!(seen, sorted, "pages are ordered by id");

    // Provider filter.
    let other = client
        .list_page(pb::ListCredentialsRequest {
            workspace_id: "ws1".into(),
            provider_id: "slack".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(other.credentials.is_empty());

    // Rename (with the version read) and edit the description.
    b.clock.advance(std::time::Duration::from_secs(60));
    let renamed = client
        .update(update_request(
            pb::Credential {
                credential_id: id.clone(),
                display_name: "  Support inbox ".into(),
                description: "shared by support".into(),
                version: created.version,
                ..Default::default()
            },
            &["display_name", "description"],
        ))
        .await
        .unwrap();
    assert_eq!(renamed.display_name, "Support inbox");
    assert_eq!(renamed.description, "shared by support");
    assert_eq!(renamed.version, created.version + 1);
    assert!(renamed.update_time.unwrap().seconds > created.update_time.unwrap().seconds);

    // A stale version is rejected.
    let stale = client
        .update(rename_request(&id, "lost update", created.version))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted);
    assert_eq!(error_details(&stale).0, "VERSION_CONFLICT");

    // Disconnect, then the credential reads as DISCONNECTED with no tokens.
    let disc = client.disconnect(&id).await.unwrap();
    assert_no_token(&disc);
    let c = disc.credential.unwrap();
    assert_eq!(c.status, pb::CredentialStatus::Disconnected as i32);
    assert!(!c.has_refresh_token);
    let got = client.get(&id).await.unwrap();
    assert_eq!(got.status, pb::CredentialStatus::Disconnected as i32);
    assert_eq!(got.display_name, "Support inbox");

    // Disconnected credentials are hidden from lists unless asked for.
    let list = |include_disconnected| pb::ListCredentialsRequest {
        workspace_id: "ws1".into(),
        include_disconnected,
        ..Default::default()
    };
    let visible = client.list_page(list(false)).await.unwrap();
    assert_eq!(visible.credentials.len(), 4);
    let all = client.list_page(list(true)).await.unwrap();
    assert_eq!(all.credentials.len(), 5);

    // A disconnected credential can no longer be edited.
    let err = client
        .update(rename_request(&id, "x", 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(error_details(&err).0, "CREDENTIAL_DISCONNECTED");
    b.stop().await;
}

#[tokio::test]
async fn lifecycle_on_sqlite() {
    lifecycle(TestBroker::sqlite().await).await;
}

#[tokio::test]
async fn lifecycle_on_postgres() {
    let Some(db) = pg::fresh_database("lifecycle").await else {
        return;
    };
    lifecycle(TestBroker::with_database(&db.url).await).await;
    db.drop_database().await;
}

#[tokio::test]
async fn bad_input_names_the_offending_field() {
    let b = TestBroker::sqlite().await;
    let mut client = b.client(ALICE).await;
    let existing = import_as_alice(&b, "acct-1", "Gmail").await.credential_id;

    let mut cases: Vec<(&str, pb::ImportCredentialRequest, &str)> = Vec::new();
    let mut r = import_request("", "s", "n");
    cases.push(("empty workspace", r.clone(), "workspace_id"));
    r = import_request("ws/../1", "s", "n");
    cases.push(("malformed workspace", r.clone(), "workspace_id"));
    r = import_request("ws1", "s", "   ");
    cases.push(("blank name", r.clone(), "display_name"));
    r = import_request("ws1", "s", &"n".repeat(101));
    cases.push(("oversize name", r.clone(), "display_name"));
    r = import_request("ws1", "s", "bell\u{7}name");
    cases.push(("control char in name", r.clone(), "display_name"));
    r = import_request("ws1", "s", "n");
    r.description = "d".repeat(1001);
    cases.push(("oversize description", r.clone(), "description"));
    r = import_request("ws1", "s", "n");
    r.provider_id = "Not A Provider".into();
    cases.push(("malformed provider", r.clone(), "provider_id"));
    r = import_request("ws1", "s", "n");
    r.tokens.as_mut().unwrap().access_token.clear();
    cases.push(("missing access token", r.clone(), "tokens.access_token"));
    r = import_request("ws1", "", "n");
    cases.push(("missing account subject", r.clone(), "account.subject"));
    r = import_request("ws1", "s", "n");
    r.granted_scopes = vec!["two words".into()];
    cases.push(("scope with space", r.clone(), "granted_scopes[0]"));
    r = import_request("ws1", "s", "n");
    r.admin_email = "not-an-email".into();
    cases.push(("bad admin email", r.clone(), "admin_email"));
    for (what, req, field) in cases {
        let err = client.import(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}");
        let (reason, fields) = error_details(&err);
        assert_eq!(reason, "INVALID_ARGUMENT", "{what}");
        assert!(
            fields.iter().any(|f| f == field),
            "{what}: expected {field} in {fields:?}"
        );
        assert!(!err.message().contains(ACCESS), "{what}: token echoed");
    }

    for (what, id) in [
        ("empty id", ""),
        ("malformed id", "../../etc"),
        ("uppercase uuid", &existing.to_uppercase()),
    ] {
        let err = client.get(id).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}");
        assert_eq!(
            error_details(&err).1,
            vec!["credential_id".to_owned()],
            "{what}"
        );
    }

    let update = |paths: Vec<&str>, name: &str| {
        let credential = pb::Credential {
            credential_id: existing.clone(),
            display_name: name.into(),
            ..Default::default()
        };
        update_request(credential, &paths)
    };
    for (what, req, field) in [
        (
            "unknown mask path",
            update(vec!["status"], "x"),
            "update_mask.paths[0]",
        ),
        (
            "token field in mask",
            update(vec!["display_name", "access_token"], "x"),
            "update_mask.paths[1]",
        ),
        ("empty mask", update(vec![], "x"), "update_mask"),
        (
            "empty name",
            update(vec!["display_name"], ""),
            "credential.display_name",
        ),
    ] {
        let err = client.update(req).await.unwrap_err();
        assert_invalid_field(&err, what, field);
    }

    for (what, req, field) in [
        (
            "no workspace",
            pb::ListCredentialsRequest::default(),
            "workspace_id",
        ),
        (
            "negative page size",
            pb::ListCredentialsRequest {
                workspace_id: "ws1".into(),
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
        (
            "unknown status enum",
            pb::ListCredentialsRequest {
                workspace_id: "ws1".into(),
                statuses: vec![99],
                ..Default::default()
            },
            "statuses[0]",
        ),
        (
            "forged page token",
            pb::ListCredentialsRequest {
                workspace_id: "ws1".into(),
                page_token: "bm9wZQ".into(),
                ..Default::default()
            },
            "page_token",
        ),
    ] {
        let err = client.list_page(req).await.unwrap_err();
        assert_invalid_field(&err, what, field);
    }

    // Bad actor metadata is named too.
    let mut req = tonic::Request::new(pb::GetCredentialRequest {
        credential_id: existing.clone(),
    });
    req.metadata_mut()
        .insert("x-actor-id", "u-alice".parse().unwrap());
    req.metadata_mut()
        .insert("x-actor-email", "nope".parse().unwrap());
    let err = client.creds.get_credential(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        error_details(&err).1,
        vec!["metadata:x-actor-email".to_owned()]
    );
}

#[tokio::test]
async fn unknown_and_invisible_credentials_are_not_found() {
    let b = TestBroker::sqlite().await;
    let mut client = b.client(ALICE).await;
    let id = import_as_alice(&b, "acct-1", "Gmail").await.credential_id;

    let mut bob = client.acting_as(BOB);
    let unknown = cb_broker::types::CredentialId::generate().to_string();
    let err = client.get(&unknown).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(error_details(&err).0, "CREDENTIAL_NOT_FOUND");

    // Bob is not a member: the credential does not exist for him, in reads, lists and writes.
    let err = bob.get(&id).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(bob.list().await.unwrap().is_empty());
    let err = bob.disconnect(&id).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // A workspace admin acts as Admin on the workspace's credentials, but not on another workspace's.
    let got = bob.admin_of("ws1").get(&id).await.unwrap();
    assert_eq!(got.caller_role, pb::MemberRole::Admin as i32);
    let err = bob.admin_of("ws2").get(&id).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Edits need an actor.
    let err = client
        .creds
        .disconnect_credential(tonic::Request::new(pb::DisconnectCredentialRequest {
            credential_id: id,
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(error_details(&err).0, "ACTOR_REQUIRED");
}

#[tokio::test]
async fn the_same_account_cannot_be_imported_twice_while_connected() {
    let b = TestBroker::sqlite().await;
    let mut client = b.client(ALICE).await;
    let first = import_as_alice(&b, "acct-1", "Gmail").await;
    let err = client
        .import(import_request("ws1", "acct-1", "Twin"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    client.disconnect(&first.credential_id).await.unwrap();
    import_as_alice(&b, "acct-1", "Gmail again").await;
}

#[tokio::test]
async fn restart_keeps_credentials_and_a_foreign_key_file_fails_at_start_up() {
    let mut b = TestBroker::sqlite().await;
    let id = import_as_alice(&b, "acct-1", "Gmail").await.credential_id;
    let config = b.config.clone();
    b.stop().await;

    // Same database, same key file: still readable.
    let mut again = TestBroker::start(config.clone(), b.dir.clone())
        .await
        .unwrap();
    let got = again.client(ALICE).await.get(&id).await.unwrap();
    assert_eq!(got.display_name, "Gmail");
    again.stop().await;

    // Same database, a different key file: refuse to start, naming the problem.
    let mut foreign = config;
    foreign.keys.local_key_file = b.dir.path().join("another-key.json");
    let err = TestBroker::start(foreign, b.dir.clone())
        .await
        .err()
        .expect("start-up must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("cannot open") && msg.contains("another-key.json"),
        "{msg}"
    );
}

#[tokio::test]
async fn no_token_plaintext_in_the_sqlite_file() {
    let mut b = TestBroker::sqlite().await;
    import_as_alice(&b, "acct-1", "Gmail").await;
    b.stop().await;
    let all = sqlite_bytes(b.dir.path());
    assert!(contains(&all, "acct-1"), "the scan must see the row itself");
    for needle in [ACCESS, REFRESH] {
        assert!(
            !contains(&all, needle),
            "token plaintext in the database files"
        );
    }
}

#[tokio::test]
async fn no_token_plaintext_in_postgres_rows() {
    let Some(db) = pg::fresh_database("plaintext_scan").await else {
        return;
    };
    let mut b = TestBroker::with_database(&db.url).await;
    import_as_alice(&b, "acct-1", "Gmail").await;
    b.stop().await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    // Every column of every table, as text (bytea renders as hex, so also check the hex form).
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(tables.iter().any(|t| t == "credentials"));
    let mut dump = String::new();
    for t in tables {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT row_to_json(x)::text FROM \"{t}\" x"
        )))
        .fetch_all(&pool)
        .await
        .unwrap();
        dump.extend(rows);
    }
    assert!(dump.contains("acct-1"), "the scan must see the row itself");
    for needle in [ACCESS, REFRESH] {
        let hex = hex::encode(needle);
        assert!(
            !dump.contains(needle) && !dump.contains(&hex),
            "token plaintext in PostgreSQL"
        );
    }
    pool.close().await;
    db.drop_database().await;
}

#[tokio::test]
async fn without_an_update_mask_the_populated_fields_are_updated() {
    let b = TestBroker::sqlite().await;
    let mut client = b.client(ALICE).await;
    let id = import_as_alice(&b, "acct-1", "Gmail").await.credential_id;
    let renamed = client
        .update(pb::UpdateCredentialRequest {
            credential: Some(pb::Credential {
                credential_id: id.clone(),
                display_name: "Renamed".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap();
    assert_eq!(renamed.display_name, "Renamed");
    assert_eq!(
        renamed.description, "imported for tests",
        "unpopulated fields stay"
    );
    let err = client
        .update(pb::UpdateCredentialRequest {
            credential: Some(pb::Credential {
                credential_id: id,
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn durations_and_timestamps_outside_their_protobuf_range_are_invalid_arguments() {
    let b = TestBroker::sqlite().await;
    let mut client = b.credentials().await;
    let id = import_as_alice(&b, "acct-1", "Gmail").await.credential_id;
    let duration = |seconds, nanos| prost_types::Duration { seconds, nanos };
    let timestamp = |seconds, nanos| prost_types::Timestamp { seconds, nanos };

    // google.protobuf.Duration: nanos within ±999999999 and of the sign of seconds, at most
    // 10,000 years; a negative min_valid_for makes no sense either.
    for (what, d) in [
        ("nanos of 2 seconds", duration(0, 2_000_000_000)),
        (
            "negative nanos beyond a second",
            duration(0, -1_000_000_000),
        ),
        ("positive seconds, negative nanos", duration(5, -1)),
        ("negative seconds, positive nanos", duration(-5, 1)),
        ("beyond 10,000 years", duration(315_576_000_001, 0)),
        ("negative", duration(-1, 0)),
        ("negative nanos only", duration(0, -1)),
    ] {
        let err = client
            .get_access_token(as_actor(
                pb::GetAccessTokenRequest {
                    credential_id: id.clone(),
                    min_valid_for: Some(d),
                    ..Default::default()
                },
                ALICE.id,
                ALICE.email,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert_eq!(
            error_details(&err),
            (
                "INVALID_ARGUMENT".to_owned(),
                vec!["min_valid_for".to_owned()]
            ),
            "{what}"
        );
    }
    let ok = client
        .get_access_token(as_actor(
            pb::GetAccessTokenRequest {
                credential_id: id.clone(),
                min_valid_for: Some(duration(60, 500_000_000)),
                ..Default::default()
            },
            ALICE.id,
            ALICE.email,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!ok.access_token.is_empty());

    // google.protobuf.Timestamp: nanos 0 to 999999999, years 1 to 9999.
    let bad_timestamps = [
        ("nanos of a second", timestamp(1_900_000_000, 1_000_000_000)),
        ("negative nanos", timestamp(1_900_000_000, -1)),
        ("year 10000", timestamp(253_402_300_800, 0)),
        ("before year 1", timestamp(-62_135_596_801, 0)),
        ("i64::MAX seconds", timestamp(i64::MAX, 0)),
    ];
    for (what, t) in &bad_timestamps {
        for field in [
            "tokens.access_token_expire_time",
            "tokens.refresh_token_expire_time",
        ] {
            let mut r = import_request("ws1", "acct-2", "n");
            let tokens = r.tokens.as_mut().unwrap();
            if field.ends_with("access_token_expire_time") {
                tokens.access_token_expire_time = Some(*t);
            } else {
                tokens.refresh_token_expire_time = Some(*t);
            }
            let err = client
                .import_credential(as_actor(r, ALICE.id, ALICE.email))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
            assert_eq!(error_details(&err).1, vec![field.to_owned()], "{what}");
        }
        let err = client
            .list_audit_events(pb::ListAuditEventsRequest {
                start_time: Some(*t),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert_eq!(
            error_details(&err).1,
            vec!["start_time".to_owned()],
            "{what}"
        );
    }
    // The last second of year 9999 is still a timestamp.
    client
        .list_audit_events(pb::ListAuditEventsRequest {
            end_time: Some(timestamp(253_402_300_799, 999_999_999)),
            ..Default::default()
        })
        .await
        .unwrap();
}

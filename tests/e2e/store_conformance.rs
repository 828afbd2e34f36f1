//! The store conformance suite: every test body runs on SQLite and on PostgreSQL.

use std::future::Future;
use std::sync::Arc;

use cb_store::{
    CredentialQuery, CredentialRow, KeyUsage, LeaseColumns, MemberRow, NewAuditEvent,
    SealedColumns, Store, StoreError,
};

use crate::support::pg;

/// Expands each listed body into `sqlite::<name>` and `postgres::<name>` tests.
macro_rules! store_suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::run_on_sqlite(super::$name).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::run_on_postgres(concat!("store_", stringify!($name)), super::$name)
                        .await;
                }
            )*
        }
    };
}

store_suite!(
    migrate_is_idempotent,
    insert_then_get_round_trips_every_column,
    get_unknown_credential_is_none,
    duplicate_id_is_rejected,
    failed_insert_leaves_nothing_behind,
    insert_rejects_wrong_version_or_foreign_members,
    active_twin_is_rejected_until_the_first_is_disconnected,
    find_credential_by_account_ignores_disconnected,
    list_filters_workspace_provider_and_status,
    keyset_pagination_walks_every_row_once_in_id_order,
    update_writes_mutable_columns_and_bumps_version,
    stale_update_conflicts_and_leaves_row_unchanged,
    update_of_unknown_id_is_not_found,
    update_can_clear_sealed_tokens,
    update_into_an_active_twin_is_rejected,
    members_upsert_get_list_delete,
    member_of_unknown_credential_is_not_found,
    audit_append_returns_increasing_ids,
    key_usage_counts_sealed_credentials_per_key_version,
    errors_do_not_echo_bound_values,
    concurrent_updates_have_exactly_one_winner,
);

async fn run_on_sqlite<F, Fut>(body: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temp dir");
    // A subdirectory that does not exist yet: open() must create it.
    let url = format!("sqlite://{}", dir.path().join("data/store.db").display());
    let store = cb_store::open(&url, 5).await.expect("open sqlite store");
    assert_eq!(store.backend(), "sqlite");
    store.migrate().await.expect("migrate sqlite");
    body(store).await;
}

async fn run_on_postgres<F, Fut>(label: &str, body: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(db) = pg::fresh_database(label).await else {
        return;
    };
    let store = cb_store::open(&db.url, 5)
        .await
        .expect("open postgres store");
    assert_eq!(store.backend(), "postgres");
    store.migrate().await.expect("migrate postgres");
    // Run the body in its own task so a failing assertion still lets us drop the database.
    let outcome = tokio::spawn(body(store)).await;
    db.drop_database().await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(payload) => std::panic::resume_unwind(payload),
            Err(e) => panic!("test task did not finish: {e}"),
        }
    }
}

// ---- fixtures ------------------------------------------------------------------------------

/// A credential with every optional column set, so a round trip checks them all.
fn credential(id: &str, workspace_id: &str, provider_id: &str, subject: &str) -> CredentialRow {
    CredentialRow {
        id: id.to_owned(),
        workspace_id: workspace_id.to_owned(),
        provider_id: provider_id.to_owned(),
        account_subject: subject.to_owned(),
        account_label: format!("{subject}@example.com"),
        display_name: format!("Display {id}"),
        description: "used by the nightly sync".to_owned(),
        scopes: "openid email https://www.googleapis.com/auth/drive".to_owned(),
        status: "ACTIVE".to_owned(),
        status_reason: Some("fresh".to_owned()),
        created_by: "user-1".to_owned(),
        created_at: 1_700_000_000_000,
        updated_at: 1_700_000_000_001,
        last_used_at: Some(1_700_000_000_002),
        last_refreshed_at: Some(1_700_000_000_003),
        access_expires_at: Some(1_700_000_003_600),
        next_refresh_at: Some(1_700_000_003_000),
        refresh_token_expires_at: Some(1_800_000_000_000),
        has_refresh_token: true,
        sealed: Some(SealedColumns {
            // Every byte value, including NUL and invalid UTF-8.
            ciphertext: (0..=255u8).collect(),
            dek_wrapped: vec![0, 159, 146, 150, 255, 0],
            dek_key_id: "local:k1".to_owned(),
            dek_key_version: 3,
        }),
        row_version: 1,
        lease: LeaseColumns {
            holder: Some("replica-a".to_owned()),
            fence: 7,
            expires_at: Some(1_700_000_010_000),
        },
    }
}

/// A credential with every optional column empty.
fn bare_credential(
    id: &str,
    workspace_id: &str,
    provider_id: &str,
    subject: &str,
) -> CredentialRow {
    CredentialRow {
        status: "NEEDS_RECONNECT".to_owned(),
        status_reason: None,
        last_used_at: None,
        last_refreshed_at: None,
        access_expires_at: None,
        next_refresh_at: None,
        refresh_token_expires_at: None,
        has_refresh_token: false,
        sealed: None,
        lease: LeaseColumns::default(),
        ..credential(id, workspace_id, provider_id, subject)
    }
}

fn member(credential_id: &str, email: &str, role: &str) -> MemberRow {
    MemberRow {
        credential_id: credential_id.to_owned(),
        email: email.to_owned(),
        user_id: None,
        role: role.to_owned(),
        state: "INVITED".to_owned(),
        invited_by: "user-1".to_owned(),
        created_at: 1_700_000_000_000,
        updated_at: 1_700_000_000_000,
    }
}

fn query(workspace_id: &str) -> CredentialQuery {
    CredentialQuery {
        workspace_id: workspace_id.to_owned(),
        limit: 100,
        ..CredentialQuery::default()
    }
}

fn ids(rows: &[CredentialRow]) -> Vec<&str> {
    rows.iter().map(|r| r.id.as_str()).collect()
}

async fn must_get(store: &dyn Store, id: &str) -> CredentialRow {
    store
        .get_credential(id)
        .await
        .expect("get_credential")
        .unwrap_or_else(|| panic!("credential {id} missing"))
}

/// Disconnects `id` through the ordinary optimistic update.
async fn disconnect(store: &dyn Store, id: &str) -> CredentialRow {
    let current = must_get(store, id).await;
    let row = CredentialRow {
        status: "DISCONNECTED".to_owned(),
        status_reason: Some("disconnected by admin".to_owned()),
        sealed: None,
        ..current.clone()
    };
    store
        .update_credential(&row, current.row_version)
        .await
        .expect("disconnect")
}

// ---- bodies --------------------------------------------------------------------------------

async fn migrate_is_idempotent(store: Arc<dyn Store>) {
    // The harness already migrated once.
    store.migrate().await.expect("second migrate");
    store.migrate().await.expect("third migrate");
    store.ping().await.expect("ping");
    let row = credential("c1", "ws", "google", "sub-1");
    store.insert_credential(&row, &[]).await.expect("insert");
    store.migrate().await.expect("migrate with data");
    assert_eq!(must_get(&*store, "c1").await, row);
}

async fn insert_then_get_round_trips_every_column(store: Arc<dyn Store>) {
    let full = credential("c-full", "ws", "google", "sub-1");
    let members = vec![
        member("c-full", "admin@example.com", "ADMIN"),
        MemberRow {
            user_id: Some("user-2".to_owned()),
            state: "ACTIVE".to_owned(),
            ..member("c-full", "bob@example.com", "MEMBER")
        },
    ];
    store
        .insert_credential(&full, &members)
        .await
        .expect("insert full");
    assert_eq!(must_get(&*store, "c-full").await, full);
    assert_eq!(
        store.list_members("c-full").await.expect("members"),
        members
    );

    let bare = bare_credential("c-bare", "ws", "github", "sub-2");
    store
        .insert_credential(&bare, &[])
        .await
        .expect("insert bare");
    assert_eq!(must_get(&*store, "c-bare").await, bare);
    assert!(
        store
            .list_members("c-bare")
            .await
            .expect("members")
            .is_empty()
    );
}

async fn get_unknown_credential_is_none(store: Arc<dyn Store>) {
    assert_eq!(store.get_credential("nope").await.expect("get"), None);
}

async fn duplicate_id_is_rejected(store: Arc<dyn Store>) {
    let first = credential("c1", "ws", "google", "sub-1");
    store.insert_credential(&first, &[]).await.expect("insert");
    let twin_id = credential("c1", "ws-other", "github", "sub-other");
    let err = store
        .insert_credential(&twin_id, &[])
        .await
        .expect_err("duplicate id");
    assert!(
        matches!(&err, StoreError::Duplicate(what) if what == "credential id"),
        "got {err:?}"
    );
    assert_eq!(must_get(&*store, "c1").await, first);
}

async fn failed_insert_leaves_nothing_behind(store: Arc<dyn Store>) {
    // The second member violates the member primary key after the credential row was written:
    // the whole transaction must roll back.
    let row = credential("c1", "ws", "google", "sub-1");
    let members = [
        member("c1", "a@example.com", "ADMIN"),
        member("c1", "a@example.com", "MEMBER"),
    ];
    let err = store
        .insert_credential(&row, &members)
        .await
        .expect_err("dup member");
    assert!(
        matches!(&err, StoreError::Duplicate(what) if what == "member email"),
        "got {err:?}"
    );
    assert_eq!(store.get_credential("c1").await.expect("get"), None);
    assert!(store.list_members("c1").await.expect("members").is_empty());
    // The id and account are still free.
    store
        .insert_credential(&row, &members[..1])
        .await
        .expect("insert after rollback");
}

async fn insert_rejects_wrong_version_or_foreign_members(store: Arc<dyn Store>) {
    let wrong_version = CredentialRow {
        row_version: 2,
        ..credential("c1", "ws", "google", "sub-1")
    };
    assert!(matches!(
        store.insert_credential(&wrong_version, &[]).await,
        Err(StoreError::Database(_))
    ));
    let row = credential("c1", "ws", "google", "sub-1");
    let foreign = [member("c-other", "a@example.com", "ADMIN")];
    assert!(matches!(
        store.insert_credential(&row, &foreign).await,
        Err(StoreError::Database(_))
    ));
    assert_eq!(store.get_credential("c1").await.expect("get"), None);
}

async fn active_twin_is_rejected_until_the_first_is_disconnected(store: Arc<dyn Store>) {
    let first = credential("c1", "ws", "google", "sub-1");
    store
        .insert_credential(&first, &[])
        .await
        .expect("insert first");

    // NEEDS_RECONNECT still counts as live.
    let twin = bare_credential("c2", "ws", "google", "sub-1");
    let err = store
        .insert_credential(&twin, &[])
        .await
        .expect_err("active twin");
    assert!(
        matches!(&err, StoreError::Duplicate(what) if what == "credential account"),
        "got {err:?}"
    );

    // The same account in another workspace or under another provider is a different key.
    store
        .insert_credential(&credential("c3", "ws-2", "google", "sub-1"), &[])
        .await
        .expect("other workspace");
    store
        .insert_credential(&credential("c4", "ws", "github", "sub-1"), &[])
        .await
        .expect("other provider");

    disconnect(&*store, "c1").await;
    store
        .insert_credential(&twin, &[])
        .await
        .expect("insert after disconnect");
    // Several disconnected twins may pile up.
    disconnect(&*store, "c2").await;
    store
        .insert_credential(&credential("c5", "ws", "google", "sub-1"), &[])
        .await
        .expect("third connect");
}

async fn find_credential_by_account_ignores_disconnected(store: Arc<dyn Store>) {
    let first = credential("c1", "ws", "google", "sub-1");
    store.insert_credential(&first, &[]).await.expect("insert");
    let found = store
        .find_credential_by_account("ws", "google", "sub-1")
        .await
        .expect("find");
    assert_eq!(found, Some(first));
    for (ws, provider, subject) in [
        ("ws-2", "google", "sub-1"),
        ("ws", "github", "sub-1"),
        ("ws", "google", "sub-2"),
    ] {
        let found = store
            .find_credential_by_account(ws, provider, subject)
            .await
            .expect("find");
        assert_eq!(found, None, "{ws}/{provider}/{subject}");
    }

    disconnect(&*store, "c1").await;
    let found = store
        .find_credential_by_account("ws", "google", "sub-1")
        .await
        .expect("find");
    assert_eq!(found, None);

    let second = credential("c2", "ws", "google", "sub-1");
    store
        .insert_credential(&second, &[])
        .await
        .expect("reconnect");
    let found = store
        .find_credential_by_account("ws", "google", "sub-1")
        .await
        .expect("find");
    assert_eq!(found, Some(second));
}

async fn list_filters_workspace_provider_and_status(store: Arc<dyn Store>) {
    for row in [
        credential("a1", "ws", "google", "s1"),
        credential("a2", "ws", "github", "s2"),
        bare_credential("a3", "ws", "google", "s3"),
        credential("a4", "ws", "google", "s4"),
        credential("b1", "ws-other", "google", "s1"),
    ] {
        store.insert_credential(&row, &[]).await.expect("insert");
    }
    disconnect(&*store, "a4").await;

    let all = store.list_credentials(&query("ws")).await.expect("list");
    assert_eq!(ids(&all), ["a1", "a2", "a3"]);
    assert_eq!(all[0], must_get(&*store, "a1").await);

    let with_disconnected = CredentialQuery {
        include_disconnected: true,
        ..query("ws")
    };
    let rows = store
        .list_credentials(&with_disconnected)
        .await
        .expect("list");
    assert_eq!(ids(&rows), ["a1", "a2", "a3", "a4"]);

    let google = CredentialQuery {
        provider_id: Some("google".to_owned()),
        ..query("ws")
    };
    let rows = store.list_credentials(&google).await.expect("list");
    assert_eq!(ids(&rows), ["a1", "a3"]);

    let google_all = CredentialQuery {
        include_disconnected: true,
        ..google
    };
    let rows = store.list_credentials(&google_all).await.expect("list");
    assert_eq!(ids(&rows), ["a1", "a3", "a4"]);

    let other = store
        .list_credentials(&query("ws-other"))
        .await
        .expect("list");
    assert_eq!(ids(&other), ["b1"]);
    let none = store
        .list_credentials(&query("ws-none"))
        .await
        .expect("list");
    assert!(none.is_empty());
}

async fn keyset_pagination_walks_every_row_once_in_id_order(store: Arc<dyn Store>) {
    // Inserted out of order, two providers, plus rows that must never show up.
    let mut expected = Vec::new();
    for n in [7, 3, 11, 1, 9, 5, 10, 2, 8, 4, 6] {
        let id = format!("c{n:02}");
        let provider = if n % 2 == 0 { "github" } else { "google" };
        let row = credential(&id, "ws", provider, &format!("sub-{n}"));
        store.insert_credential(&row, &[]).await.expect("insert");
        expected.push(id);
    }
    expected.sort();
    store
        .insert_credential(&credential("c00", "ws-other", "google", "x"), &[])
        .await
        .expect("insert other workspace");
    store
        .insert_credential(&credential("c99", "ws", "google", "gone"), &[])
        .await
        .expect("insert");
    disconnect(&*store, "c99").await;

    for limit in [1, 3, 4, 11, 50] {
        let mut seen = Vec::new();
        let mut after_id = None;
        loop {
            let page = store
                .list_credentials(&CredentialQuery {
                    after_id: after_id.clone(),
                    limit,
                    ..query("ws")
                })
                .await
                .expect("page");
            assert!(page.len() <= limit as usize);
            let Some(last) = page.last() else { break };
            after_id = Some(last.id.clone());
            seen.extend(page.into_iter().map(|r| r.id));
        }
        assert_eq!(seen, expected, "limit {limit}");
    }

    // Pagination combines with the provider filter.
    let mut seen = Vec::new();
    let mut after_id = None;
    loop {
        let page = store
            .list_credentials(&CredentialQuery {
                provider_id: Some("github".to_owned()),
                after_id: after_id.clone(),
                limit: 2,
                ..query("ws")
            })
            .await
            .expect("page");
        let Some(last) = page.last() else { break };
        after_id = Some(last.id.clone());
        seen.extend(page.into_iter().map(|r| r.id));
    }
    assert_eq!(seen, ["c02", "c04", "c06", "c08", "c10"]);

    let zero = CredentialQuery {
        limit: 0,
        ..query("ws")
    };
    assert!(
        store
            .list_credentials(&zero)
            .await
            .expect("list")
            .is_empty()
    );
}

async fn update_writes_mutable_columns_and_bumps_version(store: Arc<dyn Store>) {
    let original = credential("c1", "ws", "google", "sub-1");
    store
        .insert_credential(&original, &[])
        .await
        .expect("insert");

    let wanted = CredentialRow {
        account_subject: "sub-1b".to_owned(),
        account_label: "renamed@example.com".to_owned(),
        display_name: "Renamed".to_owned(),
        description: "new description".to_owned(),
        scopes: "openid".to_owned(),
        status: "NEEDS_RECONNECT".to_owned(),
        status_reason: Some("invalid_grant".to_owned()),
        updated_at: 1_700_000_100_000,
        last_used_at: None,
        last_refreshed_at: Some(1_700_000_100_001),
        access_expires_at: None,
        next_refresh_at: Some(1_700_000_100_002),
        refresh_token_expires_at: None,
        has_refresh_token: false,
        sealed: Some(SealedColumns {
            ciphertext: vec![9; 40],
            dek_wrapped: vec![8; 60],
            dek_key_id: "local:k2".to_owned(),
            dek_key_version: 4,
        }),
        ..original.clone()
    };
    // Columns the update must not touch, even if the caller passes other values.
    let attempt = CredentialRow {
        workspace_id: "ws-hijack".to_owned(),
        provider_id: "github".to_owned(),
        created_by: "mallory".to_owned(),
        created_at: 1,
        row_version: 99,
        lease: LeaseColumns {
            holder: Some("replica-z".to_owned()),
            fence: 1000,
            expires_at: None,
        },
        ..wanted.clone()
    };
    let stored = store.update_credential(&attempt, 1).await.expect("update");
    let expected = CredentialRow {
        row_version: 2,
        ..wanted
    };
    assert_eq!(stored, expected);
    assert_eq!(must_get(&*store, "c1").await, expected);

    let again = CredentialRow {
        display_name: "Third".to_owned(),
        ..stored
    };
    let stored = store.update_credential(&again, 2).await.expect("update 2");
    assert_eq!(stored.row_version, 3);
    assert_eq!(stored.display_name, "Third");
    assert_eq!(must_get(&*store, "c1").await, stored);
}

async fn stale_update_conflicts_and_leaves_row_unchanged(store: Arc<dyn Store>) {
    let original = credential("c1", "ws", "google", "sub-1");
    store
        .insert_credential(&original, &[])
        .await
        .expect("insert");
    let first = CredentialRow {
        display_name: "first writer".to_owned(),
        ..original.clone()
    };
    let stored = store.update_credential(&first, 1).await.expect("update");

    let late = CredentialRow {
        display_name: "late writer".to_owned(),
        sealed: None,
        ..original.clone()
    };
    for expected_version in [1, 3, 0, -1] {
        let err = store
            .update_credential(&late, expected_version)
            .await
            .expect_err("stale");
        assert!(
            matches!(err, StoreError::VersionConflict { expected } if expected == expected_version),
            "got {err:?}"
        );
    }
    assert_eq!(must_get(&*store, "c1").await, stored);
}

async fn update_of_unknown_id_is_not_found(store: Arc<dyn Store>) {
    let ghost = credential("ghost", "ws", "google", "sub-1");
    let err = store
        .update_credential(&ghost, 1)
        .await
        .expect_err("unknown");
    assert!(matches!(err, StoreError::NotFound), "got {err:?}");
    assert_eq!(store.get_credential("ghost").await.expect("get"), None);
}

async fn update_can_clear_sealed_tokens(store: Arc<dyn Store>) {
    let original = credential("c1", "ws", "google", "sub-1");
    store
        .insert_credential(&original, &[])
        .await
        .expect("insert");
    let wiped = CredentialRow {
        sealed: None,
        has_refresh_token: false,
        ..original.clone()
    };
    let stored = store.update_credential(&wiped, 1).await.expect("wipe");
    assert_eq!(stored.sealed, None);
    assert!(!stored.has_refresh_token);
    // A half-NULL bundle would fail to decode, so None here means all four columns are NULL.
    assert_eq!(must_get(&*store, "c1").await.sealed, None);

    let resealed = CredentialRow {
        sealed: original.sealed.clone(),
        has_refresh_token: true,
        ..stored
    };
    let stored = store.update_credential(&resealed, 2).await.expect("reseal");
    assert_eq!(stored.sealed, original.sealed);
    assert!(stored.has_refresh_token);
}

async fn update_into_an_active_twin_is_rejected(store: Arc<dyn Store>) {
    store
        .insert_credential(&credential("c1", "ws", "google", "sub-1"), &[])
        .await
        .expect("insert");
    let disconnected = disconnect(&*store, "c1").await;
    store
        .insert_credential(&credential("c2", "ws", "google", "sub-1"), &[])
        .await
        .expect("reconnect as new credential");

    // Reviving c1 would make two live credentials for one account.
    let revive = CredentialRow {
        status: "ACTIVE".to_owned(),
        status_reason: None,
        ..disconnected.clone()
    };
    let err = store
        .update_credential(&revive, disconnected.row_version)
        .await
        .expect_err("twin");
    assert!(
        matches!(&err, StoreError::Duplicate(what) if what == "credential account"),
        "got {err:?}"
    );
    assert_eq!(must_get(&*store, "c1").await, disconnected);
}

async fn members_upsert_get_list_delete(store: Arc<dyn Store>) {
    store
        .insert_credential(
            &credential("c1", "ws", "google", "sub-1"),
            &[member("c1", "admin@example.com", "ADMIN")],
        )
        .await
        .expect("insert");
    store
        .insert_credential(&credential("c2", "ws", "google", "sub-2"), &[])
        .await
        .expect("insert");

    let invited = member("c1", "carol@example.com", "MEMBER");
    store.upsert_member(&invited).await.expect("upsert new");
    assert_eq!(
        store
            .get_member("c1", "carol@example.com")
            .await
            .expect("get"),
        Some(invited.clone())
    );
    // Same email on another credential is a different member.
    assert_eq!(
        store
            .get_member("c2", "carol@example.com")
            .await
            .expect("get"),
        None
    );

    let accepted = MemberRow {
        user_id: Some("user-carol".to_owned()),
        role: "ADMIN".to_owned(),
        state: "ACTIVE".to_owned(),
        invited_by: "user-9".to_owned(),
        updated_at: 1_700_000_500_000,
        ..invited.clone()
    };
    store
        .upsert_member(&accepted)
        .await
        .expect("upsert replace");
    assert_eq!(
        store
            .get_member("c1", "carol@example.com")
            .await
            .expect("get"),
        Some(accepted.clone())
    );

    let bob = member("c1", "bob@example.com", "MEMBER");
    store.upsert_member(&bob).await.expect("upsert bob");
    let listed = store.list_members("c1").await.expect("list");
    assert_eq!(
        listed,
        [
            member("c1", "admin@example.com", "ADMIN"),
            bob.clone(),
            accepted.clone()
        ]
    );
    assert!(store.list_members("c2").await.expect("list").is_empty());

    assert!(
        store
            .delete_member("c1", "bob@example.com")
            .await
            .expect("delete")
    );
    assert!(
        !store
            .delete_member("c1", "bob@example.com")
            .await
            .expect("delete again")
    );
    assert!(
        !store
            .delete_member("c2", "carol@example.com")
            .await
            .expect("delete other")
    );
    assert_eq!(
        store
            .get_member("c1", "bob@example.com")
            .await
            .expect("get"),
        None
    );
    assert_eq!(store.list_members("c1").await.expect("list").len(), 2);

    let bad_role = MemberRow {
        role: "OWNER".to_owned(),
        ..member("c1", "dave@example.com", "MEMBER")
    };
    assert!(matches!(
        store.upsert_member(&bad_role).await,
        Err(StoreError::Database(_))
    ));
}

async fn member_of_unknown_credential_is_not_found(store: Arc<dyn Store>) {
    let orphan = member("ghost", "a@example.com", "ADMIN");
    let err = store.upsert_member(&orphan).await.expect_err("orphan");
    assert!(matches!(err, StoreError::NotFound), "got {err:?}");
    assert!(store.list_members("ghost").await.expect("list").is_empty());
}

async fn audit_append_returns_increasing_ids(store: Arc<dyn Store>) {
    let event = |n: i64, credential_id: Option<&str>| NewAuditEvent {
        at: 1_700_000_000_000 + n,
        service: "web-backend".to_owned(),
        actor: (n % 2 == 0).then(|| format!("user-{n}")),
        action: "credential.rename".to_owned(),
        credential_id: credential_id.map(str::to_owned),
        outcome: "OK".to_owned(),
        detail: (n % 3 == 0).then(|| "detail".to_owned()),
    };
    let events: Vec<_> = (0..6)
        .map(|n| event(n, if n % 2 == 0 { Some("c1") } else { None }))
        .collect();
    let mut ids = Vec::new();
    for e in &events {
        ids.push(store.append_audit(e).await.expect("append"));
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids {ids:?}");

    let all = store.list_audit(None, 0, 100).await.expect("list");
    assert_eq!(all.len(), events.len());
    for ((row, e), id) in all.iter().zip(&events).zip(&ids) {
        assert_eq!(row.id, *id);
        assert_eq!(row.at, e.at);
        assert_eq!(row.service, e.service);
        assert_eq!(row.actor, e.actor);
        assert_eq!(row.action, e.action);
        assert_eq!(row.credential_id, e.credential_id);
        assert_eq!(row.outcome, e.outcome);
        assert_eq!(row.detail, e.detail);
    }

    let for_c1 = store.list_audit(Some("c1"), 0, 100).await.expect("list");
    let c1_ids: Vec<i64> = for_c1.iter().map(|r| r.id).collect();
    assert_eq!(c1_ids, [ids[0], ids[2], ids[4]]);
    let page = store.list_audit(Some("c1"), ids[0], 1).await.expect("page");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].id, ids[2]);
    let tail = store.list_audit(None, ids[3], 100).await.expect("tail");
    assert_eq!(tail.iter().map(|r| r.id).collect::<Vec<_>>(), ids[4..]);
}

async fn key_usage_counts_sealed_credentials_per_key_version(store: Arc<dyn Store>) {
    assert!(store.key_usage().await.expect("empty").is_empty());
    let sealed_with = |id: &str, key_id: &str, version: i64| CredentialRow {
        sealed: Some(SealedColumns {
            dek_key_id: key_id.to_owned(),
            dek_key_version: version,
            ..credential("x", "ws", "google", "x")
                .sealed
                .expect("fixture is sealed")
        }),
        ..credential(id, "ws", "google", &format!("sub-{id}"))
    };
    for row in [
        sealed_with("c3", "k1", 1),
        sealed_with("c1", "k1", 1),
        sealed_with("c2", "k1", 2),
        sealed_with("c4", "k0", 5),
        bare_credential("c5", "ws", "google", "sub-c5"),
    ] {
        store.insert_credential(&row, &[]).await.expect("insert");
    }
    let usage = |key_id: &str, key_version: i64, credentials: i64, sample: &str| KeyUsage {
        key_id: key_id.to_owned(),
        key_version,
        credentials,
        sample_credential_id: sample.to_owned(),
    };
    assert_eq!(
        store.key_usage().await.expect("usage"),
        [
            usage("k0", 5, 1, "c4"),
            usage("k1", 1, 2, "c1"),
            usage("k1", 2, 1, "c2"),
        ]
    );
    // Disconnecting wipes the tokens: the key is no longer in use by that credential.
    disconnect(&*store, "c4").await;
    assert_eq!(
        store.key_usage().await.expect("usage"),
        [usage("k1", 1, 2, "c1"), usage("k1", 2, 1, "c2")]
    );
}

async fn errors_do_not_echo_bound_values(store: Arc<dyn Store>) {
    const SECRET: &str = "s3cr3t-value-1f0e";
    // A CHECK violation on a bound value.
    let bad_status = CredentialRow {
        status: SECRET.to_owned(),
        ..credential("c1", "ws", "google", "sub-1")
    };
    let err = store
        .insert_credential(&bad_status, &[])
        .await
        .expect_err("check");
    assert!(matches!(err, StoreError::Database(_)), "got {err:?}");
    assert!(!format!("{err} {err:?}").contains(SECRET), "leaked: {err}");

    // A unique violation whose key is the bound value.
    let row = credential(SECRET, "ws", "google", "sub-1");
    store.insert_credential(&row, &[]).await.expect("insert");
    let again = credential(SECRET, "ws", "google", "sub-2");
    let err = store.insert_credential(&again, &[]).await.expect_err("dup");
    assert!(!format!("{err} {err:?}").contains(SECRET), "leaked: {err}");

    // Debug of a row shows sealed lengths, never bytes.
    let sealed = SealedColumns {
        ciphertext: b"refresh-token-bytes".to_vec(),
        dek_wrapped: vec![1, 2, 3],
        dek_key_id: "k".to_owned(),
        dek_key_version: 1,
    };
    let shown = format!("{sealed:?}");
    assert!(shown.contains("ciphertext_len: 19"), "{shown}");
    assert!(
        !shown.contains("refresh-token") && !shown.contains("[1, 2, 3]"),
        "{shown}"
    );
}

async fn concurrent_updates_have_exactly_one_winner(store: Arc<dyn Store>) {
    let original = credential("c1", "ws", "google", "sub-1");
    store
        .insert_credential(&original, &[])
        .await
        .expect("insert");

    const RACERS: usize = 10;
    let start = Arc::new(tokio::sync::Barrier::new(RACERS));
    let mut tasks = Vec::new();
    for n in 0..RACERS {
        let store = Arc::clone(&store);
        let start = Arc::clone(&start);
        let row = CredentialRow {
            display_name: format!("writer {n}"),
            ..original.clone()
        };
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            store.update_credential(&row, 1).await
        }));
    }
    let mut winners = Vec::new();
    let mut conflicts = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(row) => winners.push(row),
            Err(StoreError::VersionConflict { expected: 1 }) => conflicts += 1,
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners {winners:?}");
    assert_eq!(conflicts, RACERS - 1);
    let stored = must_get(&*store, "c1").await;
    assert_eq!(stored.row_version, 2);
    assert_eq!(stored, winners[0]);
}

// ---- opening -------------------------------------------------------------------------------

#[tokio::test]
async fn open_rejects_an_unknown_scheme_without_echoing_the_url() {
    let err = cb_store::open("mysql://user:hunter2@db/x", 1)
        .await
        .err()
        .expect("mysql is not supported");
    assert!(matches!(err, StoreError::Database(_)), "got {err:?}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[tokio::test]
async fn sqlite_accepts_both_url_forms_and_memory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let nested = dir.path().join("a/b/c.db");
    for url in [
        format!("sqlite:{}", dir.path().join("plain.db").display()),
        format!("sqlite://{}", nested.display()),
        "sqlite::memory:".to_owned(),
    ] {
        let store = cb_store::open(&url, 4).await.expect("open");
        store.migrate().await.expect("migrate");
        let row = credential("c1", "ws", "google", "sub-1");
        store.insert_credential(&row, &[]).await.expect("insert");
        // In memory, every pooled connection must see the same database.
        for _ in 0..4 {
            assert_eq!(must_get(&*store, "c1").await, row, "{url}");
        }
    }
    assert!(nested.exists(), "parent directories are created");
}

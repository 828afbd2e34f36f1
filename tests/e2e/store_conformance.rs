//! The store conformance suite: every test body runs on SQLite and on PostgreSQL.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cb_store::{
    AuditQuery, AuditRow, ChangeEvent, ConnectSessionRow, CredentialQuery, CredentialRow,
    DeliveryAttempt, EventQuery, HealthColumns, KeyUsage, LeaseColumns, MemberChange, MemberRow,
    NewAuditEvent, NewCredentialEvent, OAuthAppRow, OAuthAppSecretRow, RefreshFailure,
    RefreshIntent, RunGrantRow, SealedColumns, SecretKeyUsage, SecretKind, Store, StoreError,
    UsageRecord, WebhookEndpointRow, WebhookSecretRow, WrappedDekRow, run_grant_change_id,
};
use tokio::sync::broadcast;

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
    count_credentials_by_status_covers_every_workspace,
    list_by_status_filters_workspace_and_pages,
    keyset_pagination_walks_every_row_once_in_id_order,
    update_writes_mutable_columns_and_bumps_version,
    stale_update_conflicts_and_leaves_row_unchanged,
    update_of_unknown_id_is_not_found,
    update_can_clear_sealed_tokens,
    update_into_an_active_twin_is_rejected,
    update_never_moves_last_used_at_backwards,
    members_upsert_get_list_delete,
    member_of_unknown_credential_is_not_found,
    audit_append_returns_increasing_ids,
    audit_batch_appends_every_event_in_order,
    audit_query_filters_each_column,
    audit_paging_walks_newest_first_once,
    audit_prune_deletes_only_older_events,
    key_usage_counts_sealed_credentials_per_key_version,
    dek_rows_not_on_key_pages_through_other_keys_only,
    rewrap_dek_swaps_only_the_data_key_while_unchanged,
    errors_do_not_echo_bound_values,
    concurrent_updates_have_exactly_one_winner,
    last_admin_cannot_be_demoted_or_deleted,
    invited_admin_does_not_count,
    racing_admins_cannot_remove_each_other,
    member_writes_are_conditional,
    concurrent_adds_of_one_email_have_exactly_one_winner,
    concurrent_accepts_have_exactly_one_winner,
    set_role_racing_accept_keeps_both,
    lease_has_one_holder_at_a_time,
    expired_lease_is_taken_over_and_fences_out_the_old_holder,
    complete_refresh_keeps_a_concurrent_rename,
    disconnect_fences_out_an_inflight_refresh,
    release_needs_the_current_fence,
    lease_on_the_database_clock_is_renewed_and_keeps_the_intent,
    due_for_refresh_is_ordered_limited_and_active_only,
    claim_due_refreshes_leases_a_batch_and_skips_held_leases,
    record_usage_keeps_the_latest_use_without_a_version_bump,
    concurrent_usage_batches_do_not_deadlock,
    writes_are_announced_to_subscribers,
    connect_session_round_trips_every_column,
    duplicate_connect_session_is_rejected,
    half_sealed_pkce_verifier_is_rejected,
    connect_session_is_consumed_once,
    expired_connect_session_cannot_be_consumed,
    concurrent_consumers_have_exactly_one_winner,
    prune_connect_sessions_deletes_only_expired,
    run_grant_round_trips_by_hash_and_id,
    duplicate_run_grant_is_rejected,
    run_grant_is_revoked_once_and_announced,
    prune_run_grants_deletes_only_expired,
    oauth_app_round_trips_and_holds_its_secrets,
    oauth_app_update_is_optimistic_and_delete_takes_the_secrets,
    secret_deks_page_count_and_rewrap_like_credential_deks,
    credential_records_its_oauth_app,
    refresh_failure_counts_and_keeps_since_without_a_version_bump,
    events_are_written_with_their_change_and_read_by_cursor,
    concurrent_event_writers_are_read_in_cursor_order_without_gaps,
    disabling_a_webhook_endpoint_writes_one_workspace_event,
    api_webhook_endpoints_are_managed_and_configured_ones_are_not,
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
        health: HealthColumns {
            health: "PROVIDER_OUTAGE".to_owned(),
            cause: Some("provider temporarily unavailable: HTTP 503".to_owned()),
            since: Some(1_700_000_000_004),
            failures: 2,
            error_code: Some("temporarily_unavailable".to_owned()),
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
        health: HealthColumns::default(),
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

/// Inserts `row` with `members`.
async fn insert_with(store: &dyn Store, row: &CredentialRow, members: &[MemberRow]) {
    store
        .insert_credential(row, members)
        .await
        .unwrap_or_else(|e| panic!("insert {}: {e}", row.id));
}

/// Adds or replaces member `m`; `why` names the step.
async fn upsert(store: &dyn Store, m: MemberRow, why: &str) {
    store
        .change_member(&MemberChange::Upsert(m))
        .await
        .unwrap_or_else(|e| panic!("{why}: {e}"));
}

/// Inserts `row` without members.
async fn insert(store: &dyn Store, row: &CredentialRow) {
    store
        .insert_credential(row, &[])
        .await
        .unwrap_or_else(|e| panic!("insert {}: {e}", row.id));
}

/// Inserting `row` without members fails: the error.
async fn insert_err(store: &dyn Store, row: &CredentialRow) -> StoreError {
    store
        .insert_credential(row, &[])
        .await
        .expect_err(&format!("insert {} must fail", row.id))
}

async fn find(
    store: &dyn Store,
    workspace_id: &str,
    provider_id: &str,
    subject: &str,
) -> Option<CredentialRow> {
    store
        .find_credential_by_account(workspace_id, provider_id, subject)
        .await
        .expect("find_credential_by_account")
}

async fn member_of(store: &dyn Store, credential_id: &str, email: &str) -> Option<MemberRow> {
    store
        .get_member(credential_id, email)
        .await
        .expect("get_member")
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
    insert(&*store, &row).await;
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
    insert(&*store, &bare).await;
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
    insert(&*store, &first).await;
    let twin_id = credential("c1", "ws-other", "github", "sub-other");
    let err = insert_err(&*store, &twin_id).await;
    assert_duplicate(&err, "credential id");
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
    assert_duplicate(&err, "member email");
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
    insert(&*store, &first).await;

    // NEEDS_RECONNECT still counts as live.
    let twin = bare_credential("c2", "ws", "google", "sub-1");
    let err = insert_err(&*store, &twin).await;
    assert_duplicate(&err, "credential account");

    // The same account in another workspace or under another provider is a different key.
    insert(&*store, &credential("c3", "ws-2", "google", "sub-1")).await;
    insert(&*store, &credential("c4", "ws", "github", "sub-1")).await;

    disconnect(&*store, "c1").await;
    insert(&*store, &twin).await;
    // Several disconnected twins may pile up.
    disconnect(&*store, "c2").await;
    insert(&*store, &credential("c5", "ws", "google", "sub-1")).await;
}

async fn find_credential_by_account_ignores_disconnected(store: Arc<dyn Store>) {
    let first = credential("c1", "ws", "google", "sub-1");
    insert(&*store, &first).await;
    let found = find(&*store, "ws", "google", "sub-1").await;
    assert_eq!(found, Some(first));
    for (ws, provider, subject) in [
        ("ws-2", "google", "sub-1"),
        ("ws", "github", "sub-1"),
        ("ws", "google", "sub-2"),
    ] {
        let found = find(&*store, ws, provider, subject).await;
        assert_eq!(found, None, "{ws}/{provider}/{subject}");
    }

    disconnect(&*store, "c1").await;
    let found = find(&*store, "ws", "google", "sub-1").await;
    assert_eq!(found, None);

    let second = credential("c2", "ws", "google", "sub-1");
    insert(&*store, &second).await;
    let found = find(&*store, "ws", "google", "sub-1").await;
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
        insert(&*store, &row).await;
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

async fn count_credentials_by_status_covers_every_workspace(store: Arc<dyn Store>) {
    assert!(
        store
            .count_credentials_by_status()
            .await
            .expect("count empty")
            .is_empty()
    );
    for row in [
        credential("a1", "ws", "google", "s1"),
        credential("a2", "ws", "github", "s2"),
        bare_credential("a3", "ws", "google", "s3"),
        credential("a4", "ws", "google", "s4"),
        bare_credential("b1", "ws-other", "google", "s1"),
        credential("b2", "ws-other", "google", "s2"),
    ] {
        insert(&*store, &row).await;
    }
    disconnect(&*store, "a4").await;
    let counts = store
        .count_credentials_by_status()
        .await
        .expect("count_credentials_by_status");
    assert_eq!(
        counts,
        [
            ("ACTIVE".to_owned(), 3),
            ("DISCONNECTED".to_owned(), 1),
            ("NEEDS_RECONNECT".to_owned(), 2),
        ]
    );
}

async fn list_by_status_filters_workspace_and_pages(store: Arc<dyn Store>) {
    use cb_store::StatusQuery;
    for row in [
        bare_credential("c3", "ws", "google", "s3"),
        credential("c1", "ws", "google", "s1"),
        bare_credential("c2", "ws", "github", "s2"),
        bare_credential("d1", "ws-other", "google", "s1"),
        credential("d2", "ws-other", "google", "s2"),
    ] {
        insert(&*store, &row).await;
    }
    let needs = |workspace: Option<&str>, after: Option<&str>, limit| StatusQuery {
        status: "NEEDS_RECONNECT".to_owned(),
        workspace_id: workspace.map(str::to_owned),
        after_id: after.map(str::to_owned),
        limit,
        ..StatusQuery::default()
    };
    let all = store
        .list_credentials_by_status(&needs(None, None, 100))
        .await
        .expect("list");
    assert_eq!(ids(&all), ["c2", "c3", "d1"]);
    assert_eq!(all[0], must_get(&*store, "c2").await);
    let ws = store
        .list_credentials_by_status(&needs(Some("ws"), None, 100))
        .await
        .expect("list ws");
    assert_eq!(ids(&ws), ["c2", "c3"]);
    let first = store
        .list_credentials_by_status(&needs(None, None, 2))
        .await
        .expect("page 1");
    assert_eq!(ids(&first), ["c2", "c3"]);
    let second = store
        .list_credentials_by_status(&needs(None, Some("c3"), 2))
        .await
        .expect("page 2");
    assert_eq!(ids(&second), ["d1"]);
    let in_ws_after = store
        .list_credentials_by_status(&needs(Some("ws"), Some("c2"), 2))
        .await
        .expect("ws page 2");
    assert_eq!(ids(&in_ws_after), ["c3"]);
    assert!(
        store
            .list_credentials_by_status(&needs(None, None, 0))
            .await
            .expect("limit 0")
            .is_empty()
    );
    let active = store
        .list_credentials_by_status(&StatusQuery {
            status: "ACTIVE".to_owned(),
            limit: 10,
            ..StatusQuery::default()
        })
        .await
        .expect("active");
    assert_eq!(ids(&active), ["c1", "d2"]);
}

async fn keyset_pagination_walks_every_row_once_in_id_order(store: Arc<dyn Store>) {
    // Inserted out of order, two providers, plus rows that must never show up.
    let mut expected = Vec::new();
    for n in [7, 3, 11, 1, 9, 5, 10, 2, 8, 4, 6] {
        let id = format!("c{n:02}");
        let provider = if n % 2 == 0 { "github" } else { "google" };
        let row = credential(&id, "ws", provider, &format!("sub-{n}"));
        insert(&*store, &row).await;
        expected.push(id);
    }
    expected.sort();
    insert(&*store, &credential("c00", "ws-other", "google", "x")).await;
    insert(&*store, &credential("c99", "ws", "google", "gone")).await;
    disconnect(&*store, "c99").await;

    for limit in [1, 3, 4, 11, 50] {
        let mut seen = Vec::new();
        let mut after_id = None;
        for _page in 0..100 {
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
    for _page in 0..100 {
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
    insert(&*store, &original).await;

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
    let kept = original.sealed.clone().expect("sealed");
    let expected = CredentialRow {
        row_version: 2,
        // last_used_at never moves backwards: None keeps the stored use.
        last_used_at: original.last_used_at,
        // The data key is the credential's for life: new ciphertext, same wrapped DEK.
        sealed: Some(SealedColumns {
            ciphertext: vec![9; 40],
            ..kept
        }),
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
    insert(&*store, &original).await;
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
    insert(&*store, &original).await;
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
    insert(&*store, &credential("c1", "ws", "google", "sub-1")).await;
    let disconnected = disconnect(&*store, "c1").await;
    insert(&*store, &credential("c2", "ws", "google", "sub-1")).await;

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
    assert_duplicate(&err, "credential account");
    assert_eq!(must_get(&*store, "c1").await, disconnected);
}

async fn update_never_moves_last_used_at_backwards(store: Arc<dyn Store>) {
    let bare = bare_credential("c1", "ws", "google", "sub-1");
    insert(&*store, &bare).await;
    let mut current = must_get(&*store, "c1").await;
    assert_eq!(current.last_used_at, None);
    // (given, stored afterwards): the later of the stored and the given value; NULL on either
    // side keeps the other one.
    for (given, want) in [
        (None, None),
        (Some(100), Some(100)),
        (None, Some(100)),
        (Some(50), Some(100)),
        (Some(100), Some(100)),
        (Some(101), Some(101)),
    ] {
        let row = CredentialRow {
            last_used_at: given,
            description: format!("given {given:?}"),
            ..current.clone()
        };
        let stored = store
            .update_credential(&row, current.row_version)
            .await
            .expect("update");
        assert_eq!(stored.last_used_at, want, "given {given:?}");
        assert_eq!(stored.description, row.description, "the rest is written");
        assert_eq!(stored.row_version, current.row_version + 1);
        assert_eq!(must_get(&*store, "c1").await, stored);
        current = stored;
    }

    // A rename built from a read taken before a background usage flush keeps that use.
    let read = must_get(&*store, "c1").await;
    store
        .record_usage(&[UsageRecord {
            credential_id: "c1".to_owned(),
            workflow_id: None,
            at: 5_000,
        }])
        .await
        .expect("record usage");
    let rename = CredentialRow {
        display_name: "Renamed from an old read".to_owned(),
        ..read.clone()
    };
    assert_eq!(rename.last_used_at, Some(101));
    let stored = store
        .update_credential(&rename, read.row_version)
        .await
        .expect("rename");
    assert_eq!(
        stored,
        CredentialRow {
            last_used_at: Some(5_000),
            row_version: read.row_version + 1,
            ..rename
        }
    );
    assert_eq!(must_get(&*store, "c1").await, stored);
}

async fn members_upsert_get_list_delete(store: Arc<dyn Store>) {
    insert_with(
        &*store,
        &credential("c1", "ws", "google", "sub-1"),
        &[member("c1", "admin@example.com", "ADMIN")],
    )
    .await;
    insert(&*store, &credential("c2", "ws", "google", "sub-2")).await;

    let invited = member("c1", "carol@example.com", "MEMBER");
    upsert(&*store, invited.clone(), "upsert new").await;
    assert_eq!(
        member_of(&*store, "c1", "carol@example.com").await,
        Some(invited.clone())
    );
    // Same email on another credential is a different member.
    assert_eq!(member_of(&*store, "c2", "carol@example.com").await, None);

    let accepted = MemberRow {
        user_id: Some("user-carol".to_owned()),
        role: "ADMIN".to_owned(),
        state: "ACTIVE".to_owned(),
        invited_by: "user-9".to_owned(),
        updated_at: 1_700_000_500_000,
        ..invited.clone()
    };
    upsert(&*store, accepted.clone(), "upsert replace").await;
    assert_eq!(
        member_of(&*store, "c1", "carol@example.com").await,
        Some(accepted.clone())
    );

    let bob = member("c1", "bob@example.com", "MEMBER");
    upsert(&*store, bob.clone(), "upsert bob").await;
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

    store
        .change_member(&delete_change("c1", "bob@example.com"))
        .await
        .expect("delete");
    assert!(matches!(
        store
            .change_member(&delete_change("c1", "bob@example.com"))
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .change_member(&delete_change("c2", "carol@example.com"))
            .await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(member_of(&*store, "c1", "bob@example.com").await, None);
    assert_eq!(store.list_members("c1").await.expect("list").len(), 2);

    let bad_role = MemberRow {
        role: "OWNER".to_owned(),
        ..member("c1", "dave@example.com", "MEMBER")
    };
    assert!(matches!(
        store.change_member(&MemberChange::Upsert(bad_role)).await,
        Err(StoreError::Database(_))
    ));
}

async fn member_of_unknown_credential_is_not_found(store: Arc<dyn Store>) {
    let orphan = member("ghost", "a@example.com", "ADMIN");
    let err = store
        .change_member(&MemberChange::Upsert(orphan))
        .await
        .expect_err("orphan");
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

    // Newest first.
    let all = store.list_audit(&audit_query(100)).await.expect("list");
    assert_eq!(all.len(), events.len());
    for ((row, e), id) in all.iter().rev().zip(&events).zip(&ids) {
        assert_eq!(row.id, *id);
        assert_eq!(row.at, e.at);
        assert_eq!(row.service, e.service);
        assert_eq!(row.actor, e.actor);
        assert_eq!(row.action, e.action);
        assert_eq!(row.credential_id, e.credential_id);
        assert_eq!(row.outcome, e.outcome);
        assert_eq!(row.detail, e.detail);
    }

    let for_c1 = store
        .list_audit(&AuditQuery {
            credential_id: Some("c1".to_owned()),
            ..audit_query(100)
        })
        .await
        .expect("list");
    assert_eq!(audit_ids(&for_c1), [ids[4], ids[2], ids[0]]);
    let page = store
        .list_audit(&AuditQuery {
            credential_id: Some("c1".to_owned()),
            before_id: Some(ids[4]),
            ..audit_query(1)
        })
        .await
        .expect("page");
    assert_eq!(audit_ids(&page), [ids[2]]);
    assert!(
        store
            .list_audit(&audit_query(0))
            .await
            .expect("limit 0")
            .is_empty()
    );
}

/// 30 events spread over 3 actors (one of them none), 4 actions, 3 credentials (one none)
/// and 10 ms steps; returns them with their ids, oldest first.
async fn seed_audit(store: &dyn Store) -> Vec<(i64, NewAuditEvent)> {
    let actors = [Some("alice"), Some("bob"), None];
    let actions = [
        "credential.rename",
        "member.add",
        "token.issue",
        "credential.disconnect",
    ];
    let credentials = [Some("c1"), Some("c2"), None];
    let mut out = Vec::new();
    for n in 0..30usize {
        let e = NewAuditEvent {
            at: 1_000 + 10 * n as i64,
            service: "web-backend".to_owned(),
            actor: actors[n % 3].map(str::to_owned),
            action: actions[n % 4].to_owned(),
            credential_id: credentials[(n / 2) % 3].map(str::to_owned),
            outcome: if n % 5 == 0 { "ROLE_REQUIRED" } else { "OK" }.to_owned(),
            detail: None,
        };
        let id = store.append_audit(&e).await.expect("append");
        out.push((id, e));
    }
    out
}

fn audit_query(limit: u32) -> AuditQuery {
    AuditQuery {
        limit,
        ..AuditQuery::default()
    }
}

fn audit_ids(rows: &[AuditRow]) -> Vec<i64> {
    rows.iter().map(|r| r.id).collect()
}

/// What `list_audit(q)` must return, computed in memory: matching ids, newest first.
fn expected_audit(events: &[(i64, NewAuditEvent)], q: &AuditQuery) -> Vec<i64> {
    let mut ids: Vec<i64> = events
        .iter()
        .filter(|(id, e)| {
            q.credential_id
                .as_ref()
                .is_none_or(|c| e.credential_id.as_ref() == Some(c))
                && q.actor.as_ref().is_none_or(|a| e.actor.as_ref() == Some(a))
                && q.action.as_ref().is_none_or(|a| &e.action == a)
                && q.outcome.as_ref().is_none_or(|o| &e.outcome == o)
                && q.start_at.is_none_or(|t| e.at >= t)
                && q.end_at.is_none_or(|t| e.at < t)
                && q.before_id.is_none_or(|b| *id < b)
        })
        .map(|(id, _)| *id)
        .collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    ids.truncate(q.limit as usize);
    ids
}

async fn audit_batch_appends_every_event_in_order(store: Arc<dyn Store>) {
    let events: Vec<NewAuditEvent> = (0..250)
        .map(|n| NewAuditEvent {
            at: 1_700_000_000_000 + n,
            service: "executor".to_owned(),
            actor: Some(format!("user-{n}")),
            action: "token.issue".to_owned(),
            credential_id: Some("c1".to_owned()),
            outcome: "ok".to_owned(),
            detail: None,
        })
        .collect();
    store.append_audit_batch(&events).await.expect("batch");
    store.append_audit_batch(&[]).await.expect("empty batch");
    let rows = store.list_audit(&audit_query(1000)).await.expect("list");
    assert_eq!(rows.len(), events.len());
    // Newest first, so reversed they follow the batch order.
    for (row, e) in rows.iter().rev().zip(&events) {
        assert_eq!((row.at, row.actor.as_deref()), (e.at, e.actor.as_deref()));
    }
}

async fn audit_query_filters_each_column(store: Arc<dyn Store>) {
    let events = seed_audit(&*store).await;
    let middle_id = events[17].0;
    let some = |s: &str| Some(s.to_owned());
    let queries = [
        audit_query(100),
        AuditQuery {
            credential_id: some("c1"),
            ..audit_query(100)
        },
        AuditQuery {
            credential_id: some("nope"),
            ..audit_query(100)
        },
        AuditQuery {
            actor: some("alice"),
            ..audit_query(100)
        },
        AuditQuery {
            actor: some("bob"),
            ..audit_query(100)
        },
        AuditQuery {
            action: some("member.add"),
            ..audit_query(100)
        },
        AuditQuery {
            action: some("token.issue"),
            ..audit_query(100)
        },
        // Inclusive start, exclusive end.
        AuditQuery {
            start_at: Some(1_050),
            ..audit_query(100)
        },
        AuditQuery {
            end_at: Some(1_050),
            ..audit_query(100)
        },
        AuditQuery {
            start_at: Some(1_050),
            end_at: Some(1_120),
            ..audit_query(100)
        },
        AuditQuery {
            before_id: Some(middle_id),
            ..audit_query(100)
        },
        AuditQuery {
            credential_id: some("c2"),
            actor: some("alice"),
            ..audit_query(100)
        },
        AuditQuery {
            credential_id: some("c1"),
            actor: some("bob"),
            action: some("credential.rename"),
            outcome: some("OK"),
            start_at: Some(1_000),
            end_at: Some(1_300),
            before_id: Some(events[29].0 + 1),
            limit: 100,
        },
        AuditQuery {
            outcome: some("ROLE_REQUIRED"),
            ..audit_query(100)
        },
        AuditQuery {
            credential_id: some("c1"),
            action: some("token.issue"),
            outcome: some("OK"),
            ..audit_query(100)
        },
        AuditQuery {
            actor: some("alice"),
            action: some("member.add"),
            limit: 2,
            ..AuditQuery::default()
        },
        AuditQuery {
            action: some("token.issue"),
            ..audit_query(0)
        },
    ];
    let mut non_trivial = 0;
    for q in &queries {
        let got = audit_ids(&store.list_audit(q).await.expect("list"));
        let want = expected_audit(&events, q);
        assert_eq!(got, want, "{q:?}");
        if !want.is_empty() && want.len() < events.len() {
            non_trivial += 1;
        }
    }
    // The fixture really exercises the filters (they select some rows, not all or none).
    assert!(non_trivial >= 10, "only {non_trivial} selective queries");

    // A value that looks like SQL is only ever a value.
    let injected = AuditQuery {
        actor: some("alice' OR '1'='1"),
        ..audit_query(100)
    };
    assert!(store.list_audit(&injected).await.expect("list").is_empty());
}

async fn audit_paging_walks_newest_first_once(store: Arc<dyn Store>) {
    let events = seed_audit(&*store).await;
    for filter in [
        audit_query(0),
        AuditQuery {
            actor: Some("alice".to_owned()),
            ..audit_query(0)
        },
        AuditQuery {
            credential_id: Some("c2".to_owned()),
            start_at: Some(1_020),
            ..audit_query(0)
        },
    ] {
        let all = expected_audit(
            &events,
            &AuditQuery {
                limit: 1_000,
                ..filter.clone()
            },
        );
        assert!(!all.is_empty());
        for limit in [1, 4, 7, 30, 100] {
            let mut seen = Vec::new();
            let mut before_id = None;
            for _page in 0..1000 {
                let page = store
                    .list_audit(&AuditQuery {
                        before_id,
                        limit,
                        ..filter.clone()
                    })
                    .await
                    .expect("page");
                assert!(page.len() <= limit as usize);
                let Some(last) = page.last() else { break };
                before_id = Some(last.id);
                seen.extend(audit_ids(&page));
            }
            assert_eq!(seen, all, "limit {limit} {filter:?}");
        }
    }
}

async fn audit_prune_deletes_only_older_events(store: Arc<dyn Store>) {
    assert_eq!(store.prune_audit(i64::MAX).await.expect("prune empty"), 0);
    let events = seed_audit(&*store).await;
    // Events at 1000, 1010, ..., 1290: ten of them are strictly older than 1100.
    assert_eq!(store.prune_audit(1_100).await.expect("prune"), 10);
    let left = audit_ids(&store.list_audit(&audit_query(100)).await.expect("list"));
    let want: Vec<i64> = events[10..].iter().rev().map(|(id, _)| *id).collect();
    assert_eq!(left, want);
    assert_eq!(store.prune_audit(1_100).await.expect("prune again"), 0);
    assert_eq!(store.prune_audit(0).await.expect("prune nothing"), 0);
    assert_eq!(store.prune_audit(1_291).await.expect("prune all"), 20);
    assert!(
        store
            .list_audit(&audit_query(100))
            .await
            .expect("list")
            .is_empty()
    );
    // Ids keep increasing after a prune.
    let next = store.append_audit(&events[0].1).await.expect("append");
    assert!(next > events[29].0);
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
        insert(&*store, &row).await;
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

/// A credential sealed under (key_id, version) with wrapped bytes naming its id.
fn sealed_under(id: &str, key_id: &str, version: i64) -> CredentialRow {
    CredentialRow {
        sealed: Some(SealedColumns {
            dek_wrapped: format!("wrapped-{id}-{key_id}-{version}").into_bytes(),
            dek_key_id: key_id.to_owned(),
            dek_key_version: version,
            ..credential("x", "ws", "google", "x")
                .sealed
                .expect("fixture is sealed")
        }),
        ..credential(id, &format!("ws-{id}"), "google", &format!("sub-{id}"))
    }
}

fn dek_row(row: &CredentialRow) -> WrappedDekRow {
    let s = row.sealed.as_ref().expect("sealed");
    WrappedDekRow {
        credential_id: row.id.clone(),
        workspace_id: row.workspace_id.clone(),
        dek_wrapped: s.dek_wrapped.clone(),
        dek_key_id: s.dek_key_id.clone(),
        dek_key_version: s.dek_key_version,
    }
}

async fn dek_rows_not_on_key_pages_through_other_keys_only(store: Arc<dyn Store>) {
    let rows = [
        sealed_under("c3", "k1", 1),
        sealed_under("c1", "k1", 1),
        sealed_under("c2", "k1", 2),
        sealed_under("c4", "k0", 5),
        sealed_under("c6", "k1", 2),
    ];
    for row in &rows {
        insert(&*store, row).await;
    }
    insert(&*store, &bare_credential("c5", "ws", "google", "sub-c5")).await;
    let page = |after: Option<&'static str>, limit| {
        let store = store.clone();
        async move {
            store
                .dek_rows_not_on_key("k1", 2, after, limit)
                .await
                .expect("dek rows")
        }
    };
    // k1 version 2 is current: version 1 of the same key and other keys are listed; rows
    // without tokens are not.
    let first = page(None, 2).await;
    assert_eq!(first, [dek_row(&rows[1]), dek_row(&rows[0])]);
    assert_eq!(first[0].workspace_id, "ws-c1");
    assert_eq!(page(Some("c3"), 2).await, [dek_row(&rows[3])]);
    assert!(page(Some("c4"), 2).await.is_empty());
    assert!(page(None, 0).await.is_empty());
    // Other current key: everything sealed except its own rows.
    let ids: Vec<String> = store
        .dek_rows_not_on_key("k0", 5, None, 100)
        .await
        .expect("dek rows")
        .into_iter()
        .map(|r| r.credential_id)
        .collect();
    assert_eq!(ids, ["c1", "c2", "c3", "c6"]);
    // Disconnected rows hold no data key.
    disconnect(&*store, "c1").await;
    assert_eq!(page(None, 1).await, [dek_row(&rows[0])]);
}

async fn rewrap_dek_swaps_only_the_data_key_while_unchanged(store: Arc<dyn Store>) {
    let original = sealed_under("c1", "k1", 1);
    insert(&*store, &original).await;
    let old = dek_row(&original);

    assert!(
        store
            .rewrap_dek(&old, b"rewrapped-under-k2", "k2", 0)
            .await
            .expect("rewrap")
    );
    let after = must_get(&*store, "c1").await;
    let expected = CredentialRow {
        sealed: Some(SealedColumns {
            dek_wrapped: b"rewrapped-under-k2".to_vec(),
            dek_key_id: "k2".to_owned(),
            dek_key_version: 0,
            ciphertext: original.sealed.clone().expect("sealed").ciphertext,
        }),
        ..original.clone()
    };
    // Ciphertext, row_version, updated_at and the lease are untouched.
    assert_eq!(after, expected);
    assert!(
        store
            .dek_rows_not_on_key("k2", 0, None, 10)
            .await
            .expect("dek rows")
            .is_empty()
    );

    // The same swap again no longer matches: the row holds the new wrapping.
    assert!(
        !store
            .rewrap_dek(&old, b"another", "k3", 0)
            .await
            .expect("stale rewrap")
    );
    assert_eq!(must_get(&*store, "c1").await, expected);

    // A writer that read the row before the re-wrap cannot put the old wrapping back: its
    // update keeps the re-wrapped DEK (and changes the rest).
    let stale_writer = CredentialRow {
        display_name: "renamed from a stale read".to_owned(),
        ..original.clone()
    };
    let stored = store
        .update_credential(&stale_writer, after.row_version)
        .await
        .expect("update");
    assert_eq!(stored.display_name, "renamed from a stale read");
    assert_eq!(
        stored.sealed, expected.sealed,
        "the re-wrapped DEK survives"
    );
    assert!(
        store
            .dek_rows_not_on_key("k2", 0, None, 10)
            .await
            .expect("dek rows")
            .is_empty()
    );

    // A disconnected credential has no data key left to re-wrap.
    let live = dek_row(&stored);
    disconnect(&*store, "c1").await;
    assert!(
        !store
            .rewrap_dek(&live, b"late", "k3", 0)
            .await
            .expect("rewrap after disconnect")
    );
    assert_eq!(must_get(&*store, "c1").await.sealed, None);
    // Unknown credential.
    let unknown = WrappedDekRow {
        credential_id: "nope".to_owned(),
        ..live
    };
    assert!(
        !store
            .rewrap_dek(&unknown, b"late", "k3", 0)
            .await
            .expect("unknown")
    );
}

async fn errors_do_not_echo_bound_values(store: Arc<dyn Store>) {
    const SECRET: &str = "s3cr3t-value-1f0e";
    // A CHECK violation on a bound value.
    let bad_status = CredentialRow {
        status: SECRET.to_owned(),
        ..credential("c1", "ws", "google", "sub-1")
    };
    let err = insert_err(&*store, &bad_status).await;
    assert!(matches!(err, StoreError::Database(_)), "got {err:?}");
    assert!(!format!("{err} {err:?}").contains(SECRET), "leaked: {err}");

    // A unique violation whose key is the bound value.
    let row = credential(SECRET, "ws", "google", "sub-1");
    insert(&*store, &row).await;
    let again = credential(SECRET, "ws", "google", "sub-2");
    let err = insert_err(&*store, &again).await;
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
    insert(&*store, &original).await;

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

// ---- members with the last-admin guard -----------------------------------------------------

fn active(m: MemberRow) -> MemberRow {
    MemberRow {
        state: "ACTIVE".to_owned(),
        user_id: Some(format!("user-{}", m.email)),
        ..m
    }
}

fn delete_change(credential_id: &str, email: &str) -> MemberChange {
    MemberChange::Delete {
        credential_id: credential_id.to_owned(),
        email: email.to_owned(),
    }
}

fn is_last_admin(r: &Result<(), StoreError>) -> bool {
    matches!(r, Err(StoreError::LastAdmin))
}

async fn last_admin_cannot_be_demoted_or_deleted(store: Arc<dyn Store>) {
    let admin = active(member("c1", "admin@example.com", "ADMIN"));
    let bob = active(member("c1", "bob@example.com", "MEMBER"));
    insert_with(
        &*store,
        &credential("c1", "ws", "google", "sub-1"),
        &[admin.clone(), bob.clone()],
    )
    .await;
    let before = store.list_members("c1").await.expect("list");

    let demoted = MemberRow {
        role: "MEMBER".to_owned(),
        ..admin.clone()
    };
    let uninvited = MemberRow {
        state: "INVITED".to_owned(),
        ..admin.clone()
    };
    for change in [
        MemberChange::Upsert(demoted),
        MemberChange::Upsert(uninvited),
        delete_change("c1", "admin@example.com"),
    ] {
        let r = store.change_member(&change).await;
        assert!(is_last_admin(&r), "{change:?}: {r:?}");
        assert_eq!(store.list_members("c1").await.expect("list"), before);
    }
    let err = store
        .change_member(&delete_change("c1", "admin@example.com"))
        .await
        .expect_err("last admin");
    assert_eq!(
        err.to_string(),
        "the credential must keep at least one active admin"
    );

    // Changes that keep an active admin go through.
    store
        .change_member(&delete_change("c1", "bob@example.com"))
        .await
        .expect("delete a member");
    let carol = active(member("c1", "carol@example.com", "ADMIN"));
    upsert(&*store, carol.clone(), "second admin").await;
    let demoted = MemberRow {
        role: "MEMBER".to_owned(),
        updated_at: 1_700_000_900_000,
        ..admin.clone()
    };
    upsert(&*store, demoted.clone(), "demote, carol stays admin").await;
    assert_eq!(
        store.list_members("c1").await.expect("list"),
        [demoted, carol]
    );

    // Missing member, unknown credential.
    for change in [
        delete_change("c1", "nobody@example.com"),
        delete_change("ghost", "admin@example.com"),
        MemberChange::Upsert(active(member("ghost", "a@example.com", "ADMIN"))),
    ] {
        let r = store.change_member(&change).await;
        assert!(matches!(r, Err(StoreError::NotFound)), "{change:?}: {r:?}");
    }
    assert!(store.list_members("ghost").await.expect("list").is_empty());
}

async fn invited_admin_does_not_count(store: Arc<dyn Store>) {
    let admin = active(member("c1", "admin@example.com", "ADMIN"));
    let invited = member("c1", "invited@example.com", "ADMIN");
    insert_with(
        &*store,
        &credential("c1", "ws", "google", "sub-1"),
        &[admin.clone(), invited.clone()],
    )
    .await;
    assert!(is_last_admin(
        &store
            .change_member(&delete_change("c1", "admin@example.com"))
            .await
    ));
    // Once the invitation is accepted, the first admin may leave.
    upsert(&*store, active(invited.clone()), "accept").await;
    store
        .change_member(&delete_change("c1", "admin@example.com"))
        .await
        .expect("delete first admin");
    assert_eq!(
        store.list_members("c1").await.expect("list"),
        [active(invited)]
    );

    // A credential that never had an active admin (e.g. imported) can still be repaired.
    insert_with(
        &*store,
        &credential("c2", "ws", "google", "sub-2"),
        &[member("c2", "pending@example.com", "ADMIN")],
    )
    .await;
    upsert(
        &*store,
        member("c2", "bob@example.com", "MEMBER"),
        "add a member without any active admin",
    )
    .await;
    upsert(
        &*store,
        active(member("c2", "root@example.com", "ADMIN")),
        "first active admin",
    )
    .await;
}

async fn racing_admins_cannot_remove_each_other(store: Arc<dyn Store>) {
    for round in 0..10 {
        let id = format!("c{round}");
        let a = active(member(&id, "a@example.com", "ADMIN"));
        let b = active(member(&id, "b@example.com", "ADMIN"));
        insert_with(
            &*store,
            &credential(&id, "ws", "google", &format!("sub-{round}")),
            &[a, b],
        )
        .await;
        let start = Arc::new(tokio::sync::Barrier::new(2));
        // Each admin removes the other one at the same moment.
        let tasks: Vec<_> = [("a@example.com"), ("b@example.com")]
            .into_iter()
            .map(|victim| {
                let store = Arc::clone(&store);
                let start = Arc::clone(&start);
                let change = delete_change(&id, victim);
                tokio::spawn(async move {
                    start.wait().await;
                    store.change_member(&change).await
                })
            })
            .collect();
        let mut ok = 0;
        let mut last_admin = 0;
        for task in tasks {
            match task.await.expect("task") {
                Ok(()) => ok += 1,
                Err(StoreError::LastAdmin) => last_admin += 1,
                Err(other) => panic!("round {round}: unexpected {other:?}"),
            }
        }
        assert_eq!((ok, last_admin), (1, 1), "round {round}");
        let left = store.list_members(&id).await.expect("list");
        assert_eq!(left.len(), 1, "round {round}: {left:?}");
        assert_eq!(
            (left[0].role.as_str(), left[0].state.as_str()),
            ("ADMIN", "ACTIVE")
        );
    }
}

fn accept_change(credential_id: &str, email: &str, user_id: &str, at: i64) -> MemberChange {
    MemberChange::Accept {
        credential_id: credential_id.to_owned(),
        email: email.to_owned(),
        user_id: user_id.to_owned(),
        updated_at: at,
    }
}

fn set_role_change(credential_id: &str, email: &str, role: &str, at: i64) -> MemberChange {
    MemberChange::SetRole {
        credential_id: credential_id.to_owned(),
        email: email.to_owned(),
        role: role.to_owned(),
        updated_at: at,
    }
}

async fn must_get_member(store: &dyn Store, credential_id: &str, email: &str) -> MemberRow {
    store
        .get_member(credential_id, email)
        .await
        .expect("get_member")
        .unwrap_or_else(|| panic!("member {email} missing"))
}

async fn member_writes_are_conditional(store: Arc<dyn Store>) {
    let admin = active(member("c1", "admin@example.com", "ADMIN"));
    store
        .insert_credential(
            &credential("c1", "ws", "google", "sub-1"),
            std::slice::from_ref(&admin),
        )
        .await
        .expect("insert");

    // Add never replaces.
    let carol = member("c1", "carol@example.com", "MEMBER");
    store
        .change_member(&MemberChange::Add(carol.clone()))
        .await
        .expect("add");
    let again = MemberRow {
        role: "ADMIN".to_owned(),
        invited_by: "user-2".to_owned(),
        ..carol.clone()
    };
    let r = store.change_member(&MemberChange::Add(again)).await;
    assert!(
        matches!(&r, Err(StoreError::Duplicate(what)) if what == "member email"),
        "{r:?}"
    );
    assert_eq!(
        must_get_member(&*store, "c1", "carol@example.com").await,
        carol
    );

    // Accept binds the user once; a second accept finds no invitation and changes nothing.
    store
        .change_member(&accept_change(
            "c1",
            "carol@example.com",
            "user-carol",
            T0 + 1,
        ))
        .await
        .expect("accept");
    let accepted = MemberRow {
        state: "ACTIVE".to_owned(),
        user_id: Some("user-carol".to_owned()),
        updated_at: T0 + 1,
        ..carol.clone()
    };
    assert_eq!(
        must_get_member(&*store, "c1", "carol@example.com").await,
        accepted
    );
    let r = store
        .change_member(&accept_change(
            "c1",
            "carol@example.com",
            "user-eve",
            T0 + 2,
        ))
        .await;
    assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
    assert_eq!(
        must_get_member(&*store, "c1", "carol@example.com").await,
        accepted
    );

    // SetRole writes the role and the time, nothing else.
    store
        .change_member(&set_role_change("c1", "carol@example.com", "ADMIN", T0 + 3))
        .await
        .expect("set role");
    let promoted = MemberRow {
        role: "ADMIN".to_owned(),
        updated_at: T0 + 3,
        ..accepted
    };
    assert_eq!(
        must_get_member(&*store, "c1", "carol@example.com").await,
        promoted
    );

    // The last-admin guard holds for SetRole too.
    store
        .change_member(&delete_change("c1", "carol@example.com"))
        .await
        .expect("delete carol");
    let r = store
        .change_member(&set_role_change(
            "c1",
            "admin@example.com",
            "MEMBER",
            T0 + 4,
        ))
        .await;
    assert!(is_last_admin(&r), "{r:?}");
    assert_eq!(
        must_get_member(&*store, "c1", "admin@example.com").await,
        admin
    );

    // Missing member or credential.
    for change in [
        accept_change("c1", "nobody@example.com", "user-x", T0),
        set_role_change("c1", "nobody@example.com", "ADMIN", T0),
        accept_change("ghost", "admin@example.com", "user-x", T0),
        set_role_change("ghost", "admin@example.com", "ADMIN", T0),
        MemberChange::Add(member("ghost", "a@example.com", "MEMBER")),
    ] {
        let r = store.change_member(&change).await;
        assert!(matches!(r, Err(StoreError::NotFound)), "{change:?}: {r:?}");
    }
    assert_eq!(store.list_members("c1").await.expect("list"), [admin]);
}

/// Runs every change at once (all tasks pass one barrier first) and returns the results in
/// the order of `changes`.
async fn race_member_changes(
    store: &Arc<dyn Store>,
    changes: Vec<MemberChange>,
) -> Vec<Result<(), StoreError>> {
    let start = Arc::new(tokio::sync::Barrier::new(changes.len()));
    let tasks: Vec<_> = changes
        .into_iter()
        .map(|change| {
            let store = Arc::clone(store);
            let start = Arc::clone(&start);
            tokio::spawn(async move {
                start.wait().await;
                store.change_member(&change).await
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("task"));
    }
    results
}

async fn concurrent_adds_of_one_email_have_exactly_one_winner(store: Arc<dyn Store>) {
    const RACERS: usize = 10;
    insert_with_admin(&*store, "c1").await;
    for round in 0..5 {
        let email = format!("new-{round}@example.com");
        let rows: Vec<MemberRow> = (0..RACERS)
            .map(|n| MemberRow {
                invited_by: format!("user-{n}"),
                role: if n % 2 == 0 { "ADMIN" } else { "MEMBER" }.to_owned(),
                ..member("c1", &email, "MEMBER")
            })
            .collect();
        let results = race_member_changes(
            &store,
            rows.iter().cloned().map(MemberChange::Add).collect(),
        )
        .await;
        let winners: Vec<usize> = (0..RACERS).filter(|&n| results[n].is_ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for (n, r) in results.iter().enumerate() {
            assert!(
                r.is_ok()
                    || matches!(r, Err(StoreError::Duplicate(what)) if what == "member email"),
                "round {round} racer {n}: {r:?}"
            );
        }
        assert_eq!(
            must_get_member(&*store, "c1", &email).await,
            rows[winners[0]],
            "round {round}: the winner's row is stored whole"
        );
    }
    assert_eq!(store.list_members("c1").await.expect("list").len(), 6);
}

async fn concurrent_accepts_have_exactly_one_winner(store: Arc<dyn Store>) {
    const RACERS: usize = 10;
    let invited = member("c1", "bob@example.com", "MEMBER");
    insert_with(
        &*store,
        &credential("c1", "ws", "google", "sub-1"),
        &[
            active(member("c1", "admin@example.com", "ADMIN")),
            invited.clone(),
        ],
    )
    .await;
    let at = |n: usize| T0 + i64::try_from(n).expect("small");
    let results = race_member_changes(
        &store,
        (0..RACERS)
            .map(|n| accept_change("c1", "bob@example.com", &format!("user-{n}"), at(n)))
            .collect(),
    )
    .await;
    let winners: Vec<usize> = (0..RACERS).filter(|&n| results[n].is_ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|r| r.is_ok() || matches!(r, Err(StoreError::NotFound))),
        "{results:?}"
    );
    let w = winners[0];
    assert_eq!(
        must_get_member(&*store, "c1", "bob@example.com").await,
        MemberRow {
            state: "ACTIVE".to_owned(),
            user_id: Some(format!("user-{w}")),
            updated_at: at(w),
            ..invited
        }
    );
}

async fn set_role_racing_accept_keeps_both(store: Arc<dyn Store>) {
    insert_with_admin(&*store, "c1").await;
    for round in 0..10 {
        let email = format!("racer-{round}@example.com");
        store
            .change_member(&MemberChange::Add(member("c1", &email, "MEMBER")))
            .await
            .expect("invite");
        // Both orders must end ACTIVE with the new role: neither write undoes the other.
        let mut changes = vec![
            accept_change("c1", &email, "user-racer", T0 + 1),
            set_role_change("c1", &email, "ADMIN", T0 + 2),
        ];
        if round % 2 == 1 {
            changes.reverse();
        }
        let results = race_member_changes(&store, changes).await;
        assert!(
            results.iter().all(Result::is_ok),
            "round {round}: {results:?}"
        );
        let m = must_get_member(&*store, "c1", &email).await;
        assert_eq!(
            (m.state.as_str(), m.role.as_str(), m.user_id.as_deref()),
            ("ACTIVE", "ADMIN", Some("user-racer")),
            "round {round}"
        );
    }
}

// ---- refresh lease -------------------------------------------------------------------------

const T0: i64 = 1_700_000_000_000;
const LEASE_MS: i64 = 30_000;

/// An ACTIVE credential without a lease.
fn leaseless(id: &str) -> CredentialRow {
    CredentialRow {
        lease: LeaseColumns::default(),
        ..credential(id, "ws", "google", &format!("sub-{id}"))
    }
}

/// `err` says a unique key was taken: `what`.
fn assert_duplicate(err: &StoreError, what: &str) {
    assert!(
        matches!(err, StoreError::Duplicate(taken) if taken == what),
        "got {err:?}"
    );
}

/// Inserts credential `id` (`sub-1`) with its active Admin `admin@example.com`.
async fn insert_with_admin(store: &dyn Store, id: &str) {
    let admin = active(member(id, "admin@example.com", "ADMIN"));
    insert_with(store, &credential(id, "ws", "google", "sub-1"), &[admin]).await;
}

/// Inserts [`leaseless`] `id` without members.
async fn insert_leaseless(store: &dyn Store, id: &str) {
    insert(store, &leaseless(id)).await;
}

/// `replica-a` takes the free lease of `id` (at `T0`, for `LEASE_MS`).
async fn lease_a(store: &dyn Store, id: &str) -> CredentialRow {
    store
        .acquire_refresh_lease(id, "replica-a", T0, T0 + LEASE_MS)
        .await
        .expect("acquire")
        .expect("lease")
}

/// `racers` replicas try to take the free lease of `id` at the same moment; the rows of those
/// that got it.
async fn race_for_lease(store: &Arc<dyn Store>, id: &str, racers: usize) -> Vec<CredentialRow> {
    let start = Arc::new(tokio::sync::Barrier::new(racers));
    let tasks: Vec<_> = (0..racers)
        .map(|n| {
            let store = Arc::clone(store);
            let start = Arc::clone(&start);
            let id = id.to_owned();
            tokio::spawn(async move {
                start.wait().await;
                store
                    .acquire_refresh_lease(&id, &format!("replica-{n}"), T0, T0 + LEASE_MS)
                    .await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        if let Some(row) = task.await.expect("task").expect("acquire") {
            winners.push(row);
        }
    }
    winners
}

/// The refresh-scan seed: `d1` and `d3` due at 100, `d2` at 50, `d4` at 200, `d5` at 10 but
/// `NEEDS_RECONNECT`, then `more`.
async fn seed_due(store: &dyn Store, more: &[(&str, Option<i64>)]) {
    let common = [
        ("d1", Some(100)),
        ("d2", Some(50)),
        ("d3", Some(100)),
        ("d4", Some(200)),
        ("d5", Some(10)),
    ];
    insert_due(store, &common).await;
    insert_due(store, more).await;
}

/// Inserts [`leaseless`] credentials due for refresh at the given times; `d5` is
/// `NEEDS_RECONNECT` (never due, however early).
async fn insert_due(store: &dyn Store, due: &[(&str, Option<i64>)]) {
    for &(id, next) in due {
        let mut row = CredentialRow {
            next_refresh_at: next,
            ..leaseless(id)
        };
        if id == "d5" {
            row.status = "NEEDS_RECONNECT".to_owned();
        }
        insert(store, &row).await;
    }
}

/// What a refresh writes: new tokens and timestamps, built on `base` (possibly stale).
fn refreshed(base: &CredentialRow, n: u8) -> CredentialRow {
    CredentialRow {
        sealed: Some(SealedColumns {
            ciphertext: vec![n; 48],
            dek_wrapped: vec![n.wrapping_add(1); 32],
            dek_key_id: "local:k9".to_owned(),
            dek_key_version: 9,
        }),
        has_refresh_token: n.is_multiple_of(2),
        access_expires_at: Some(T0 + 3_600_000),
        refresh_token_expires_at: None,
        next_refresh_at: Some(T0 + 3_000_000),
        last_refreshed_at: Some(T0 + 1),
        status: "ACTIVE".to_owned(),
        status_reason: None,
        updated_at: T0 + 2,
        ..base.clone()
    }
}

/// The wall clock, for the leases judged by the database clock (SQLite: by this one).
fn wall_ms() -> i64 {
    use cb_broker::clock::Clock;
    cb_broker::clock::SystemClock.now().as_millis()
}

async fn lease_on_the_database_clock_is_renewed_and_keeps_the_intent(store: Arc<dyn Store>) {
    insert_leaseless(&*store, "c1").await;
    let now = wall_ms();
    let taken = store
        .take_refresh_lease("c1", "replica-a", LEASE_MS, now)
        .await
        .expect("take")
        .expect("free lease is taken");
    assert_eq!(taken.lease.holder.as_deref(), Some("replica-a"));
    let fence = taken.lease.fence;
    assert!(!store.refresh_lease_lapsed("c1", now).await.expect("lapsed"));
    // A replica whose clock runs a minute ahead: on PostgreSQL the database clock judges, so it
    // cannot take a live lease; SQLite has one process and one clock.
    if store.backend() == "postgres" {
        let skewed = now + 60_000;
        let taken_over = store
            .take_refresh_lease("c1", "replica-b", LEASE_MS, skewed)
            .await
            .expect("take");
        assert!(taken_over.is_none(), "a skewed clock took a live lease");
    }
    assert!(
        store
            .renew_refresh_lease("c1", fence, LEASE_MS, now)
            .await
            .expect("renew")
    );
    assert!(
        !store
            .renew_refresh_lease("c1", fence + 1, LEASE_MS, now)
            .await
            .expect("renew")
    );
    let intent = RefreshIntent {
        holder: "replica-a".into(),
        fence,
        started_at: now,
        token_sha256: "ab".repeat(32),
    };
    assert!(
        store
            .record_refresh_intent("c1", &intent)
            .await
            .expect("intent")
    );
    assert_eq!(
        store.refresh_intent("c1").await.expect("read"),
        Some(intent.clone())
    );
    // A renewal into the past lets the lease lapse: another holder takes it, fencing A out.
    assert!(
        store
            .renew_refresh_lease("c1", fence, -1_000, now)
            .await
            .expect("renew")
    );
    assert!(store.refresh_lease_lapsed("c1", now).await.expect("lapsed"));
    let b = store
        .take_refresh_lease("c1", "replica-b", LEASE_MS, now)
        .await
        .expect("take")
        .expect("a lapsed lease is taken over");
    assert_eq!(b.lease.fence, fence + 1);
    let stale = RefreshIntent {
        fence,
        ..intent.clone()
    };
    assert!(
        !store
            .record_refresh_intent("c1", &stale)
            .await
            .expect("intent"),
        "only the holder records an intent"
    );
    // The interrupted intent stays for the new holder to find; releasing keeps it too.
    assert_eq!(
        store.refresh_intent("c1").await.expect("read"),
        Some(intent)
    );
    assert!(
        store
            .release_refresh_lease("c1", b.lease.fence)
            .await
            .expect("release")
    );
    assert!(store.refresh_intent("c1").await.expect("read").is_some());
    // Writing a refresh result clears it.
    let c = store
        .take_refresh_lease("c1", "replica-b", LEASE_MS, now)
        .await
        .expect("take")
        .expect("free");
    store
        .complete_refresh(&refreshed(&c, 1), c.lease.fence)
        .await
        .expect("complete");
    assert_eq!(store.refresh_intent("c1").await.expect("read"), None);
    assert!(store.refresh_intent("ghost").await.expect("read").is_none());
    assert!(
        store
            .refresh_lease_lapsed("ghost", now)
            .await
            .expect("lapsed")
    );
}

async fn lease_has_one_holder_at_a_time(store: Arc<dyn Store>) {
    insert_leaseless(&*store, "c1").await;
    let won = lease_a(&*store, "c1").await;
    assert_eq!(
        won.lease,
        LeaseColumns {
            holder: Some("replica-a".to_owned()),
            fence: 1,
            expires_at: Some(T0 + LEASE_MS),
        }
    );
    // Everything else is as stored; acquiring is not an edit.
    assert_eq!(
        won,
        CredentialRow {
            lease: won.lease.clone(),
            ..leaseless("c1")
        }
    );
    assert_eq!(must_get(&*store, "c1").await, won);
    for holder in ["replica-b", "replica-a"] {
        assert_eq!(
            store
                .acquire_refresh_lease("c1", holder, T0 + LEASE_MS - 1, T0 + 2 * LEASE_MS)
                .await
                .expect("acquire"),
            None,
            "{holder}"
        );
    }

    // Concurrent acquirers on a free lease: exactly one wins.
    insert_leaseless(&*store, "c2").await;
    let winners = race_for_lease(&store, "c2", 8).await;
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(winners[0].lease.fence, 1);
    assert_eq!(must_get(&*store, "c2").await, winners[0]);

    // Only ACTIVE credentials can be leased; unknown ids are None.
    insert(&*store, &bare_credential("c3", "ws", "google", "sub-c3")).await;
    assert_eq!(
        store
            .acquire_refresh_lease("c3", "replica-a", T0, T0 + LEASE_MS)
            .await
            .expect("acquire"),
        None
    );
    assert_eq!(
        store
            .acquire_refresh_lease("ghost", "replica-a", T0, T0 + LEASE_MS)
            .await
            .expect("acquire"),
        None
    );
}

async fn expired_lease_is_taken_over_and_fences_out_the_old_holder(store: Arc<dyn Store>) {
    // The fixture's lease (replica-a, fence 7) lapses at 1_700_000_010_000.
    let original = credential("c1", "ws", "google", "sub-1");
    insert(&*store, &original).await;
    let expiry = original.lease.expires_at.expect("fixture lease");
    assert_eq!(
        store
            .acquire_refresh_lease("c1", "replica-b", expiry - 1, expiry + LEASE_MS)
            .await
            .expect("acquire"),
        None
    );
    // Expiry is inclusive: at `now == lease_expires_at` the lease is free.
    let taken = store
        .acquire_refresh_lease("c1", "replica-b", expiry, expiry + LEASE_MS)
        .await
        .expect("acquire")
        .expect("lapsed lease is taken over");
    assert_eq!(
        taken.lease,
        LeaseColumns {
            holder: Some("replica-b".to_owned()),
            fence: 8,
            expires_at: Some(expiry + LEASE_MS),
        }
    );

    // The old holder (fence 7) comes back late: nothing it writes lands.
    let late = refreshed(&original, 1);
    let err = store
        .complete_refresh(&late, 7)
        .await
        .expect_err("stale fence");
    assert!(matches!(err, StoreError::LeaseLost), "got {err:?}");
    assert_eq!(
        err.to_string(),
        "the refresh lease was lost (expired and taken over, or the credential was disconnected)"
    );
    assert!(!store.release_refresh_lease("c1", 7).await.expect("release"));
    assert_eq!(must_get(&*store, "c1").await, taken);

    // The new holder completes; the lease is released, the fence stays.
    let done = store
        .complete_refresh(&refreshed(&taken, 2), 8)
        .await
        .expect("complete");
    assert_eq!(
        done.lease,
        LeaseColumns {
            holder: None,
            fence: 8,
            expires_at: None,
        }
    );
    assert_eq!(done.row_version, taken.row_version + 1);
    assert_eq!(must_get(&*store, "c1").await, done);
    // Completing twice is refused: the lease is no longer held.
    let err = store
        .complete_refresh(&refreshed(&taken, 3), 8)
        .await
        .expect_err("second completion");
    assert!(matches!(err, StoreError::LeaseLost), "got {err:?}");
    assert_eq!(must_get(&*store, "c1").await, done);
    // Unknown credential: also LeaseLost.
    let err = store
        .complete_refresh(&refreshed(&leaseless("ghost"), 1), 1)
        .await
        .expect_err("ghost");
    assert!(matches!(err, StoreError::LeaseLost), "got {err:?}");
}

async fn complete_refresh_keeps_a_concurrent_rename(store: Arc<dyn Store>) {
    insert_leaseless(&*store, "c1").await;
    let leased = lease_a(&*store, "c1").await;
    let fence = leased.lease.fence;

    // A rename lands while the provider call is in flight; it leaves the lease alone.
    let rename = CredentialRow {
        display_name: "Renamed meanwhile".to_owned(),
        description: "edited meanwhile".to_owned(),
        updated_at: T0 + 5,
        ..leased.clone()
    };
    let renamed = store
        .update_credential(&rename, leased.row_version)
        .await
        .expect("rename");
    assert_eq!(renamed.lease, leased.lease);
    assert_eq!(renamed.row_version, leased.row_version + 1);

    // The refresh result was built from the row read before the rename, and even carries
    // other values in columns a refresh does not own: those are not written.
    let result = CredentialRow {
        account_label: "stale@example.com".to_owned(),
        scopes: "stale".to_owned(),
        last_used_at: Some(1),
        row_version: 1,
        ..refreshed(&leased, 4)
    };
    let stored = store
        .complete_refresh(&result, fence)
        .await
        .expect("complete");
    // New ciphertext under the credential's own data key: the wrapping stays the stored one.
    let expected = CredentialRow {
        sealed: Some(SealedColumns {
            ciphertext: result.sealed.clone().expect("sealed").ciphertext,
            ..renamed.sealed.clone().expect("sealed")
        }),
        has_refresh_token: result.has_refresh_token,
        access_expires_at: result.access_expires_at,
        refresh_token_expires_at: result.refresh_token_expires_at,
        next_refresh_at: result.next_refresh_at,
        last_refreshed_at: result.last_refreshed_at,
        status: result.status.clone(),
        status_reason: result.status_reason.clone(),
        updated_at: result.updated_at,
        row_version: renamed.row_version + 1,
        lease: LeaseColumns {
            holder: None,
            fence,
            expires_at: None,
        },
        ..renamed.clone()
    };
    assert_eq!(stored, expected);
    assert_eq!(must_get(&*store, "c1").await, expected);

    // A refresh may also record that the grant is gone.
    let leased = lease_a(&*store, "c1").await;
    assert_eq!(leased.lease.fence, fence + 1);
    let revoked = CredentialRow {
        status: "NEEDS_RECONNECT".to_owned(),
        status_reason: Some("invalid_grant".to_owned()),
        sealed: None,
        has_refresh_token: false,
        next_refresh_at: None,
        ..leased.clone()
    };
    let stored = store
        .complete_refresh(&revoked, fence + 1)
        .await
        .expect("complete");
    assert_eq!(stored.status, "NEEDS_RECONNECT");
    assert_eq!(stored.sealed, None);
    assert_eq!(stored.lease.holder, None);
}

async fn disconnect_fences_out_an_inflight_refresh(store: Arc<dyn Store>) {
    insert_leaseless(&*store, "c1").await;
    let leased = lease_a(&*store, "c1").await;
    let disconnected = disconnect(&*store, "c1").await;
    assert_eq!(
        disconnected.lease,
        LeaseColumns {
            holder: None,
            fence: leased.lease.fence,
            expires_at: None,
        }
    );

    let err = store
        .complete_refresh(&refreshed(&leased, 5), leased.lease.fence)
        .await
        .expect_err("disconnected meanwhile");
    assert!(matches!(err, StoreError::LeaseLost), "got {err:?}");
    let stored = must_get(&*store, "c1").await;
    assert_eq!(stored, disconnected);
    assert_eq!(stored.status, "DISCONNECTED");
    assert_eq!(stored.sealed, None);
    assert!(
        !store
            .release_refresh_lease("c1", leased.lease.fence)
            .await
            .expect("release")
    );
    assert_eq!(
        store
            .acquire_refresh_lease("c1", "replica-b", T0 + LEASE_MS, T0 + 2 * LEASE_MS)
            .await
            .expect("acquire"),
        None
    );
}

async fn release_needs_the_current_fence(store: Arc<dyn Store>) {
    insert_leaseless(&*store, "c1").await;
    assert!(!store.release_refresh_lease("c1", 0).await.expect("free"));
    let leased = lease_a(&*store, "c1").await;
    let fence = leased.lease.fence;
    assert!(
        !store
            .release_refresh_lease("c1", fence - 1)
            .await
            .expect("old fence")
    );
    assert_eq!(must_get(&*store, "c1").await, leased);
    assert!(
        store
            .release_refresh_lease("c1", fence)
            .await
            .expect("release")
    );
    let released = must_get(&*store, "c1").await;
    assert_eq!(
        released,
        CredentialRow {
            lease: LeaseColumns {
                holder: None,
                fence,
                expires_at: None,
            },
            ..leased.clone()
        }
    );
    assert!(
        !store
            .release_refresh_lease("c1", fence)
            .await
            .expect("twice")
    );
    assert!(
        !store
            .release_refresh_lease("ghost", fence)
            .await
            .expect("ghost")
    );
    // Released: anyone may take it at once, with the next fence.
    let again = store
        .acquire_refresh_lease("c1", "replica-b", T0 + 1, T0 + LEASE_MS)
        .await
        .expect("acquire")
        .expect("lease");
    assert_eq!(again.lease.fence, fence + 1);
}

async fn claim_due_refreshes_leases_a_batch_and_skips_held_leases(store: Arc<dyn Store>) {
    seed_due(&*store, &[("d6", None)]).await;
    let ids = |rows: &[CredentialRow]| rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    // Another replica holds d1's lease: it is skipped, not waited on.
    store
        .take_refresh_lease("d1", "replica-b", LEASE_MS, 150)
        .await
        .expect("take")
        .expect("free");
    let claimed = store
        .claim_due_refreshes("replica-a", 150, LEASE_MS, 2)
        .await
        .expect("claim");
    assert_eq!(ids(&claimed), ["d2", "d3"]);
    for row in &claimed {
        assert_eq!(row.lease.holder.as_deref(), Some("replica-a"));
        assert_eq!(row.lease.fence, 1);
        assert_eq!(must_get(&*store, &row.id).await, *row);
    }
    let none = store
        .claim_due_refreshes("replica-c", 150, LEASE_MS, 10)
        .await
        .expect("claim");
    assert_eq!(ids(&none), Vec::<String>::new(), "held leases are skipped");
    let later = store
        .claim_due_refreshes("replica-c", 250, LEASE_MS, 10)
        .await
        .expect("claim");
    assert_eq!(ids(&later), ["d4"]);

    // Concurrent claims split the due credentials between them.
    let more: Vec<String> = (0..20).map(|n| format!("e{n:02}")).collect();
    let more: Vec<_> = more.iter().map(|id| (id.as_str(), Some(300))).collect();
    insert_due(&*store, &more).await;
    let claims: Vec<_> = (0..4)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .claim_due_refreshes(&format!("replica-{n}"), 300, LEASE_MS, 10)
                    .await
                    .expect("claim")
            })
        })
        .collect();
    let mut all = Vec::new();
    for c in claims {
        all.extend(ids(&c.await.expect("task")));
    }
    all.sort();
    let expected: Vec<_> = (0..20).map(|n| format!("e{n:02}")).collect();
    assert_eq!(all, expected, "each due credential claimed exactly once");
}

async fn due_for_refresh_is_ordered_limited_and_active_only(store: Arc<dyn Store>) {
    seed_due(
        &*store,
        &[("d6", Some(10)), ("d7", None), ("d8", Some(150))],
    )
    .await;
    disconnect(&*store, "d6").await;

    let due = |now, limit| {
        let store = Arc::clone(&store);
        async move { store.due_for_refresh(now, limit).await.expect("due") }
    };
    assert_eq!(due(150, 100).await, ["d2", "d1", "d3", "d8"]);
    assert_eq!(due(150, 2).await, ["d2", "d1"]);
    assert_eq!(due(99, 100).await, ["d2"]);
    assert_eq!(due(49, 100).await, Vec::<String>::new());
    assert_eq!(due(i64::MAX, 0).await, Vec::<String>::new());
    assert_eq!(due(i64::MAX, 100).await, ["d2", "d1", "d3", "d8", "d4"]);
    // A leased credential is still listed (acquire sorts it out); a refresh moves it on.
    let leased = lease_a(&*store, "d2").await;
    assert_eq!(due(150, 1).await, ["d2"]);
    store
        .complete_refresh(
            &CredentialRow {
                next_refresh_at: Some(1_000),
                ..leased.clone()
            },
            leased.lease.fence,
        )
        .await
        .expect("complete");
    assert_eq!(due(150, 100).await, ["d1", "d3", "d8"]);
}

// ---- usage ---------------------------------------------------------------------------------

fn usage(credential_id: &str, workflow_id: Option<&str>, at: i64) -> UsageRecord {
    UsageRecord {
        credential_id: credential_id.to_owned(),
        workflow_id: workflow_id.map(str::to_owned),
        at,
    }
}

async fn record_usage_keeps_the_latest_use_without_a_version_bump(store: Arc<dyn Store>) {
    let c1 = credential("c1", "ws", "google", "sub-1");
    let c1_used = c1.last_used_at.expect("fixture");
    let c2 = bare_credential("c2", "ws", "google", "sub-2");
    insert(&*store, &c1).await;
    insert(&*store, &c2).await;
    store.record_usage(&[]).await.expect("empty batch");

    store
        .record_usage(&[
            usage("c1", Some("wf-a"), c1_used + 10),
            usage("c1", Some("wf-b"), c1_used + 5),
            usage("ghost", Some("wf-x"), c1_used + 100),
            usage("c1", Some("wf-a"), c1_used + 20),
            usage("c1", None, c1_used + 1),
            usage("c2", None, 3),
            usage("c1", Some("wf-c"), c1_used + 5),
        ])
        .await
        .expect("record");
    let stored = must_get(&*store, "c1").await;
    assert_eq!(
        stored,
        CredentialRow {
            last_used_at: Some(c1_used + 20),
            ..c1.clone()
        },
        "only last_used_at moves; row_version stays"
    );
    assert_eq!(must_get(&*store, "c2").await.last_used_at, Some(3));
    assert_eq!(must_get(&*store, "c2").await.row_version, 1);
    assert_eq!(store.get_credential("ghost").await.expect("get"), None);

    let owned = |v: &[(&str, i64)]| -> Vec<(String, i64)> {
        v.iter().map(|(w, t)| ((*w).to_owned(), *t)).collect()
    };
    // Most recent first; ties by workflow id.
    assert_eq!(
        store.recent_workflows("c1", 10).await.expect("recent"),
        (
            owned(&[
                ("wf-a", c1_used + 20),
                ("wf-b", c1_used + 5),
                ("wf-c", c1_used + 5)
            ]),
            3
        )
    );
    assert_eq!(
        store.recent_workflows("c1", 1).await.expect("recent"),
        (owned(&[("wf-a", c1_used + 20)]), 3)
    );
    assert_eq!(
        store.recent_workflows("c1", 0).await.expect("recent"),
        (Vec::new(), 3)
    );
    assert_eq!(
        store.recent_workflows("c2", 10).await.expect("recent"),
        (Vec::new(), 0)
    );
    assert_eq!(
        store.recent_workflows("ghost", 10).await.expect("recent"),
        (Vec::new(), 0)
    );

    // An older batch (arriving late) never moves anything backwards.
    store
        .record_usage(&[
            usage("c1", Some("wf-a"), c1_used),
            usage("c1", Some("wf-b"), c1_used + 50),
            usage("c2", None, 1),
        ])
        .await
        .expect("record");
    assert_eq!(
        must_get(&*store, "c1").await.last_used_at,
        Some(c1_used + 50)
    );
    assert_eq!(must_get(&*store, "c2").await.last_used_at, Some(3));
    assert_eq!(
        store.recent_workflows("c1", 10).await.expect("recent").0,
        owned(&[
            ("wf-b", c1_used + 50),
            ("wf-a", c1_used + 20),
            ("wf-c", c1_used + 5)
        ])
    );
    assert_eq!(must_get(&*store, "c1").await.row_version, 1);
}

async fn concurrent_usage_batches_do_not_deadlock(store: Arc<dyn Store>) {
    let ids: Vec<String> = (0..6).map(|n| format!("c{n}")).collect();
    for id in &ids {
        insert_leaseless(&*store, id).await;
    }
    // Batches naming the same rows in opposite orders.
    let tasks: Vec<_> = (0..6i64)
        .map(|n| {
            let store = Arc::clone(&store);
            let mut batch: Vec<UsageRecord> =
                ids.iter().map(|id| usage(id, Some("wf"), T0 + n)).collect();
            if n % 2 == 1 {
                batch.reverse();
            }
            tokio::spawn(async move { store.record_usage(&batch).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("record");
    }
    for id in &ids {
        assert_eq!(must_get(&*store, id).await.last_used_at, Some(T0 + 5));
        assert_eq!(
            store.recent_workflows(id, 5).await.expect("recent"),
            (vec![("wf".to_owned(), T0 + 5)], 1)
        );
    }
}

// ---- change notifications ------------------------------------------------------------------

/// On PostgreSQL, waits for the listener's first `Resync`: from then on every commit is
/// announced. SQLite announces in-process from the start.
async fn wait_until_listening(store: &dyn Store, rx: &mut broadcast::Receiver<ChangeEvent>) {
    if store.backend() == "postgres" {
        let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the listener starts within 10 s")
            .expect("receive");
        assert_eq!(first, ChangeEvent::Resync);
    }
}

/// The next event, or a failure after `within`.
async fn next_event(rx: &mut broadcast::Receiver<ChangeEvent>, within: Duration) -> ChangeEvent {
    tokio::time::timeout(within, rx.recv())
        .await
        .expect("a change event in time")
        .expect("receive")
}

async fn writes_are_announced_to_subscribers(store: Arc<dyn Store>) {
    let mut rx = store.subscribe_changes();
    wait_until_listening(&*store, &mut rx).await;
    let admin = active(member("c1", "admin@example.com", "ADMIN"));

    // Announced: insert, update, member change, refresh completion.
    store
        .insert_credential(&leaseless("c1"), std::slice::from_ref(&admin))
        .await
        .expect("insert");
    let renamed = store
        .update_credential(
            &CredentialRow {
                display_name: "renamed".to_owned(),
                ..leaseless("c1")
            },
            1,
        )
        .await
        .expect("update");
    // Not announced: a failed update, a refused member change, lease operations, usage.
    store
        .update_credential(&renamed, 1)
        .await
        .expect_err("stale");
    assert!(is_last_admin(
        &store
            .change_member(&delete_change("c1", "admin@example.com"))
            .await
    ));
    upsert(
        &*store,
        member("c1", "bob@example.com", "MEMBER"),
        "add member",
    )
    .await;
    let leased = lease_a(&*store, "c1").await;
    store
        .complete_refresh(&refreshed(&leased, 1), leased.lease.fence)
        .await
        .expect("complete");
    let leased = lease_a(&*store, "c1").await;
    store
        .release_refresh_lease("c1", leased.lease.fence)
        .await
        .expect("release");
    store
        .record_usage(&[usage("c1", Some("wf"), T0)])
        .await
        .expect("usage");
    // A marker write: everything before it has been delivered when it arrives.
    insert_leaseless(&*store, "marker").await;

    let mut seen = Vec::new();
    for _event in 0..100 {
        let event = next_event(&mut rx, Duration::from_secs(2)).await;
        let done = event == ChangeEvent::Changed("marker".to_owned());
        seen.push(event);
        if done {
            break;
        }
    }
    let changed = |id: &str| ChangeEvent::Changed(id.to_owned());
    assert_eq!(
        seen,
        [
            changed("c1"),
            changed("c1"),
            changed("c1"),
            changed("c1"),
            changed("marker")
        ]
    );

    // Every subscriber gets every event; dropping the store closes the channel.
    let mut second = store.subscribe_changes();
    store
        .update_credential(
            &CredentialRow {
                description: "again".to_owned(),
                ..must_get(&*store, "c1").await
            },
            must_get(&*store, "c1").await.row_version,
        )
        .await
        .expect("update");
    assert_eq!(
        next_event(&mut rx, Duration::from_secs(2)).await,
        changed("c1")
    );
    // (A brand-new PostgreSQL subscriber shares the running listener: no extra Resync.)
    assert_eq!(
        next_event(&mut second, Duration::from_secs(2)).await,
        changed("c1")
    );
    drop(store);
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rx.recv().await {
                Err(broadcast::error::RecvError::Closed) => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the channel closes once the store is dropped"
    );
}

// ---- connect sessions ----------------------------------------------------------------------

/// A connect session with every optional column set, expiring at `expires_at`.
fn session(state_hash: &str, expires_at: i64) -> ConnectSessionRow {
    ConnectSessionRow {
        state_hash: state_hash.to_owned(),
        workspace_id: "ws".to_owned(),
        provider_id: "google".to_owned(),
        scopes: "openid email https://www.googleapis.com/auth/drive".to_owned(),
        redirect_uri: "https://app.example.com/oauth/callback?x=1&y=2".to_owned(),
        // Every byte value, including NUL and invalid UTF-8.
        pkce_verifier: Some((0..=255u8).rev().collect()),
        pkce_dek_wrapped: Some(vec![0, 255, 0, 128, 7]),
        pkce_dek_key_id: Some("local:k1".to_owned()),
        pkce_dek_key_version: Some(i64::from(u32::MAX)),
        reconnect_credential_id: Some("cred-that-may-not-exist".to_owned()),
        display_name: Some("Nightly sync".to_owned()),
        description: Some("draft description".to_owned()),
        created_by: "user-1".to_owned(),
        created_by_email: "user-1@example.com".to_owned(),
        created_at: expires_at - 600_000,
        expires_at,
        consumed_at: None,
        oauth_app_id: Some("app-1".to_owned()),
    }
}

/// A connect session with every optional column empty (no PKCE, new connection, no drafts).
fn bare_session(state_hash: &str, expires_at: i64) -> ConnectSessionRow {
    ConnectSessionRow {
        pkce_verifier: None,
        pkce_dek_wrapped: None,
        pkce_dek_key_id: None,
        pkce_dek_key_version: None,
        reconnect_credential_id: None,
        display_name: None,
        description: None,
        oauth_app_id: None,
        ..session(state_hash, expires_at)
    }
}

async fn must_get_session(store: &dyn Store, state_hash: &str) -> ConnectSessionRow {
    store
        .get_connect_session(state_hash)
        .await
        .expect("get_connect_session")
        .unwrap_or_else(|| panic!("connect session {state_hash} missing"))
}

async fn connect_session_round_trips_every_column(store: Arc<dyn Store>) {
    assert_eq!(store.get_connect_session("nope").await.expect("get"), None);
    let full = ConnectSessionRow {
        consumed_at: Some(T0 + 1),
        ..session("h-full", T0 + 600_000)
    };
    let bare = bare_session("h-bare", T0 + 600_000);
    for row in [&full, &bare] {
        store.insert_connect_session(row).await.expect("insert");
    }
    assert_eq!(must_get_session(&*store, "h-full").await, full);
    assert_eq!(must_get_session(&*store, "h-bare").await, bare);
    // Hashes are compared exactly.
    assert_eq!(
        store.get_connect_session("H-FULL").await.expect("get"),
        None
    );
    assert_eq!(
        store.get_connect_session("h-full ").await.expect("get"),
        None
    );

    // No foreign key: a reconnect session may name a credential that is gone or never was.
    assert_eq!(
        store
            .get_credential("cred-that-may-not-exist")
            .await
            .expect("get"),
        None
    );

    // Debug shows the sealed verifier's and the wrapped key's lengths, never their bytes.
    let secret = ConnectSessionRow {
        pkce_verifier: Some(b"pkce-verifier-bytes".to_vec()),
        pkce_dek_wrapped: Some(vec![1, 2, 3]),
        ..full
    };
    let shown = format!("{secret:?}");
    assert!(shown.contains("pkce_verifier_len: Some(19)"), "{shown}");
    assert!(shown.contains("pkce_dek_wrapped_len: Some(3)"), "{shown}");
    assert!(
        !shown.contains("pkce-verifier") && !shown.contains("[1, 2, 3]"),
        "{shown}"
    );
}

async fn duplicate_connect_session_is_rejected(store: Arc<dyn Store>) {
    const HASH: &str = "h-dup-6c1f0a";
    let first = session(HASH, T0 + 600_000);
    store.insert_connect_session(&first).await.expect("insert");
    let twin = ConnectSessionRow {
        workspace_id: "ws-other".to_owned(),
        created_by: "mallory".to_owned(),
        ..bare_session(HASH, T0 + 900_000)
    };
    let err = store
        .insert_connect_session(&twin)
        .await
        .expect_err("duplicate hash");
    assert_duplicate(&err, "connect session");
    assert!(!format!("{err} {err:?}").contains(HASH), "leaked: {err}");
    assert_eq!(must_get_session(&*store, HASH).await, first);
}

async fn half_sealed_pkce_verifier_is_rejected(store: Arc<dyn Store>) {
    let full = session("h", T0 + 600_000);
    let halves = [
        ConnectSessionRow {
            pkce_verifier: None,
            ..full.clone()
        },
        ConnectSessionRow {
            pkce_dek_wrapped: None,
            ..full.clone()
        },
        ConnectSessionRow {
            pkce_dek_key_id: None,
            ..full.clone()
        },
        ConnectSessionRow {
            pkce_dek_key_version: None,
            ..full.clone()
        },
        ConnectSessionRow {
            pkce_verifier: Some(vec![1]),
            ..bare_session("h", T0 + 600_000)
        },
    ];
    for half in halves {
        let err = store
            .insert_connect_session(&half)
            .await
            .expect_err("half a sealed verifier");
        assert!(
            matches!(err, StoreError::Database(_)),
            "{half:?}: got {err:?}"
        );
    }
    assert_eq!(store.get_connect_session("h").await.expect("get"), None);
}

async fn connect_session_is_consumed_once(store: Arc<dyn Store>) {
    let original = session("h1", T0 + 600_000);
    store
        .insert_connect_session(&original)
        .await
        .expect("insert");
    store
        .insert_connect_session(&bare_session("h2", T0 + 600_000))
        .await
        .expect("insert");

    assert!(
        store
            .consume_connect_session("h1", T0 + 10)
            .await
            .expect("consume")
    );
    let consumed = ConnectSessionRow {
        consumed_at: Some(T0 + 10),
        ..original
    };
    assert_eq!(must_get_session(&*store, "h1").await, consumed);
    // Replays, even earlier or later in time, do nothing.
    for now in [T0 + 10, T0 + 11, T0 + 5] {
        assert!(
            !store
                .consume_connect_session("h1", now)
                .await
                .expect("replay"),
            "replay at {now}"
        );
    }
    assert_eq!(must_get_session(&*store, "h1").await, consumed);
    // Other sessions are untouched; unknown ones are not consumable.
    assert_eq!(must_get_session(&*store, "h2").await.consumed_at, None);
    assert!(
        !store
            .consume_connect_session("ghost", T0)
            .await
            .expect("ghost")
    );
    assert_eq!(store.get_connect_session("ghost").await.expect("get"), None);
}

async fn expired_connect_session_cannot_be_consumed(store: Arc<dyn Store>) {
    let expiry = T0 + 600_000;
    for hash in ["h-late", "h-just-in-time"] {
        store
            .insert_connect_session(&session(hash, expiry))
            .await
            .expect("insert");
    }
    // Expiry is exclusive: at `now == expires_at` the session is gone.
    for now in [expiry, expiry + 1, i64::MAX] {
        assert!(
            !store
                .consume_connect_session("h-late", now)
                .await
                .expect("consume"),
            "consumed at {now}"
        );
    }
    assert_eq!(
        must_get_session(&*store, "h-late").await,
        session("h-late", expiry),
        "an expired session is left as it was"
    );
    assert!(
        store
            .consume_connect_session("h-just-in-time", expiry - 1)
            .await
            .expect("consume")
    );
    assert_eq!(
        must_get_session(&*store, "h-just-in-time")
            .await
            .consumed_at,
        Some(expiry - 1)
    );
}

/// Races `racers` consumers of one fresh session; returns how many got `true`.
async fn race_consumers(stores: &[Arc<dyn Store>], state_hash: &str, racers: usize) -> usize {
    stores[0]
        .insert_connect_session(&session(state_hash, T0 + 600_000))
        .await
        .expect("insert");
    let start = Arc::new(tokio::sync::Barrier::new(racers));
    let tasks: Vec<_> = (0..racers)
        .map(|n| {
            let store = Arc::clone(&stores[n % stores.len()]);
            let start = Arc::clone(&start);
            let state_hash = state_hash.to_owned();
            let now = T0 + 1 + i64::try_from(n).expect("small");
            tokio::spawn(async move {
                start.wait().await;
                store.consume_connect_session(&state_hash, now).await
            })
        })
        .collect();
    let mut winners = 0;
    for task in tasks {
        if task.await.expect("task").expect("consume") {
            winners += 1;
        }
    }
    let consumed_at = must_get_session(&*stores[0], state_hash)
        .await
        .consumed_at
        .expect("consumed");
    assert!(
        (T0 + 1..=T0 + i64::try_from(racers).expect("small")).contains(&consumed_at),
        "{consumed_at}"
    );
    winners
}

async fn concurrent_consumers_have_exactly_one_winner(store: Arc<dyn Store>) {
    let stores = [store];
    for round in 0..3 {
        let winners = race_consumers(&stores, &format!("h-race-{round}"), 10).await;
        assert_eq!(winners, 1, "round {round}");
    }
}

async fn prune_connect_sessions_deletes_only_expired(store: Arc<dyn Store>) {
    assert_eq!(
        store
            .prune_connect_sessions(i64::MAX)
            .await
            .expect("prune empty"),
        0
    );
    // Sessions expiring at T0, T0 + 10, ..., T0 + 90; every other one consumed.
    for n in 0..10i64 {
        let hash = format!("h{n}");
        store
            .insert_connect_session(&session(&hash, T0 + 10 * n))
            .await
            .expect("insert");
        if n % 2 == 0 {
            assert!(
                store
                    .consume_connect_session(&hash, T0 + 10 * n - 1)
                    .await
                    .expect("consume")
            );
        }
    }
    let left = async |store: &dyn Store| {
        let mut left = Vec::new();
        for n in 0..10i64 {
            if store
                .get_connect_session(&format!("h{n}"))
                .await
                .expect("get")
                .is_some()
            {
                left.push(n);
            }
        }
        left
    };
    assert_eq!(
        store.prune_connect_sessions(T0).await.expect("prune none"),
        0
    );
    // Strictly older than T0 + 40: h0..h3, consumed or not.
    assert_eq!(
        store.prune_connect_sessions(T0 + 40).await.expect("prune"),
        4
    );
    assert_eq!(left(&*store).await, [4, 5, 6, 7, 8, 9]);
    assert_eq!(
        must_get_session(&*store, "h5").await,
        session("h5", T0 + 50)
    );
    assert_eq!(
        store.prune_connect_sessions(T0 + 40).await.expect("again"),
        0
    );
    assert_eq!(
        store
            .prune_connect_sessions(T0 + 91)
            .await
            .expect("prune all"),
        6
    );
    assert!(left(&*store).await.is_empty());
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

// ---- PostgreSQL only: several stores ("replicas") on one database ------------------------------

/// Runs `body` with the URL of a fresh, migrated PostgreSQL database (skipped like the suite
/// when `TEST_DATABASE_URL` is unset) and drops the database afterwards.
async fn with_postgres_url<F, Fut>(label: &str, body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(db) = pg::fresh_database(label).await else {
        return;
    };
    cb_store::PgStore::connect(&db.url, 1)
        .await
        .expect("connect")
        .migrate()
        .await
        .expect("migrate postgres");
    let outcome = tokio::spawn(body(db.url.clone())).await;
    db.drop_database().await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(payload) => std::panic::resume_unwind(payload),
            Err(e) => panic!("test task did not finish: {e}"),
        }
    }
}

/// Sessions of change listeners on the current database.
async fn listener_sessions(store: &cb_store::PgStore) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'credential-broker-listener'",
    )
    .fetch_one(store.pool())
    .await
    .expect("pg_stat_activity")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_twenty_concurrent_acquirers_one_winner() {
    with_postgres_url("store_pg_twenty_acquirers", |url| async move {
        // Enough connections that all acquirers really run at the same time.
        let store: Arc<dyn Store> =
            Arc::new(cb_store::PgStore::connect(&url, 24).await.expect("connect"));
        for round in 0..3 {
            let id = format!("c{round}");
            insert_leaseless(&*store, &id).await;
            let winners = race_for_lease(&store, &id, 20).await;
            assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
            assert_eq!(winners[0].lease.fence, 1);
            assert_eq!(must_get(&*store, &id).await, winners[0]);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_ten_consumers_on_two_replicas_one_winner() {
    with_postgres_url("store_pg_ten_consumers", |url| async move {
        // Two replicas with enough connections that all ten consumers run at the same time.
        let mut stores: Vec<Arc<dyn Store>> = Vec::new();
        for _ in 0..2 {
            stores.push(Arc::new(
                cb_store::PgStore::connect(&url, 6).await.expect("connect"),
            ));
        }
        for round in 0..5 {
            let winners = race_consumers(&stores, &format!("h-race-{round}"), 10).await;
            assert_eq!(winners, 1, "round {round}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_changes_reach_another_replica() {
    with_postgres_url("store_pg_changes_replicas", |url| async move {
        let a = cb_store::PgStore::connect(&url, 3)
            .await
            .expect("connect a");
        let b = cb_store::PgStore::connect(&url, 3)
            .await
            .expect("connect b");
        // No subscriber, no listener.
        assert_eq!(listener_sessions(&a).await, 0);

        let mut rx = b.subscribe_changes();
        wait_until_listening(&b, &mut rx).await;
        assert_eq!(listener_sessions(&a).await, 1);
        // A second subscriber shares the listener.
        let mut rx2 = b.subscribe_changes();
        assert_eq!(listener_sessions(&a).await, 1);

        a.insert_credential(&leaseless("c1"), &[])
            .await
            .expect("insert");
        let changed = ChangeEvent::Changed("c1".to_owned());
        assert_eq!(next_event(&mut rx, Duration::from_secs(2)).await, changed);
        assert_eq!(next_event(&mut rx2, Duration::from_secs(2)).await, changed);
        let current = must_get(&a, "c1").await;
        a.update_credential(
            &CredentialRow {
                display_name: "renamed on replica a".to_owned(),
                ..current.clone()
            },
            current.row_version,
        )
        .await
        .expect("update");
        assert_eq!(next_event(&mut rx, Duration::from_secs(2)).await, changed);
        assert_eq!(next_event(&mut rx2, Duration::from_secs(2)).await, changed);
        drop(rx2);

        // The listener's connection is killed: B says Resync, reconnects, and hears A again.
        let killed: i64 = sqlx::query_scalar(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() \
             AND application_name = 'credential-broker-listener'",
        )
        .fetch_one(a.pool())
        .await
        .expect("terminate listener");
        assert_eq!(killed, 1);
        assert_eq!(
            next_event(&mut rx, Duration::from_secs(10)).await,
            ChangeEvent::Resync
        );
        // Until the new LISTEN is in place a notification can be missed (and a Resync
        // follows); keep writing until one arrives.
        let mut heard = false;
        for attempt in 0..20 {
            let current = must_get(&a, "c1").await;
            a.update_credential(
                &CredentialRow {
                    description: format!("attempt {attempt}"),
                    ..current.clone()
                },
                current.row_version,
            )
            .await
            .expect("update");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            while let Ok(event) = tokio::time::timeout_at(deadline, rx.recv()).await {
                match event.expect("receive") {
                    ChangeEvent::Changed(id) if id == "c1" => heard = true,
                    ChangeEvent::Resync => {}
                    other => panic!("unexpected {other:?}"),
                }
                if heard {
                    break;
                }
            }
            if heard {
                break;
            }
        }
        assert!(heard, "the listener reconnected");
        assert_eq!(listener_sessions(&a).await, 1);

        // Dropping the replica stops its listener and closes its connection.
        drop(b);
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Err(broadcast::error::RecvError::Closed) = rx.recv().await {
                    return;
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "the channel closes once the store is dropped"
        );
        crate::support::wait::wait_until(
            Duration::from_secs(5),
            "the listener connection is closed",
            || async { listener_sessions(&a).await == 0 },
        )
        .await;
    })
    .await;
}

fn run_grant(id: &str, expires_at: i64) -> RunGrantRow {
    RunGrantRow {
        id: id.to_owned(),
        grant_sha256: format!("{id:0>64}"),
        user_id: "u-alice".to_owned(),
        email: "alice@example.com".to_owned(),
        workspace_id: Some("ws1".to_owned()),
        workspace_role: Some("member".to_owned()),
        workflow_id: "wf-1".to_owned(),
        execution_id: "ex-1".to_owned(),
        credential_ids: "c1 c2".to_owned(),
        created_by: "web".to_owned(),
        created_at: 1_000,
        expires_at,
        revoked_at: None,
    }
}

async fn run_grant_round_trips_by_hash_and_id(store: Arc<dyn Store>) {
    let g = run_grant("g1", 5_000);
    let bare = RunGrantRow {
        workspace_id: None,
        workspace_role: None,
        ..run_grant("g2", 6_000)
    };
    for row in [&g, &bare] {
        store.insert_run_grant(row).await.expect("insert");
        assert_eq!(
            store.get_run_grant(&row.grant_sha256).await.expect("get"),
            Some(row.clone())
        );
        assert_eq!(
            store.get_run_grant_by_id(&row.id).await.expect("get by id"),
            Some(row.clone())
        );
    }
    assert_eq!(
        store.get_run_grant(&"f".repeat(64)).await.expect("get"),
        None
    );
    assert_eq!(store.get_run_grant_by_id("nope").await.expect("get"), None);
}

async fn duplicate_run_grant_is_rejected(store: Arc<dyn Store>) {
    store
        .insert_run_grant(&run_grant("g1", 5_000))
        .await
        .expect("insert");
    // Same id, or another id with the same hash.
    let same_hash = RunGrantRow {
        id: "g9".to_owned(),
        ..run_grant("g1", 5_000)
    };
    for dup in [run_grant("g1", 7_000), same_hash] {
        assert!(matches!(
            store.insert_run_grant(&dup).await,
            Err(StoreError::Duplicate(s)) if s == "run grant"
        ));
    }
}

async fn run_grant_is_revoked_once_and_announced(store: Arc<dyn Store>) {
    let mut rx = store.subscribe_changes();
    wait_until_listening(&*store, &mut rx).await;
    let g = run_grant("g1", 5_000);
    store.insert_run_grant(&g).await.expect("insert");
    assert!(store.revoke_run_grant("g1", 2_000).await.expect("revoke"));
    assert_eq!(
        next_event(&mut rx, Duration::from_secs(10)).await,
        ChangeEvent::Changed(run_grant_change_id(&g.grant_sha256))
    );
    // A second revocation and an unknown id change nothing (and announce nothing).
    assert!(!store.revoke_run_grant("g1", 3_000).await.expect("again"));
    assert!(
        !store
            .revoke_run_grant("nope", 3_000)
            .await
            .expect("unknown")
    );
    let stored = store.get_run_grant(&g.grant_sha256).await.expect("get");
    assert_eq!(stored.and_then(|r| r.revoked_at), Some(2_000));
    assert!(matches!(
        rx.try_recv(),
        Err(broadcast::error::TryRecvError::Empty)
    ));
}

async fn prune_run_grants_deletes_only_expired(store: Arc<dyn Store>) {
    for (id, expires_at) in [("g1", 1_000), ("g2", 2_000), ("g3", 3_000)] {
        store
            .insert_run_grant(&run_grant(id, expires_at))
            .await
            .expect("insert");
    }
    assert_eq!(store.prune_run_grants(2_500).await.expect("prune"), 2);
    assert_eq!(store.get_run_grant_by_id("g1").await.expect("get"), None);
    assert!(
        store
            .get_run_grant_by_id("g3")
            .await
            .expect("get")
            .is_some()
    );
}
// ---- OAuth apps ----------------------------------------------------------------------------

fn oauth_app(id: &str, workspace_id: &str, provider_id: &str) -> OAuthAppRow {
    OAuthAppRow {
        id: id.to_owned(),
        workspace_id: workspace_id.to_owned(),
        provider_id: provider_id.to_owned(),
        display_name: format!("App {id}"),
        client_id: format!("client-{id}"),
        allowed_scopes: "read write".to_owned(),
        created_by: "user-1".to_owned(),
        created_at: 1_000,
        updated_at: 1_000,
        row_version: 1,
    }
}

fn app_secret(app_id: &str, version: i64) -> OAuthAppSecretRow {
    OAuthAppSecretRow {
        app_id: app_id.to_owned(),
        version,
        // Every byte value: the column holds ciphertext.
        sealed_secret: (0..=255u8).collect(),
        dek_wrapped: vec![0, 255, u8::try_from(version).unwrap()],
        dek_key_id: "local:k1".to_owned(),
        dek_key_version: 3,
        created_at: 1_000 + version,
    }
}

async fn oauth_app_round_trips_and_holds_its_secrets(store: Arc<dyn Store>) {
    let a = oauth_app("app-a", "ws1", "fake");
    store
        .insert_oauth_app(&a, &app_secret("app-a", 1))
        .await
        .unwrap();
    assert_eq!(store.get_oauth_app("app-a").await.unwrap(), Some(a.clone()));
    assert_eq!(store.get_oauth_app("nope").await.unwrap(), None);
    assert!(matches!(
        store.insert_oauth_app(&a, &app_secret("app-a", 1)).await,
        Err(StoreError::Duplicate(s)) if s == "OAuth app"
    ));
    // Listing: per workspace, optionally per provider, oldest (smallest id) first.
    store
        .insert_oauth_app(&oauth_app("app-b", "ws1", "other"), &app_secret("app-b", 1))
        .await
        .unwrap();
    store
        .insert_oauth_app(&oauth_app("app-0", "ws1", "fake"), &app_secret("app-0", 1))
        .await
        .unwrap();
    store
        .insert_oauth_app(&oauth_app("app-c", "ws2", "fake"), &app_secret("app-c", 1))
        .await
        .unwrap();
    let ids = |rows: Vec<OAuthAppRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_oauth_apps("ws1", Some("fake")).await.unwrap()),
        ["app-0", "app-a"]
    );
    assert_eq!(
        ids(store.list_oauth_apps("ws1", None).await.unwrap()),
        ["app-0", "app-a", "app-b"]
    );
    // Secrets: newest first, one per version, deletable one by one.
    store
        .insert_oauth_app_secret(&app_secret("app-a", 2))
        .await
        .unwrap();
    assert!(matches!(
        store.insert_oauth_app_secret(&app_secret("app-a", 2)).await,
        Err(StoreError::Duplicate(s)) if s == "OAuth app secret version"
    ));
    let secrets = store.list_oauth_app_secrets("app-a").await.unwrap();
    assert_eq!(
        secrets,
        vec![app_secret("app-a", 2), app_secret("app-a", 1)]
    );
    assert!(store.delete_oauth_app_secret("app-a", 1).await.unwrap());
    assert!(!store.delete_oauth_app_secret("app-a", 1).await.unwrap());
    assert_eq!(
        store.list_oauth_app_secrets("app-a").await.unwrap(),
        vec![app_secret("app-a", 2)]
    );
}

async fn secret_deks_page_count_and_rewrap_like_credential_deks(store: Arc<dyn Store>) {
    let kind = SecretKind::OAuthAppSecret;
    for (app, workspace) in [("app-a", "ws1"), ("app-b", "ws2")] {
        store
            .insert_oauth_app(&oauth_app(app, workspace, "fake"), &app_secret(app, 1))
            .await
            .unwrap();
    }
    let mut on_k2 = app_secret("app-a", 2);
    on_k2.dek_key_id = "local:k2".into();
    on_k2.dek_key_version = 1;
    store.insert_oauth_app_secret(&on_k2).await.unwrap();
    assert_eq!(
        store.secret_key_usage(kind).await.unwrap(),
        [
            SecretKeyUsage {
                key_id: "local:k1".into(),
                key_version: 3,
                secrets: 2
            },
            SecretKeyUsage {
                key_id: "local:k2".into(),
                key_version: 1,
                secrets: 1
            },
        ]
    );
    // Keyset paging over (owner, version), only data keys on another key, with the workspace.
    let page = |after: Option<(&'static str, i64)>| {
        let store = store.clone();
        async move {
            store
                .secret_deks_not_on_key(kind, "local:k2", 1, after, 1)
                .await
                .unwrap()
        }
    };
    let first = page(None).await;
    assert_eq!(first.len(), 1);
    assert_eq!(
        (
            first[0].owner_id.as_str(),
            first[0].version,
            first[0].workspace_id.as_str()
        ),
        ("app-a", 1, "ws1")
    );
    let second = page(Some(("app-a", 1))).await;
    assert_eq!(
        (second[0].owner_id.as_str(), second[0].workspace_id.as_str()),
        ("app-b", "ws2")
    );
    assert!(page(Some(("app-b", 1))).await.is_empty());
    let all = store
        .secret_deks_not_on_key(kind, "local:k9", 0, None, 10)
        .await
        .unwrap();
    let keys: Vec<(&str, i64)> = all
        .iter()
        .map(|r| (r.owner_id.as_str(), r.version))
        .collect();
    assert_eq!(keys, [("app-a", 1), ("app-a", 2), ("app-b", 1)]);

    // Compare-and-swap of the data key only: the secret's ciphertext stays.
    let old = first[0].clone();
    assert!(
        store
            .rewrap_secret_dek(kind, &old, b"rewrapped", "local:k2", 1)
            .await
            .unwrap()
    );
    assert!(
        !store
            .rewrap_secret_dek(kind, &old, b"again", "local:k3", 1)
            .await
            .unwrap(),
        "the row no longer holds the old wrapping"
    );
    let held = store.list_oauth_app_secrets("app-a").await.unwrap();
    let v1 = held.iter().find(|s| s.version == 1).unwrap();
    assert_eq!(v1.dek_wrapped, b"rewrapped");
    assert_eq!(
        (v1.dek_key_id.as_str(), v1.dek_key_version),
        ("local:k2", 1)
    );
    assert_eq!(v1.sealed_secret, app_secret("app-a", 1).sealed_secret);
    assert_eq!(
        page(None)
            .await
            .iter()
            .map(|r| r.owner_id.as_str())
            .collect::<Vec<_>>(),
        ["app-b"]
    );
}

async fn oauth_app_update_is_optimistic_and_delete_takes_the_secrets(store: Arc<dyn Store>) {
    let a = oauth_app("app-a", "ws1", "fake");
    store
        .insert_oauth_app(&a, &app_secret("app-a", 1))
        .await
        .unwrap();
    let edited = OAuthAppRow {
        display_name: "Renamed".to_owned(),
        client_id: "client-2".to_owned(),
        allowed_scopes: String::new(),
        updated_at: 2_000,
        // Not written by update_oauth_app.
        workspace_id: "elsewhere".to_owned(),
        ..a.clone()
    };
    let stored = store.update_oauth_app(&edited, 1).await.unwrap();
    assert_eq!(
        stored,
        OAuthAppRow {
            workspace_id: "ws1".to_owned(),
            row_version: 2,
            ..edited.clone()
        }
    );
    assert!(matches!(
        store.update_oauth_app(&edited, 1).await,
        Err(StoreError::VersionConflict { expected: 1 })
    ));
    assert!(matches!(
        store
            .update_oauth_app(&oauth_app("nope", "ws1", "fake"), 1)
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(store.delete_oauth_app("app-a").await.unwrap());
    assert!(!store.delete_oauth_app("app-a").await.unwrap());
    assert_eq!(store.get_oauth_app("app-a").await.unwrap(), None);
    assert!(
        store
            .list_oauth_app_secrets("app-a")
            .await
            .unwrap()
            .is_empty()
    );
}

async fn credential_records_its_oauth_app(store: Arc<dyn Store>) {
    for (id, subject) in [("c1", "s1"), ("c2", "s2"), ("c3", "s3")] {
        store
            .insert_credential(&credential(id, "ws1", "fake", subject), &[])
            .await
            .unwrap();
    }
    assert_eq!(store.credential_app("c1").await.unwrap(), None);
    store
        .set_credential_app("c1", Some(("app-a", 2)))
        .await
        .unwrap();
    store
        .set_credential_app("c2", Some(("app-a", 1)))
        .await
        .unwrap();
    store
        .set_credential_app("c3", Some(("app-b", 1)))
        .await
        .unwrap();
    assert_eq!(
        store.credential_app("c1").await.unwrap(),
        Some(("app-a".to_owned(), 2))
    );
    // Recording the app is not a change of the credential's row.
    assert_eq!(must_get(store.as_ref(), "c1").await.row_version, 1);
    assert_eq!(
        store.credentials_using_app("app-a").await.unwrap(),
        ["c1", "c2"]
    );
    // Disconnected credentials no longer use it; cleared ones neither.
    disconnect(store.as_ref(), "c2").await;
    store.set_credential_app("c1", None).await.unwrap();
    assert!(
        store
            .credentials_using_app("app-a")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.credential_app("c1").await.unwrap(), None);
}

fn credential_event(credential_id: &str, kind: &str, n: usize) -> NewCredentialEvent {
    NewCredentialEvent {
        event_id: format!("evt-{credential_id}-{kind}-{n}"),
        at: 1_700_000_000_000 + i64::try_from(n).unwrap(),
        workspace_id: "ws1".to_owned(),
        credential_id: Some(credential_id.to_owned()),
        kind: kind.to_owned(),
        actor: Some("user-1".to_owned()),
        cause: None,
        detail: None,
    }
}

/// Every stored lifecycle event, oldest first.
async fn all_events(store: &dyn Store) -> Vec<cb_store::CredentialEventRow> {
    store
        .list_credential_events(&events_after(0))
        .await
        .expect("events")
}

fn events_after(after_id: i64) -> EventQuery {
    EventQuery {
        after_id,
        limit: 1000,
        ..EventQuery::default()
    }
}

async fn refresh_failure_counts_and_keeps_since_without_a_version_bump(store: Arc<dyn Store>) {
    let healthy = CredentialRow {
        health: HealthColumns::default(),
        ..leaseless("c1")
    };
    insert(&*store, &healthy).await;
    let outage = |at| RefreshFailure {
        health: "PROVIDER_OUTAGE".to_owned(),
        cause: "provider temporarily unavailable".to_owned(),
        error_code: Some("temporarily_unavailable".to_owned()),
        at,
    };
    let first = store
        .record_refresh_failure(
            "c1",
            &outage(10),
            &[credential_event("c1", "refresh_failed", 1)],
        )
        .await
        .expect("first failure")
        .expect("row");
    let second = store
        .record_refresh_failure("c1", &outage(20), &[])
        .await
        .expect("second failure")
        .expect("row");
    assert_eq!(first.health.since, Some(10));
    assert_eq!(
        second.health.since,
        Some(10),
        "a continuing outage keeps its since"
    );
    assert_eq!(second.health.failures, 2);
    assert_eq!(second.row_version, 1, "health is not an edit");
    let rejected = store
        .record_refresh_failure(
            "c1",
            &RefreshFailure {
                health: "CLIENT_MISCONFIGURED".to_owned(),
                error_code: Some("invalid_client".to_owned()),
                ..outage(30)
            },
            &[],
        )
        .await
        .expect("third failure")
        .expect("row");
    assert_eq!(rejected.health.since, Some(30), "another cause starts anew");
    assert_eq!(
        rejected.health.error_code.as_deref(),
        Some("invalid_client")
    );
    assert_eq!(must_get(&*store, "c1").await.health, rejected.health);
    let events = all_events(&*store).await;
    assert_eq!(events.len(), 1);
    assert!(
        store
            .record_refresh_failure("missing", &outage(40), &[])
            .await
            .expect("unknown")
            .is_none()
    );
}

async fn events_are_written_with_their_change_and_read_by_cursor(store: Arc<dyn Store>) {
    let admin = active(member("c1", "admin@example.com", "ADMIN"));
    store
        .insert_credential_with_events(
            &leaseless("c1"),
            std::slice::from_ref(&admin),
            &[credential_event("c1", "connected", 1)],
        )
        .await
        .expect("insert");
    store
        .insert_credential_with_events(
            &leaseless("c2"),
            &[],
            &[credential_event("c2", "connected", 2)],
        )
        .await
        .expect("insert c2");
    let renamed = store
        .update_credential_with_events(
            &CredentialRow {
                display_name: "renamed".to_owned(),
                ..leaseless("c1")
            },
            1,
            &[credential_event("c1", "updated", 3)],
        )
        .await
        .expect("update");
    // A write that fails writes no event: they share the transaction.
    store
        .update_credential_with_events(&renamed, 1, &[credential_event("c1", "updated", 4)])
        .await
        .expect_err("stale");
    assert!(is_last_admin(
        &store
            .change_member_with_events(
                &delete_change("c1", "admin@example.com"),
                &[credential_event("c1", "member_removed", 5)],
            )
            .await
    ));

    let all = all_events(&*store).await;
    let kinds: Vec<_> = all
        .iter()
        .map(|e| {
            (
                e.event.credential_id.as_deref().unwrap_or(""),
                e.event.kind.as_str(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [("c1", "connected"), ("c2", "connected"), ("c1", "updated")]
    );
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(all[2].event.event_id, "evt-c1-updated-3");

    // Cursor, credential, kinds and membership filters.
    let after_first = store
        .list_credential_events(&events_after(all[0].id))
        .await
        .expect("after");
    assert_eq!(after_first, all[1..]);
    let of_c1 = store
        .list_credential_events(&EventQuery {
            credential_id: Some("c1".to_owned()),
            kinds: vec!["updated".to_owned()],
            ..events_after(0)
        })
        .await
        .expect("c1 updates");
    assert_eq!(of_c1, all[2..]);
    let of_member = |user: &str, email: &str| EventQuery {
        workspace_id: Some("ws1".to_owned()),
        member: Some((user.to_owned(), email.to_owned())),
        ..events_after(0)
    };
    let admin_sees = store
        .list_credential_events(&of_member("nobody", "admin@example.com"))
        .await
        .expect("by email");
    assert_eq!(admin_sees.len(), 2, "the events of c1 only");
    assert!(
        store
            .list_credential_events(&of_member("u-x", "x@example.com"))
            .await
            .expect("stranger")
            .is_empty()
    );

    // Retention: older than the cutoff goes.
    let pruned = store
        .prune_credential_events(1_700_000_000_002)
        .await
        .expect("prune");
    assert_eq!(pruned, 1);
    let left = all_events(&*store).await;
    assert_eq!(left, all[1..]);
}

/// The attempt that disables a failing endpoint writes its workspace event (no credential) in
/// the same transaction, once; the event fans out to the workspace's other enabled endpoints,
/// and member and credential filters never match it.
async fn disabling_a_webhook_endpoint_writes_one_workspace_event(store: Arc<dyn Store>) {
    let member = active(member("c1", "m@example.com", "MEMBER"));
    store
        .insert_credential(&leaseless("c1"), std::slice::from_ref(&member))
        .await
        .expect("insert");
    for id in ["down", "up"] {
        store
            .upsert_webhook_endpoint(id, "ws1", &format!("https://{id}.example/"), 1, None)
            .await
            .expect("declare");
    }
    store
        .update_credential_with_events(&leaseless("c1"), 1, &[credential_event("c1", "updated", 1)])
        .await
        .expect("event");
    let disabled_event = NewCredentialEvent {
        credential_id: None,
        kind: "webhook_endpoint_disabled".to_owned(),
        actor: None,
        detail: Some("endpoint=down".to_owned()),
        ..credential_event("ws1", "webhook_endpoint_disabled", 2)
    };
    let (store, disabled_event) = (&store, &disabled_event);
    let attempt = |at: i64| async move {
        let claimed = store
            .claim_webhook_deliveries("h", at, 60_000, 10)
            .await
            .expect("claim");
        let d = claimed.into_iter().find(|d| d.endpoint_id == "down")?;
        Some(
            store
                .finish_webhook_delivery(&DeliveryAttempt {
                    id: d.id,
                    endpoint_id: d.endpoint_id,
                    holder: "h".to_owned(),
                    delivered: false,
                    status: Some(503),
                    error: Some("HTTP 503".to_owned()),
                    at,
                    next_attempt_at: at,
                    disable_failing_since: at - 1_000,
                    disabled_event: Some(disabled_event.clone()),
                })
                .await
                .expect("finish"),
        )
    };
    const T: i64 = 1_700_000_000_010; // after the event
    assert_eq!(attempt(T).await, Some(false), "failing since T: not yet");
    assert_eq!(all_events(&**store).await.len(), 1, "no event yet");
    assert_eq!(
        attempt(T + 2_000).await,
        Some(true),
        "failing for long enough"
    );
    assert_eq!(attempt(T + 3_000).await, None, "disabled: nothing to claim");

    let all = all_events(&**store).await;
    let workspace: Vec<_> = all
        .iter()
        .filter(|e| e.event.credential_id.is_none())
        .collect();
    assert_eq!(workspace.len(), 1, "{all:?}");
    assert_eq!(workspace[0].event.detail.as_deref(), Some("endpoint=down"));
    let filtered =
        |q: EventQuery| async move { store.list_credential_events(&q).await.expect("filtered") };
    let of_member = filtered(EventQuery {
        workspace_id: Some("ws1".to_owned()),
        member: Some(("u-m".to_owned(), "m@example.com".to_owned())),
        ..events_after(0)
    })
    .await;
    assert_eq!(
        of_member.len(),
        1,
        "the member sees the credential's event only"
    );
    assert!(of_member[0].event.credential_id.is_some());
    let of_c1 = filtered(EventQuery {
        credential_id: Some("c1".to_owned()),
        ..events_after(0)
    })
    .await;
    assert!(of_c1.iter().all(|e| e.event.credential_id.is_some()));
    let by_kind = filtered(EventQuery {
        workspace_id: Some("ws1".to_owned()),
        kinds: vec!["webhook_endpoint_disabled".to_owned()],
        ..events_after(0)
    })
    .await;
    assert_eq!(by_kind.len(), 1);
    // The endpoint still enabled has a delivery for it; the disabled one has none.
    let up = store
        .list_webhook_deliveries("up", 10, 0)
        .await
        .expect("up");
    assert!(
        up.iter()
            .any(|d| d.event_row_id == workspace[0].id && d.credential_id.is_empty())
    );
    let down = store
        .list_webhook_deliveries("down", 10, 0)
        .await
        .expect("down");
    assert!(down.iter().all(|d| d.event_row_id != workspace[0].id));
}

/// Writers on many connections and a reader that follows the log by cursor: whatever order the
/// transactions commit in, the reader ends up with every event exactly once.
async fn concurrent_event_writers_are_read_in_cursor_order_without_gaps(store: Arc<dyn Store>) {
    const WRITERS: usize = 8;
    const EACH: usize = 15;
    for w in 0..WRITERS {
        insert(&*store, &leaseless(&format!("c{w}"))).await;
    }
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in 0..EACH {
                    let id = format!("c{w}");
                    let renamed = CredentialRow {
                        display_name: format!("name {n}"),
                        ..must_get(&*store, &id).await
                    };
                    let version = renamed.row_version;
                    store
                        .update_credential_with_events(
                            &renamed,
                            version,
                            &[credential_event(&id, "updated", n)],
                        )
                        .await
                        .expect("update");
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    let mut cursor = 0;
    let follow = |cursor: i64| {
        let store = store.clone();
        async move {
            store
                .list_credential_events(&events_after(cursor))
                .await
                .expect("follow")
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !writers.iter().all(tokio::task::JoinHandle::is_finished) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writers did not finish"
        );
        for e in follow(cursor).await {
            cursor = e.id;
            seen.push(e.event.event_id);
        }
        tokio::task::yield_now().await;
    }
    for w in writers {
        w.await.expect("writer");
    }
    for e in follow(cursor).await {
        seen.push(e.event.event_id);
    }
    let all: Vec<_> = follow(0)
        .await
        .into_iter()
        .map(|e| e.event.event_id)
        .collect();
    assert_eq!(all.len(), WRITERS * EACH);
    assert_eq!(
        seen, all,
        "a reader following the cursor saw every event once, in order"
    );
}

fn webhook_secret(endpoint_id: &str, version: i64) -> WebhookSecretRow {
    WebhookSecretRow {
        endpoint_id: endpoint_id.to_owned(),
        version,
        sealed: SealedColumns {
            // Every byte value: the column holds ciphertext.
            ciphertext: (0..=255u8).collect(),
            dek_wrapped: vec![0, 255, u8::try_from(version).unwrap()],
            dek_key_id: "local:k1".to_owned(),
            dek_key_version: 3,
        },
        created_at: 1_000 + version,
    }
}

/// API endpoints are inserted with their secret, listed beside configured ones, edited (a
/// reset re-enables a disabled one), rotated and deleted with their secrets and delivery log;
/// configured endpoints cannot be edited or deleted, and a configuration declaring an API id
/// changes nothing.
async fn api_webhook_endpoints_are_managed_and_configured_ones_are_not(store: Arc<dyn Store>) {
    store
        .upsert_webhook_endpoint("cfg", "ws1", "https://cfg.example/", 1, None)
        .await
        .expect("declare");
    let api = WebhookEndpointRow {
        id: "whe_1".to_owned(),
        workspace_id: "ws1".to_owned(),
        url: "https://api.example/hook".to_owned(),
        event_types: Some("connected,disconnected".to_owned()),
        description: "ops".to_owned(),
        source: "API".to_owned(),
        failing_since: None,
        disabled_at: None,
        updated_at: 5,
    };
    store
        .insert_webhook_endpoint(&api, &webhook_secret("whe_1", 1))
        .await
        .expect("insert");
    assert!(matches!(
        store
            .insert_webhook_endpoint(&api, &webhook_secret("whe_1", 1))
            .await,
        Err(StoreError::Duplicate(s)) if s == "webhook endpoint"
    ));
    assert_eq!(
        store.webhook_endpoint("whe_1").await.unwrap(),
        Some(api.clone())
    );
    let listed = store.list_webhook_endpoints("ws1").await.unwrap();
    let sources: Vec<(&str, &str)> = listed
        .iter()
        .map(|e| (e.id.as_str(), e.source.as_str()))
        .collect();
    assert_eq!(sources, [("cfg", "CONFIG"), ("whe_1", "API")]);
    assert!(
        store
            .list_webhook_endpoints("ws2")
            .await
            .unwrap()
            .is_empty()
    );
    // A configuration naming an API endpoint's id leaves it alone.
    store
        .upsert_webhook_endpoint("whe_1", "ws9", "https://evil.example/", 9, None)
        .await
        .expect("declare");
    assert_eq!(
        store.webhook_endpoint("whe_1").await.unwrap(),
        Some(api.clone())
    );

    // One failed delivery disables it at once (failing since at least `disable_failing_since`).
    store
        .insert_credential(
            &leaseless("c1"),
            &[active(member("c1", "m@example.com", "ADMIN"))],
        )
        .await
        .expect("insert");
    store
        .update_credential_with_events(&leaseless("c1"), 1, &[credential_event("c1", "updated", 1)])
        .await
        .expect("event");
    assert!(
        store
            .list_webhook_deliveries("whe_1", 10, 0)
            .await
            .unwrap()
            .is_empty(),
        "filtered out: `updated` is not among its event types"
    );
    store
        .update_credential_with_events(
            &leaseless("c1"),
            2,
            &[credential_event("c1", "disconnected", 2)],
        )
        .await
        .expect("event");
    const T: i64 = 1_700_000_000_010;
    let claimed = store
        .claim_webhook_deliveries("h", T, 60_000, 10)
        .await
        .expect("claim");
    let d = claimed
        .into_iter()
        .find(|d| d.endpoint_id == "whe_1")
        .expect("a delivery to the API endpoint");
    let disabled = store
        .finish_webhook_delivery(&DeliveryAttempt {
            id: d.id,
            endpoint_id: d.endpoint_id,
            holder: "h".to_owned(),
            delivered: false,
            status: Some(503),
            error: Some("HTTP 503".to_owned()),
            at: T,
            next_attempt_at: T,
            disable_failing_since: T,
            disabled_event: None,
        })
        .await
        .expect("finish");
    assert!(disabled);
    let edited = WebhookEndpointRow {
        url: "https://api.example/v2".to_owned(),
        event_types: None,
        description: String::new(),
        updated_at: 7,
        ..api.clone()
    };
    let kept = store
        .update_webhook_endpoint(&edited, false)
        .await
        .unwrap()
        .expect("updated");
    assert_eq!(
        (
            kept.url.as_str(),
            kept.event_types.as_deref(),
            kept.updated_at
        ),
        ("https://api.example/v2", None, 7)
    );
    assert_eq!((kept.failing_since, kept.disabled_at), (Some(T), Some(T)));
    let reset = store
        .update_webhook_endpoint(&edited, true)
        .await
        .unwrap()
        .expect("updated");
    assert_eq!((reset.failing_since, reset.disabled_at), (None, None));
    let cfg = WebhookEndpointRow {
        id: "cfg".to_owned(),
        ..edited.clone()
    };
    assert_eq!(
        store.update_webhook_endpoint(&cfg, true).await.unwrap(),
        None
    );

    // Secrets: newest first; a version is added once.
    store
        .insert_webhook_secret(&webhook_secret("whe_1", 2))
        .await
        .expect("rotate");
    assert!(matches!(
        store
            .insert_webhook_secret(&webhook_secret("whe_1", 2))
            .await,
        Err(StoreError::Duplicate(s)) if s == "webhook secret version"
    ));
    assert_eq!(
        store.list_webhook_secrets("whe_1").await.unwrap(),
        vec![webhook_secret("whe_1", 2), webhook_secret("whe_1", 1)]
    );
    assert_eq!(
        store
            .secret_key_usage(SecretKind::WebhookSecret)
            .await
            .unwrap()
            .iter()
            .map(|u| (u.key_id.as_str(), u.key_version, u.secrets))
            .collect::<Vec<_>>(),
        [("local:k1", 3, 2)],
        "retiring the key version would make these secrets unreadable"
    );
    assert!(store.delete_webhook_secret("whe_1", 1).await.unwrap());
    assert!(!store.delete_webhook_secret("whe_1", 1).await.unwrap());

    // Deleting: configured endpoints stay; the API one goes with its secrets and log.
    assert!(!store.delete_webhook_endpoint("cfg", T).await.unwrap());
    assert!(store.webhook_endpoint("cfg").await.unwrap().is_some());
    assert!(
        !store
            .list_webhook_deliveries("whe_1", 10, 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.delete_webhook_endpoint("whe_1", T).await.unwrap());
    assert!(!store.delete_webhook_endpoint("whe_1", T).await.unwrap());
    assert_eq!(store.webhook_endpoint("whe_1").await.unwrap(), None);
    assert!(
        store
            .list_webhook_secrets("whe_1")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .list_webhook_deliveries("whe_1", 10, 0)
            .await
            .unwrap()
            .is_empty()
    );
}

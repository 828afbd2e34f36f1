//! A throwaway PostgreSQL database per test, on the server named by `TEST_DATABASE_URL`.
//!
//! Without that variable the PostgreSQL half of a test is skipped loudly on a workstation and
//! fails in CI (`CI` or `CB_REQUIRE_SERVICES` set), so a green CI run always covered PostgreSQL.

use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};

/// A database created for one test; call [`TestPgDatabase::drop_database`] when done.
#[derive(Debug)]
pub struct TestPgDatabase {
    /// Connection URL of the new database (same server and credentials as the admin URL).
    pub url: String,
    admin_url: String,
    name: String,
}

/// Creates an empty database named after `label`, or returns `None` (after saying so on
/// stderr) when `TEST_DATABASE_URL` is unset outside CI.
pub async fn fresh_database(label: &str) -> Option<TestPgDatabase> {
    let admin_url = match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            if env_is_set("CI") || env_is_set("CB_REQUIRE_SERVICES") {
                panic!("TEST_DATABASE_URL is required in CI: PostgreSQL tests must not be skipped");
            }
            crate::support::skip_loudly(&format!(
                "SKIPPED (PostgreSQL): {label} — set TEST_DATABASE_URL to run it"
            ));
            return None;
        }
    };
    let name = format!("cbt_{}_{}", sanitize(label), random_suffix());
    let mut admin = connect_admin(&admin_url).await;
    admin
        .execute(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
    let _ = admin.close().await;
    Some(TestPgDatabase {
        url: with_database(&admin_url, &name),
        admin_url,
        name,
    })
}

impl TestPgDatabase {
    /// Terminates the database's remaining sessions and drops it.
    pub async fn drop_database(self) {
        let mut admin = connect_admin(&self.admin_url).await;
        admin
            .execute(
                sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                )
                .bind(&self.name),
            )
            .await
            .unwrap_or_else(|e| panic!("cannot terminate sessions of {}: {e}", self.name));
        admin
            .execute(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{}\"",
                self.name
            )))
            .await
            .unwrap_or_else(|e| panic!("cannot drop test database {}: {e}", self.name));
        let _ = admin.close().await;
    }
}

async fn connect_admin(admin_url: &str) -> PgConnection {
    // The URL is not printed: it may hold a password.
    PgConnection::connect(admin_url).await.unwrap_or_else(|e| {
        panic!("TEST_DATABASE_URL is set but PostgreSQL cannot be reached: {e}")
    })
}

fn env_is_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// Lowercase letters, digits and `_` only, short enough for PostgreSQL's 63-byte names.
fn sanitize(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(40)
        .collect()
}

/// 64 bits from a UUIDv7's random tail (62 of them random): unique across parallel runs.
fn random_suffix() -> String {
    let simple = uuid::Uuid::now_v7().simple().to_string();
    simple[simple.len() - 16..].to_owned()
}

/// Replaces the database name (URL path) of a PostgreSQL URL, keeping its query string.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

#[test]
fn with_database_replaces_only_the_path() {
    assert_eq!(
        with_database("postgres://root@127.0.0.1:5432/postgres", "x"),
        "postgres://root@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgres://u:p@h/db?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(
        with_database("postgresql://h:5432", "x"),
        "postgresql://h:5432/x"
    );
}

/// `on_both_backends!("label_", scenario)`: a module `scenario` with two tests running
/// `scenario(db: Option<&str>)` on SQLite (`None`), then on a fresh PostgreSQL database (when one
/// is configured) named after the label and the scenario.
macro_rules! on_both_backends {
    ($label:literal, $scenario:ident) => {
        mod $scenario {
            #[tokio::test]
            async fn on_sqlite() {
                super::$scenario(None).await;
            }

            #[tokio::test]
            async fn on_postgres() {
                let Some(db) =
                    $crate::support::pg::fresh_database(concat!($label, stringify!($scenario)))
                        .await
                else {
                    return;
                };
                super::$scenario(Some(&db.url)).await;
                db.drop_database().await;
            }
        }
    };
}

pub(crate) use on_both_backends;

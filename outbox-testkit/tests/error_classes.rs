//! Each class of database error, provoked on the real server, is classified transient (a retry may
//! succeed: the relay retries a settle, backs off a claim) or permanent.
#![cfg(all(feature = "postgres", feature = "mysql", feature = "sqlite"))]

use std::time::Duration;

use outbox_engine::Error;
use outbox_sqlx::error_from;
use outbox_testkit::env::{backend, unique_name};
use sqlx::{Connection, Executor};

fn classify(e: sqlx::Error) -> Error {
    error_from("test")(e)
}

/// Deadlocks connection `$a` (in a transaction holding row 1 of `$table`) with `$b`, asserts the
/// error is transient, rolls both back and evaluates to `$a`.
macro_rules! assert_deadlock_is_transient {
    ($a:ident, $b:ident, $table:ident) => {{
        $b.execute("BEGIN").await.expect("begin");
        $b.execute(format!("UPDATE {} SET v = 2 WHERE id = 2", $table).as_str()).await.expect("lock row 2");
        let sql = format!("UPDATE {} SET v = 1 WHERE id = 2", $table);
        let a_waits = tokio::spawn(async move {
            let result = $a.execute(sql.as_str()).await.map(drop);
            ($a, result)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let b_result = $b.execute(format!("UPDATE {} SET v = 2 WHERE id = 1", $table).as_str()).await.map(drop);
        let (mut a, a_result) = a_waits.await.expect("task");
        let deadlocked = a_result.err().or(b_result.err()).expect("one of the two transactions deadlocked");
        assert!(classify(deadlocked).is_transient(), "a deadlock is transient");
        let _ = a.execute("ROLLBACK").await;
        let _ = $b.execute("ROLLBACK").await;
        a
    }};
}

#[tokio::test]
async fn postgres_error_classes() {
    let Some(url) = backend("OUTBOX_TEST_POSTGRES_URL", "PostgreSQL") else { return };
    let table = unique_name("errors");
    let mut a = sqlx::PgConnection::connect(&url).await.expect("connect");
    let mut b = sqlx::PgConnection::connect(&url).await.expect("connect");
    a.execute(
        format!("CREATE TABLE {table} (id INT PRIMARY KEY, v INT); INSERT INTO {table} VALUES (1, 0), (2, 0)").as_str(),
    )
    .await
    .expect("table");

    // Unique violation: permanent.
    let unique = sqlx::query(&format!("INSERT INTO {table} VALUES (1, 0)")).execute(&mut a).await.expect_err("dup");
    assert!(!classify(unique).is_transient(), "a unique violation is permanent");

    // Lock not available (lock_timeout): transient.
    a.execute("BEGIN").await.expect("begin");
    a.execute(format!("UPDATE {table} SET v = 1 WHERE id = 1").as_str()).await.expect("lock row 1");
    b.execute("SET lock_timeout = '100ms'").await.expect("lock_timeout");
    let timeout = b.execute(format!("UPDATE {table} SET v = 2 WHERE id = 1").as_str()).await.expect_err("lock timeout");
    assert!(classify(timeout).is_transient(), "a lock timeout is transient");
    b.execute("SET lock_timeout = 0").await.expect("reset lock_timeout");

    // Deadlock: transient (for the transaction PostgreSQL aborts).
    let mut a = assert_deadlock_is_transient!(a, b, table);

    // A terminated connection: transient.
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut a).await.expect("pid");
    sqlx::query("SELECT pg_terminate_backend($1)").bind(pid).execute(&mut b).await.expect("terminate");
    let terminated = sqlx::query("SELECT 1").execute(&mut a).await.expect_err("terminated connection");
    assert!(classify(terminated).is_transient(), "a terminated connection is transient");

    b.execute(format!("DROP TABLE {table}").as_str()).await.expect("drop");
}

#[tokio::test]
async fn mysql_error_classes() {
    let Some(url) = backend("OUTBOX_TEST_MYSQL_URL", "MySQL / MariaDB") else { return };
    let table = unique_name("errors");
    let mut a = sqlx::MySqlConnection::connect(&url).await.expect("connect");
    let mut b = sqlx::MySqlConnection::connect(&url).await.expect("connect");
    a.execute(format!("CREATE TABLE {table} (id INT PRIMARY KEY, v INT) ENGINE = InnoDB").as_str())
        .await
        .expect("table");
    a.execute(format!("INSERT INTO {table} VALUES (1, 0), (2, 0)").as_str()).await.expect("rows");

    // Unique violation: permanent.
    let unique = sqlx::query(&format!("INSERT INTO {table} VALUES (1, 0)")).execute(&mut a).await.expect_err("dup");
    assert!(!classify(unique).is_transient(), "a duplicate key is permanent");

    // Lock wait timeout (1205): transient.
    a.execute("BEGIN").await.expect("begin");
    a.execute(format!("UPDATE {table} SET v = 1 WHERE id = 1").as_str()).await.expect("lock row 1");
    b.execute("SET SESSION innodb_lock_wait_timeout = 1").await.expect("timeout");
    let timeout =
        b.execute(format!("UPDATE {table} SET v = 2 WHERE id = 1").as_str()).await.expect_err("lock wait timeout");
    assert!(classify(timeout).is_transient(), "a lock wait timeout is transient");

    // Deadlock (1213): transient.
    let mut a = assert_deadlock_is_transient!(a, b, table);

    // A killed connection: transient.
    let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()").fetch_one(&mut a).await.expect("id");
    b.execute(format!("KILL {id}").as_str()).await.expect("kill");
    let killed = sqlx::query("SELECT 1").execute(&mut a).await.expect_err("killed connection");
    assert!(classify(killed).is_transient(), "a killed connection is transient");

    b.execute(format!("DROP TABLE {table}").as_str()).await.expect("drop");
}

#[tokio::test]
async fn sqlite_error_classes() {
    let path = std::env::temp_dir().join(format!("{}.db", unique_name("outbox_errors")));
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut a = sqlx::SqliteConnection::connect(&url).await.expect("open");
    let mut b = sqlx::SqliteConnection::connect(&url).await.expect("open");
    a.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER); INSERT INTO t VALUES (1, 0)").await.expect("table");

    // Unique violation: permanent.
    let unique = sqlx::query("INSERT INTO t VALUES (1, 0)").execute(&mut a).await.expect_err("dup");
    assert!(!classify(unique).is_transient(), "a unique violation is permanent");

    // Busy (another connection holds the write lock, no busy timeout): transient.
    a.execute("BEGIN IMMEDIATE").await.expect("write lock");
    b.execute("PRAGMA busy_timeout = 0").await.expect("busy_timeout");
    let busy = b.execute("UPDATE t SET v = 2 WHERE id = 1").await.expect_err("busy");
    assert!(classify(busy).is_transient(), "a busy database is transient");
    a.execute("ROLLBACK").await.expect("rollback");

    drop((a, b));
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

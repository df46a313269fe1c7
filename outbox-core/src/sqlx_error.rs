//! `?` on a [`sqlx::Error`] in a function that returns the SDK's [`Error`] (feature `sqlx`): the
//! error becomes an [`Error::Store`], transient or permanent by the database's own error codes
//! (features `sqlx-postgres`, `sqlx-mysql`, `sqlx-sqlite`; the `outbox` crate turns on the ones
//! its database features need).

use crate::error::Error;

impl From<sqlx::Error> for Error {
    /// An [`Error::Store`] for the operation `statement`; see [`Error::from_sqlx`].
    fn from(e: sqlx::Error) -> Self {
        Error::from_sqlx("statement", e)
    }
}

impl Error {
    /// An [`Error::Store`] for `operation`, transient when a retry of the same work may succeed
    /// (connection lost, pool timeout, deadlock, serialization failure, lock timeout).
    pub fn from_sqlx(operation: &'static str, e: sqlx::Error) -> Self {
        let transient = sqlx_error_is_transient(&e);
        Error::store(operation, transient, e)
    }
}

/// Whether a retry of the work that failed with `e` may succeed.
pub fn sqlx_error_is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => database_error_is_transient(db.as_ref()),
        _ => false,
    }
}

/// Whether a retry of the same work may succeed, by each database's own error codes.
#[cfg_attr(
    not(any(feature = "sqlx-postgres", feature = "sqlx-mysql", feature = "sqlx-sqlite")),
    allow(unused_variables)
)]
fn database_error_is_transient(db: &dyn sqlx::error::DatabaseError) -> bool {
    #[cfg(feature = "sqlx-postgres")]
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        let code = pg.code();
        // Serialization failure, deadlock, lock not available (`lock_timeout`); the connection
        // exception class; operator intervention (terminated backend, shutdown, cannot connect now).
        return matches!(code, "40001" | "40P01" | "55P03") || code.starts_with("08") || code.starts_with("57P");
    }
    #[cfg(feature = "sqlx-mysql")]
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        // Lock wait timeout, deadlock, too many connections, server shutting down, connection
        // killed (MariaDB), server gone away, connection lost.
        return matches!(my.number(), 1205 | 1213 | 1040 | 1053 | 1927 | 2006 | 2013);
    }
    #[cfg(feature = "sqlx-sqlite")]
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // SQLITE_BUSY and SQLITE_LOCKED with their extended codes (recovery, snapshot, shared cache).
        return matches!(db.code().as_deref(), Some("5" | "6" | "261" | "262" | "517"));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_mark_turns_a_sqlx_error_into_a_store_error() {
        fn run() -> crate::Result<()> {
            Err(sqlx::Error::PoolTimedOut)?;
            Ok(())
        }
        let error = run().unwrap_err();
        assert!(matches!(error, Error::Store { operation: "statement", .. }), "{error:?}");
        assert!(error.is_transient());
        assert!(!Error::from(sqlx::Error::RowNotFound).is_transient());
    }
}

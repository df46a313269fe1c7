//! A [`StoreHarness`] over [`SqliteStore`]: a fresh database file and tables per harness.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use outbox_engine::Result;
use outbox_sqlx::sqlite::SqliteStore;
use outbox_sqlx::StoreOptions;

use crate::env::unique_name;
#[allow(unused_imports)]
use crate::StoreHarness;

/// A harness on its own database file in the temp directory, deleted when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct SqliteHarness {
    store: SqliteStore,
    _file: Arc<DatabaseFile>,
}

/// A database file (with its `-wal` and `-shm` companions) deleted on drop. On Unix a connection
/// still open keeps working on the unlinked file.
#[derive(Debug)]
struct DatabaseFile(PathBuf);

impl Drop for DatabaseFile {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

impl SqliteHarness {
    /// A store on a new database file with unique, migrated tables.
    pub async fn new() -> Self {
        Self::with_options(StoreOptions::default()).await
    }

    /// The same with `options` (the table prefix is replaced by a unique one).
    pub async fn with_options(options: StoreOptions) -> Self {
        let path = std::env::temp_dir().join(format!("{}.db", unique_name("outbox_test")));
        let file = Arc::new(DatabaseFile(path.clone()));
        let base = SqliteStore::connect(&format!("sqlite://{}", path.display())).await.expect("open SQLite");
        let options = options.table_prefix(&unique_name("t")).expect("valid prefix");
        let store = SqliteStore::new(base.pool().clone(), options).expect("store");
        store.migrate().await.expect("migrate");
        Self { store, _file: file }
    }

    /// The store.
    pub fn sqlite_store(&self) -> &SqliteStore {
        &self.store
    }
}

crate::store_suite::sqlx_harness!(SqliteHarness, store, {
    async fn with_retention(&self, retention: Duration) -> Box<dyn StoreHarness> {
        Box::new(Self::with_options(StoreOptions::default().retention(retention)).await)
    }

    fn store_with_prefix(&self, prefix: &str) -> Option<Result<()>> {
        let build = || -> Result<()> {
            let options = StoreOptions::default().table_prefix(prefix)?;
            SqliteStore::new(self.store.pool().clone(), options).map(|_| ())
        };
        Some(build())
    }
});

impl crate::store_suite::IntoHarness for SqliteHarness {
    type Harness = Self;
    fn into_harness(self) -> Option<Self> {
        Some(self)
    }
}

//! SQLite and MySQL have no commit-time notification: they wake a relay of the same process when a
//! message is enqueued, before its transaction commits. A commit that comes later than that wake-up
//! must still be published soon, not at the next regular poll. On MySQL the relay's claim does not
//! see the open transaction's row, so the relay polls again soon after an empty claim that followed
//! a wake-up; on SQLite the claim, a write, waits behind the open write transaction (one writer).
#![cfg(any(feature = "sqlite", feature = "mysql"))]

use std::future::Future;
use std::time::{Duration, Instant};

use outbox_engine::memory::MemoryPublisher;
use outbox_engine::{CancellationToken, Dispatcher, Relay, Store};

const POLL: Duration = Duration::from_secs(30);
const HELD_OPEN: Duration = Duration::from_millis(300);

/// Starts an idle relay on `store` (one worker polling every 30 s), runs `transaction` (which
/// enqueues one message, holds its transaction open for [`HELD_OPEN`], then commits) and returns how
/// long after the commit the message was published.
async fn published_after_commit<F, Fut>(store: impl Store, transaction: F) -> Duration
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let publisher = MemoryPublisher::new();
    let relay = Relay::builder(store, publisher.clone()).concurrency(1).poll_interval(POLL).build().expect("relay");
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (relay, shutdown) = (relay.clone(), shutdown.clone());
        async move { relay.run(shutdown).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await; // idle: the first claim found nothing
    transaction().await;
    let committed = Instant::now();
    assert_eq!(publisher.published_len(), 0, "published before the commit");
    while publisher.published_len() == 0 && committed.elapsed() < POLL * 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let waited = committed.elapsed();
    shutdown.cancel();
    running.await.expect("task").expect("run");
    assert_eq!(publisher.published_len(), 1, "never published");
    waited
}

/// Enqueues one message on `$store` (a SQL store), holds the transaction open, commits, and checks
/// that the message was published soon after the commit.
macro_rules! a_late_commit_is_published_soon {
    ($store:expr) => {{
        use outbox_engine::{Enqueue, NewMessage};
        let store = $store;
        let waited = published_after_commit(store.clone(), || async {
            let mut tx = store.pool().begin().await.expect("begin");
            store.enqueue(&mut *tx, NewMessage::new("t", "late")).await.expect("enqueue");
            tokio::time::sleep(HELD_OPEN).await;
            tx.commit().await.expect("commit");
        })
        .await;
        assert!(waited < Duration::from_secs(5), "published {waited:?} after the commit: by the poll, not soon after");
    }};
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_a_commit_later_than_its_wake_up_is_published_soon() {
    let h = outbox_testkit::sqlite::SqliteHarness::new().await;
    a_late_commit_is_published_soon!(h.sqlite_store().clone());
}

#[cfg(feature = "mysql")]
#[tokio::test]
async fn mysql_a_commit_later_than_its_wake_up_is_published_soon() {
    let Some(h) = outbox_testkit::mysql::MySqlHarness::new().await else { return };
    a_late_commit_is_published_soon!(h.mysql_store().clone());
}

//! The store suite against SQLite (an embedded database file; no service needed), and how SQLite's
//! claim looks past a window of keys in flight.
#![cfg(feature = "sqlite")]
use std::time::Duration;

use outbox_engine::{Enqueue, NewMessage, RelayId, Store};
use outbox_testkit::sqlite::SqliteHarness;

outbox_testkit::store_suite!(sqlite, SqliteHarness::new);

/// A claim whose window holds the heads of many keys, all in flight, does not look up every key's
/// head on each claim (it would find them leased), only once a second: a head beyond the window
/// waits at most that long.
#[tokio::test]
async fn a_window_of_heads_in_flight_is_looked_past_once_a_second() {
    let h = SqliteHarness::new().await;
    let store = h.sqlite_store();
    let keys = ["a", "b", "c", "d", "e"];
    let mut messages: Vec<NewMessage> =
        keys.iter().chain(&keys).map(|key| NewMessage::new("t", b"x".to_vec()).key(*key)).collect();
    messages.push(NewMessage::new("t", b"x".to_vec()).key("beyond"));
    let mut tx = store.pool().begin().await.expect("begin");
    let ids = store.enqueue_batch(&mut tx, messages).await.expect("enqueue");
    tx.commit().await.expect("commit");
    let lease = Duration::from_secs(60);

    let first = store.claim(RelayId::new(), 5, lease).await.expect("claim");
    assert_eq!(first.iter().map(|m| m.id).collect::<Vec<_>>(), ids[..5], "the five heads");
    // The next window (4 + 1 rows) is the five heads, in flight, one a key.
    let second = store.claim(RelayId::new(), 4, lease).await.expect("claim");
    assert!(second.is_empty(), "within the second, the window is not looked past: {second:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let third = store.claim(RelayId::new(), 4, lease).await.expect("claim");
    assert_eq!(third.iter().map(|m| m.id).collect::<Vec<_>>(), [ids[10]], "the head beyond the window");
}

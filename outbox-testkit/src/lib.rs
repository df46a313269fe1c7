//! # outbox-testkit
//!
//! Conformance suites that prove a [`Store`](outbox_engine::Store) keeps every guarantee of the outbox
//! contract. The checks are plain `pub async fn`s over a [`StoreHarness`]; the [`store_suite!`] macro
//! stamps each of them into its own named `#[tokio::test]`, so no backend silently skips one.
//!
//! ```ignore
//! // tests/my_store.rs
//! outbox_testkit::store_suite!(my_store, || async { MyHarness::new().await });
//! ```
//!
//! A harness gives the suite a fresh, isolated store (its own tables) and a way to enqueue in a real
//! transaction that commits or rolls back. [`memory::MemoryHarness`] is the reference; the SQL stores'
//! harnesses live behind the `sqlite`, `postgres` and `mysql` features.
#![deny(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]

pub mod brokers;
#[cfg(feature = "chaos")]
pub mod chaos;
#[cfg(feature = "testcontainers")]
pub mod containers;
pub mod env;
pub mod memory;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod publisher_suite;
pub mod relay_suite;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod store_suite;

pub use publisher_suite::PublisherHarness;
pub use store_suite::StoreHarness;

/// Stamps every check of [`mod@publisher_suite`] into a named `#[tokio::test]` in a module `$name`.
/// `$make` returns a future of `Option<harness>` (`None`: the backend is skipped, see [`env::backend`]).
/// A check a backend cannot run is listed after `not_applicable:` with the reason; it still becomes a
/// named test, which prints that reason, so the difference is declared, never silent.
#[macro_export]
macro_rules! publisher_suite {
    ($name:ident, $make:expr $(, not_applicable: [$($skip:ident => $why:literal),+ $(,)?])?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::publisher_suite!(@tests $make;
                [delivers_messages_intact_in_per_key_order,
                 partial_failure_is_reported_per_message,
                 unreachable_broker_is_a_prompt_transient_error,
                 a_message_published_twice_is_stored_as_the_broker_promises,
                 recovers_after_the_connection_is_killed]
                [$($($skip => $why),+)?]);
        }
    };
    (@tests $make:expr; [$($check:ident),+] [$($skip:ident => $why:literal),*]) => {
        const NOT_APPLICABLE: &[(&str, &str)] = &[$((stringify!($skip), $why)),*];
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                if let Some((_, why)) = NOT_APPLICABLE.iter().find(|(name, _)| *name == stringify!($check)) {
                    eprintln!("NOT APPLICABLE to this backend: {}: {why}", stringify!($check));
                    return;
                }
                let _guard = $crate::publisher_suite::check_guard(stringify!($check)).await;
                if let Some(harness) = ($make)().await {
                    $crate::publisher_suite::$check(&harness).await;
                }
            }
        )+
    };
}

/// Stamps every check of [`mod@store_suite`] into a named `#[tokio::test]` in a module `$name`.
/// `$make` is a closure or function returning a future of a harness, or of `Option<harness>` where
/// `None` means the backend is skipped by `OUTBOX_TEST_SKIP` (see [`env::backend`]).
#[macro_export]
macro_rules! store_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::store_suite!(@tests $make;
                commit_makes_visible_and_rollback_leaves_nothing,
                a_committed_message_is_claimed_once,
                concurrent_claimers_never_share_a_message,
                an_expired_lease_is_taken_over,
                lease_holder_fencing,
                released_claims_are_claimable_at_once,
                retry_schedule_is_honoured,
                dead_letters_are_listed_replayed_and_purged,
                idempotency_key_stores_one_message,
                key_runs_in_enqueue_order,
                heads_behind_a_long_queue_of_one_key_are_claimed,
                key_slices_partition_the_keys,
                a_claim_behind_a_batch_takes_its_keys_next_messages,
                payloads_and_headers_round_trip,
                a_large_batch_is_stored_in_order,
                a_batch_of_large_messages_is_stored_whole,
                a_delayed_message_waits_for_its_time,
                invalid_messages_are_rejected_and_change_nothing,
                retention_keeps_then_purges_published_messages,
                stats_report_the_backlog,
                inbox_applies_each_message_once,
                bad_table_names_are_rejected,
                dead_letters_are_searched_filtered_and_paged,
                pending_messages_are_listed_by_state_and_blocked_keys_are_found,
                the_relay_registry_lists_live_relays_and_their_claims,
                four_relays_keep_per_key_order_under_failures
            );
        }
    };
    (@tests $make:expr; $($check:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                if let Some(harness) = $crate::store_suite::IntoHarness::into_harness(($make)().await) {
                    $crate::store_suite::$check(&harness).await;
                }
            }
        )+
    };
}

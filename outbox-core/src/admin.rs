//! Operator queries beside the relay's [`Store`](crate::Store): dead-letter search with filters and
//! keyset paging, one dead letter by id, counts. `outbox dead ...` and the dashboard use them; the
//! relay never does, so its hot path stays small.
//!
//! ```
//! use outbox_engine::admin::DeadLetterFilter;
//! use outbox_engine::memory::MemoryStore;
//! use outbox_engine::Store;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> outbox_engine::Result<()> {
//! let store = MemoryStore::new();
//! let admin = store.admin().expect("the memory store has operator queries");
//! let filter = DeadLetterFilter::new().topic("orders.placed").error_contains("timeout");
//! let page = admin.search_dead_letters(&filter, None, 50).await?;
//! assert!(page.items.is_empty() && page.next.is_none());
//! assert_eq!(admin.count_dead_letters(&filter).await?, 0);
//! # Ok(()) }
//! ```

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::{DeadLetter, Message, MessageId, Result};

/// Which dead letters a search takes: every condition set must hold (none set: all of them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetterFilter {
    /// Only this topic (exact).
    pub topic: Option<String>,
    /// Only this ordering key (exact).
    pub key: Option<String>,
    /// Only those whose error contains this text, ignoring ASCII case.
    pub error_contains: Option<String>,
    /// Only those parked at or before this instant.
    pub dead_before: Option<DateTime<Utc>>,
}

impl DeadLetterFilter {
    /// A filter that takes every dead letter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only this topic.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Only this ordering key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Only those whose error contains `text` (ASCII case ignored).
    pub fn error_contains(mut self, text: impl Into<String>) -> Self {
        self.error_contains = Some(text.into());
        self
    }

    /// Only those parked at or before `instant`.
    pub fn dead_before(mut self, instant: DateTime<Utc>) -> Self {
        self.dead_before = Some(instant);
        self
    }

    /// Whether `dead` passes the filter (what every store's query computes; for in-memory stores).
    pub fn matches(&self, dead: &DeadLetter) -> bool {
        self.topic.as_ref().is_none_or(|topic| &dead.message.topic == topic)
            && self.key.as_ref().is_none_or(|key| dead.message.key.as_ref() == Some(key))
            && self
                .error_contains
                .as_ref()
                .is_none_or(|text| dead.error.to_ascii_lowercase().contains(&text.to_ascii_lowercase()))
            && self.dead_before.is_none_or(|before| dead.dead_at <= before)
    }
}

/// Where a listing goes on: pass a page's [`next`](DeadLetterPage::next) to get the page after it.
/// Opaque; its text form (`Display` / `FromStr`) can travel in a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor(u64);

impl Cursor {
    /// A cursor after the row with this position (for store implementations: the dead-letter
    /// table's sequence number).
    pub const fn after(position: u64) -> Self {
        Self(position)
    }

    /// The position it stands after (for store implementations).
    pub const fn position(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Cursor {
    type Err = std::num::ParseIntError;

    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        text.parse().map(Self)
    }
}

/// One page of a listing, in the table's order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Page<T> {
    /// The rows on this page.
    pub items: Vec<T>,
    /// The cursor of the next page, `None` on the last one.
    pub next: Option<Cursor>,
}

impl<T> Page<T> {
    /// A page from its parts (for store implementations).
    pub fn new(items: Vec<T>, next: Option<Cursor>) -> Self {
        Self { items, next }
    }
}

impl<T> Default for Page<T> {
    fn default() -> Self {
        Self { items: Vec::new(), next: None }
    }
}

/// One page of a dead-letter search, in the order they were parked.
pub type DeadLetterPage = Page<DeadLetter>;

/// One page of unpublished messages, in enqueue order.
pub type MessagePage = Page<PendingMessage>;

/// Which unpublished messages a listing takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageState {
    /// Every message not yet published (leased, retrying and scheduled ones included).
    #[default]
    Pending,
    /// Those that failed at least once and wait for their next attempt.
    Retrying,
    /// Those never attempted whose enqueue delay has not passed yet.
    Scheduled,
}

/// Which unpublished messages a listing takes: a state, and optionally one topic and one key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MessageFilter {
    /// The state.
    pub state: MessageState,
    /// Only this topic (exact).
    pub topic: Option<String>,
    /// Only this ordering key (exact).
    pub key: Option<String>,
}

impl MessageFilter {
    /// Messages in `state`, any topic and key.
    pub fn new(state: MessageState) -> Self {
        Self { state, topic: None, key: None }
    }

    /// Only this topic.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Only this ordering key.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
}

/// An unpublished message as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingMessage {
    /// The message (`attempts` made so far, `last_error` of the last failed one).
    pub message: Message,
    /// When it is (or was) due for its next attempt.
    pub available_at: DateTime<Utc>,
}

impl PendingMessage {
    /// From its parts (for store implementations).
    pub fn new(message: Message, available_at: DateTime<Utc>) -> Self {
        Self { message, available_at }
    }
}

/// A key held back by its oldest unpublished message, which has failed and waits for a retry: none
/// of the key's later messages is published before it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlockedKey {
    /// The ordering key.
    pub key: String,
    /// Its oldest unpublished message, with its last error and next attempt.
    pub head: PendingMessage,
    /// How many of the key's messages wait behind it.
    pub waiting: u64,
}

impl BlockedKey {
    /// From its parts (for store implementations).
    pub fn new(key: String, head: PendingMessage, waiting: u64) -> Self {
        Self { key, head, waiting }
    }
}

/// Operator queries over one outbox. A store that has them returns itself from
/// [`Store::admin`](crate::Store::admin). Searches page by key (the dead-letter table's sequence),
/// never by offset, so a page costs the same however deep it is.
#[async_trait]
pub trait Admin: Send + Sync {
    /// Up to `limit` (at most [`MAX_PAGE`]) dead letters that pass `filter`, parked after `after`
    /// (from the start when `None`), in the order they were parked. A `limit` of 0 is an
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig).
    async fn search_dead_letters(
        &self,
        filter: &DeadLetterFilter,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<DeadLetterPage>;

    /// How many dead letters pass `filter`.
    async fn count_dead_letters(&self, filter: &DeadLetterFilter) -> Result<u64>;

    /// The dead letter with this message id, if there is one.
    async fn dead_letter_by_id(&self, id: MessageId) -> Result<Option<DeadLetter>>;

    /// Up to `limit` (at most [`MAX_PAGE`]) unpublished messages that pass `filter`, enqueued after
    /// `after`, in enqueue order.
    async fn search_messages(&self, filter: &MessageFilter, after: Option<Cursor>, limit: usize)
        -> Result<MessagePage>;

    /// Up to `limit` keys held back by a failed oldest message, the longest held first.
    async fn blocked_keys(&self, limit: usize) -> Result<Vec<BlockedKey>>;
}

/// The most rows a page holds, whatever limit a search asks for.
pub const MAX_PAGE: usize = 10_000;

/// A search's page size from the `limit` it asked for: at least 1 (else an
/// [`Error::InvalidConfig`](crate::Error::InvalidConfig)), at most [`MAX_PAGE`] (for store implementations).
pub fn page_limit(limit: usize) -> Result<usize> {
    if limit == 0 {
        return Err(crate::Error::invalid_config("a listing needs a limit of at least 1"));
    }
    Ok(limit.min(MAX_PAGE))
}

/// The page a store returns from `rows` fetched with `limit + 1`: the extra row only says that
/// another page follows (for store implementations).
pub fn page_from<T>(mut rows: Vec<(u64, T)>, limit: usize) -> Page<T> {
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more { rows.last().map(|(position, _)| Cursor::after(*position)) } else { None };
    Page::new(rows.into_iter().map(|(_, row)| row).collect(), next)
}

#[cfg(test)]
mod tests {
    use super::*;
    fn dead(topic: &str, key: Option<&str>, error: &str) -> DeadLetter {
        let message = Message {
            id: MessageId::new(),
            topic: topic.to_owned(),
            key: key.map(str::to_owned),
            payload: b"x".to_vec(),
            headers: Default::default(),
            created_at: Utc::now(),
            attempts: 1,
            last_error: None,
        };
        DeadLetter { message, error: error.to_owned(), dead_at: Utc::now() }
    }

    #[test]
    fn a_filter_takes_what_every_set_condition_allows() {
        let d = dead("orders", Some("o-1"), "Broker said: Unknown Topic");
        assert!(DeadLetterFilter::new().matches(&d));
        assert!(DeadLetterFilter::new().topic("orders").error_contains("unknown topic").matches(&d));
        assert!(!DeadLetterFilter::new().topic("order").matches(&d));
        assert!(DeadLetterFilter::new().key("o-1").matches(&d));
        assert!(!DeadLetterFilter::new().key("o-2").matches(&d));
        assert!(!DeadLetterFilter::new().error_contains("timeout").matches(&d));
        assert!(!DeadLetterFilter::new().dead_before(d.dead_at - chrono::Duration::seconds(1)).matches(&d));
        assert!(DeadLetterFilter::new().dead_before(d.dead_at).matches(&d));
    }

    #[test]
    fn a_page_has_a_next_cursor_only_when_a_row_beyond_it_was_fetched() {
        let rows: Vec<_> = (1..=3).map(|n| (n, dead("t", None, "e"))).collect();
        let page = page_from(rows.clone(), 2);
        assert_eq!((page.items.len(), page.next), (2, Some(Cursor::after(2))));
        let last = page_from(rows, 3);
        assert_eq!((last.items.len(), last.next), (3, None));
        assert_eq!("42".parse::<Cursor>().unwrap(), Cursor::after(42));
        assert!("x".parse::<Cursor>().is_err());
    }
}

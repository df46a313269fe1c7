//! The SQL of the operator queries ([`outbox_engine::Admin`]), shared by the three stores: a search
//! is built from fixed fragments, and every value the filter carries is bound, never spliced.

use outbox_engine::admin::page_from;
use outbox_engine::{Cursor, DeadLetterFilter, MessageFilter, MessageState};
use sqlx::{Database, Encode, IntoArguments, QueryBuilder, Type};

/// How one backend writes the searches: its substring function (`strpos` or `instr`, both
/// `(haystack, needle)`), its form of an instant, and its current instant in the messages table's
/// form.
pub(crate) struct Dialect<T> {
    pub(crate) find: &'static str,
    pub(crate) instant: fn(chrono::DateTime<chrono::Utc>) -> T,
    pub(crate) now: &'static str,
}

/// The unpublished messages of `messages`, each row `seq`, the message's columns as
/// `decode_message` reads them, and `available_at`.
pub(crate) fn select_pending_sql(messages: &str) -> String {
    format!(
        "SELECT seq, id, topic, msg_key, payload, headers, created_at, attempts, last_error, available_at \
         FROM {messages} WHERE published_at IS NULL"
    )
}

/// The keys whose oldest unpublished message has failed: that message (as `select_pending_sql`)
/// and the count of the key's messages behind it, oldest first; a page's limit is appended.
pub(crate) fn blocked_keys_sql(messages: &str) -> String {
    format!(
        "SELECT h.seq, h.id, h.topic, h.msg_key, h.payload, h.headers, h.created_at, h.attempts, h.last_error, \
         h.available_at, (SELECT COUNT(*) FROM {messages} w WHERE w.msg_key = h.msg_key AND w.published_at IS NULL \
         AND w.seq > h.seq) FROM {messages} h WHERE h.published_at IS NULL AND h.msg_key IS NOT NULL \
         AND h.last_error IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {messages} e WHERE e.msg_key = h.msg_key \
         AND e.published_at IS NULL AND e.seq < h.seq) ORDER BY h.seq LIMIT "
    )
}

/// Appends the conditions of `filter` (and rows after `after`) to `query`, which ends in
/// `select_pending_sql`'s `WHERE`.
pub(crate) fn push_message_filter<'a, DB, T>(
    query: &mut QueryBuilder<'a, DB>,
    filter: &'a MessageFilter,
    dialect: &Dialect<T>,
    after: Option<Cursor>,
) where
    DB: Database,
    DB::Arguments<'a>: IntoArguments<'a, DB>,
    &'a str: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
{
    match filter.state {
        MessageState::Retrying => {
            query.push(" AND last_error IS NOT NULL");
        }
        MessageState::Scheduled => {
            query.push(format_args!(" AND last_error IS NULL AND attempts = 0 AND available_at > {}", dialect.now));
        }
        _ => {}
    }
    if let Some(topic) = &filter.topic {
        query.push(" AND topic = ").push_bind(topic.as_str());
    }
    if let Some(key) = &filter.key {
        query.push(" AND msg_key = ").push_bind(key.as_str());
    }
    if let Some(cursor) = after {
        query.push(" AND seq > ").push_bind(i64::try_from(cursor.position()).unwrap_or(i64::MAX));
    }
}

/// Appends ` WHERE ...` for `filter` (and rows after `after`) to `query`, which selects from the
/// dead-letter table.
pub(crate) fn push_dead_filter<'a, DB, T>(
    query: &mut QueryBuilder<'a, DB>,
    filter: &'a DeadLetterFilter,
    dialect: &Dialect<T>,
    after: Option<Cursor>,
) where
    DB: Database,
    DB::Arguments<'a>: IntoArguments<'a, DB>,
    &'a str: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
    T: 'a + Encode<'a, DB> + Type<DB>,
{
    query.push(" WHERE 1 = 1");
    if let Some(topic) = &filter.topic {
        query.push(" AND topic = ").push_bind(topic.as_str());
    }
    if let Some(key) = &filter.key {
        query.push(" AND msg_key = ").push_bind(key.as_str());
    }
    if let Some(text) = &filter.error_contains {
        query.push(format_args!(" AND {}(lower(error), lower(", dialect.find)).push_bind(text.as_str()).push(")) > 0");
    }
    if let Some(before) = filter.dead_before {
        query.push(" AND dead_at <= ").push_bind((dialect.instant)(before));
    }
    if let Some(cursor) = after {
        query.push(" AND seq > ").push_bind(i64::try_from(cursor.position()).unwrap_or(i64::MAX));
    }
}

/// Appends the order and the limit of one page (one row more than `limit`, which says whether
/// another page follows).
pub(crate) fn push_page<'a, DB>(query: &mut QueryBuilder<'a, DB>, limit: usize)
where
    DB: Database,
    DB::Arguments<'a>: IntoArguments<'a, DB>,
    i64: Encode<'a, DB> + Type<DB>,
{
    query.push(" ORDER BY seq LIMIT ").push_bind(i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX));
}

/// The page from rows of `(seq, item)` fetched after [`push_page`].
pub(crate) fn page<T>(rows: Vec<(i64, T)>, limit: usize) -> outbox_engine::Page<T> {
    page_from(rows.into_iter().map(|(seq, dead)| (u64::try_from(seq).unwrap_or(0), dead)).collect(), limit)
}

/// Implements [`outbox_engine::Admin`] for a store whose `inner` holds `pool` and `sql` (with
/// `select_dead` and `count_dead`), given its database, its [`Dialect`], how it binds a message id and
/// its `decode_dead(row) -> Result<(i64, DeadLetter)>`.
macro_rules! impl_admin {
    // One page of `sql` with `push_filter`'s conditions, rows decoded by `decode`.
    (@page $self:ident, $db:ty, $dialect:expr, $sql:ident, $push_filter:ident, $decode:ident, $op:literal,
     $filter:ident, $after:ident, $limit:ident) => {{
        let limit = outbox_engine::admin::page_limit($limit)?;
        let mut query = sqlx::QueryBuilder::<$db>::new(&$self.inner.sql.$sql);
        $crate::admin::$push_filter(&mut query, $filter, &$dialect, $after);
        $crate::admin::push_page(&mut query, limit);
        let rows = query.build().fetch_all(&$self.inner.pool).await.map_err(|e| $crate::sql_error($op, e))?;
        let rows = rows.iter().map($decode).collect::<outbox_engine::Result<_>>()?;
        Ok($crate::admin::page(rows, limit))
    }};
    ($store:ty, $db:ty, $dialect:expr, $bind_id:expr) => {
        #[async_trait::async_trait]
        impl outbox_engine::Admin for $store {
            async fn search_dead_letters(
                &self,
                filter: &outbox_engine::DeadLetterFilter,
                after: Option<outbox_engine::Cursor>,
                limit: usize,
            ) -> outbox_engine::Result<outbox_engine::DeadLetterPage> {
                $crate::admin::impl_admin!(@page self, $db, $dialect, select_dead, push_dead_filter, decode_dead,
                    "search_dead_letters", filter, after, limit)
            }

            async fn count_dead_letters(&self, filter: &outbox_engine::DeadLetterFilter) -> outbox_engine::Result<u64> {
                let mut query = sqlx::QueryBuilder::<$db>::new(&self.inner.sql.count_dead);
                $crate::admin::push_dead_filter(&mut query, filter, &$dialect, None);
                let count: i64 = query
                    .build_query_scalar()
                    .fetch_one(&self.inner.pool)
                    .await
                    .map_err(|e| $crate::sql_error("count_dead_letters", e))?;
                Ok(u64::try_from(count).unwrap_or(0))
            }

            async fn dead_letter_by_id(
                &self,
                id: outbox_engine::MessageId,
            ) -> outbox_engine::Result<Option<outbox_engine::DeadLetter>> {
                let mut query = sqlx::QueryBuilder::<$db>::new(&self.inner.sql.select_dead);
                query.push(" WHERE id = ").push_bind(($bind_id)(id));
                let row = query
                    .build()
                    .fetch_optional(&self.inner.pool)
                    .await
                    .map_err(|e| $crate::sql_error("dead_letter_by_id", e))?;
                row.as_ref().map(decode_dead).transpose().map(|found| found.map(|(_, dead)| dead))
            }

            async fn search_messages(
                &self,
                filter: &outbox_engine::MessageFilter,
                after: Option<outbox_engine::Cursor>,
                limit: usize,
            ) -> outbox_engine::Result<outbox_engine::MessagePage> {
                $crate::admin::impl_admin!(@page self, $db, $dialect, select_pending, push_message_filter,
                    decode_pending, "search_messages", filter, after, limit)
            }

            async fn blocked_keys(&self, limit: usize) -> outbox_engine::Result<Vec<outbox_engine::BlockedKey>> {
                let limit = outbox_engine::admin::page_limit(limit)?;
                let mut query = sqlx::QueryBuilder::<$db>::new(&self.inner.sql.blocked_keys);
                query.push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
                let rows = query
                    .build()
                    .fetch_all(&self.inner.pool)
                    .await
                    .map_err(|e| $crate::sql_error("blocked_keys", e))?;
                rows.iter()
                    .map(|row| {
                        let (_, head) = decode_pending(row)?;
                        let waiting: i64 =
                            sqlx::Row::try_get(row, 10).map_err(|e| $crate::sql_error("blocked_keys", e))?;
                        let key = head.message.key.clone().unwrap_or_default();
                        Ok(outbox_engine::BlockedKey::new(key, head, u64::try_from(waiting).unwrap_or(0)))
                    })
                    .collect()
            }
        }
    };
}
pub(crate) use impl_admin;

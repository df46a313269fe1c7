//! The SQL text of a MySQL / MariaDB store, built once from its table names.

use crate::StoreOptions;

use super::NOW;

pub(super) struct Sql {
    pub(super) schema: String,
    pub(super) messages: String,
    pub(super) dead: String,
    pub(super) insert: String,
    pub(super) insert_rows: Vec<(usize, String)>,
    pub(super) existing: String,
    pub(super) existing_dead: String,
    pub(super) candidates: String,
    pub(super) key_heads: String,
    pub(super) reschedule: String,
    pub(super) to_dead: String,
    pub(super) delete_owned: String,
    pub(super) list_dead: String,
    pub(super) select_dead: String,
    pub(super) select_pending: String,
    pub(super) blocked_keys: String,
    pub(super) count_scheduled: String,
    pub(super) purge_published: String,
    pub(super) stats: String,
    pub(super) count_dead: String,
    pub(super) inbox: String,
    pub(super) relay_heartbeat: String,
    pub(super) relays: String,
    pub(super) relay_deregister: String,
}

impl Sql {
    pub(super) fn new(options: &StoreOptions) -> Self {
        let t = &options.tables;
        let (m, d, i) =
            (t.qualified(&t.messages(), '`'), t.qualified(&t.dead_letters(), '`'), t.qualified(&t.inbox(), '`'));
        let r = t.qualified(&t.relays(), '`');
        let table_options = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";
        let ready = |alias: &str| {
            format!(
                "{alias}.published_at IS NULL AND {alias}.available_at <= {NOW} \
                 AND ({alias}.locked_until IS NULL OR {alias}.locked_until <= {NOW})"
            )
        };
        // A claim in a key slice (binds: slices, slices, this slice; 0 slices: every key) takes keyed
        // rows only of keys that hash into it.
        let in_slice = |alias: &str| format!("(? = 0 OR MOD(CRC32({alias}.msg_key), ?) = ?)");
        Self {
            schema: format!(
                r#"CREATE TABLE IF NOT EXISTS {m} (
    seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id CHAR(36) NOT NULL,
    topic VARCHAR(255) NOT NULL,
    msg_key VARCHAR(255) NULL,
    payload LONGBLOB NOT NULL,
    headers LONGTEXT NOT NULL,
    idempotency_key VARCHAR(255) NULL,
    created_at DATETIME(6) NOT NULL,
    available_at DATETIME(6) NOT NULL,
    attempts INT NOT NULL DEFAULT 0,
    last_error TEXT NULL,
    locked_by CHAR(36) NULL,
    locked_until DATETIME(6) NULL,
    published_at DATETIME(6) NULL,
    UNIQUE KEY uq_id (id),
    UNIQUE KEY uq_idempotency (idempotency_key),
    KEY ix_pending (published_at, seq),
    KEY ix_key (msg_key, published_at, seq)
) {table_options};
CREATE TABLE IF NOT EXISTS {d} (
    seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id CHAR(36) NOT NULL,
    topic VARCHAR(255) NOT NULL,
    msg_key VARCHAR(255) NULL,
    payload LONGBLOB NOT NULL,
    headers LONGTEXT NOT NULL,
    idempotency_key VARCHAR(255) NULL,
    created_at DATETIME(6) NOT NULL,
    attempts INT NOT NULL,
    error TEXT NOT NULL,
    dead_at DATETIME(6) NOT NULL,
    UNIQUE KEY uq_id (id),
    UNIQUE KEY uq_idempotency (idempotency_key)
) {table_options};
CREATE TABLE IF NOT EXISTS {i} (
    consumer VARCHAR(255) NOT NULL,
    message_id CHAR(36) NOT NULL,
    processed_at DATETIME(6) NOT NULL,
    PRIMARY KEY (consumer, message_id)
) {table_options};
CREATE TABLE IF NOT EXISTS {r} (
    id CHAR(36) NOT NULL PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    host VARCHAR(255) NOT NULL,
    pid BIGINT NOT NULL,
    started_at DATETIME(6) NOT NULL,
    heartbeat_at DATETIME(6) NOT NULL,
    published BIGINT NOT NULL DEFAULT 0
) {table_options}"#
            ),
            relay_heartbeat: format!(
                "INSERT INTO {r} (id, name, host, pid, published, started_at, heartbeat_at) \
                 VALUES (?, ?, ?, ?, ?, {NOW}, {NOW}) \
                 ON DUPLICATE KEY UPDATE heartbeat_at = {NOW}, published = VALUES(published)"
            ),
            relays: format!(
                "SELECT r.id, r.name, r.host, r.pid, r.started_at, r.heartbeat_at, \
                 (SELECT COUNT(*) FROM {m} o WHERE o.locked_by = r.id AND o.published_at IS NULL AND o.locked_until > {NOW}), \
                 r.published FROM {r} r WHERE r.heartbeat_at > DATE_SUB({NOW}, INTERVAL ? MICROSECOND) ORDER BY r.started_at"
            ),
            relay_deregister: format!("DELETE FROM {r} WHERE id = ?"),
            insert: format!(
                "INSERT INTO {m} (id, topic, msg_key, payload, headers, idempotency_key, created_at, available_at) \
                 VALUES (?, ?, ?, ?, ?, ?, {NOW}, DATE_ADD({NOW}, INTERVAL ? MICROSECOND))"
            ),
            // Multi-row inserts for batches without idempotency keys, largest first: a batch is cut
            // into powers of two (10 = 8 + 2), so it takes few statements and at most nine distinct
            // ones reach the prepared-statement cache.
            insert_rows: [256, 128, 64, 32, 16, 8, 4, 2, 1]
                .into_iter()
                .map(|n| {
                    let row = format!("(?, ?, ?, ?, ?, {NOW}, DATE_ADD({NOW}, INTERVAL ? MICROSECOND))");
                    let rows = vec![row; n].join(", ");
                    (n, format!("INSERT INTO {m} (id, topic, msg_key, payload, headers, created_at, available_at) VALUES {rows}"))
                })
                .collect(),
            existing: format!("SELECT id FROM {m} WHERE idempotency_key = ?"),
            existing_dead: format!("SELECT id FROM {d} WHERE idempotency_key = ?"),
            // Candidates (a consistent read, no locks): the oldest claimable keyless rows, and a window
            // of the oldest unfinished keyed rows, claimable or not, each flagged `ready` when it is
            // claimable. The window is a prefix of every unfinished keyed row in enqueue order, so a
            // key's first row in it is the key's oldest, and a row of the key that is leased or waits
            // for a retry is in it too: the store follows each key's run from its first row while
            // the rows are ready, with no probe per row. `kind` tells keyless and keyed apart.
            candidates: format!(
                "(SELECT k.seq, CAST(0 AS SIGNED) AS kind, k.msg_key, CAST(1 AS SIGNED) AS ready FROM {m} k \
                    WHERE k.msg_key IS NULL AND {ready_k} ORDER BY k.seq LIMIT ?) \
                 UNION ALL \
                 (SELECT w.seq, CAST(1 AS SIGNED) AS kind, w.msg_key, CAST(w.available_at <= {NOW} \
                    AND (w.locked_until IS NULL OR w.locked_until <= {NOW}) AS SIGNED) AS ready \
                  FROM {m} w WHERE w.msg_key IS NOT NULL AND w.published_at IS NULL AND {slice_w} ORDER BY w.seq LIMIT ?)",
                slice_w = in_slice("w"),
                ready_k = ready("k"),
            ),
            // Every key's head, with a loose index scan over (msg_key, published_at, seq) (`GROUP BY`
            // with `MIN`): O(keys), used only when the window is clogged with rows queued behind heads.
            key_heads: format!(
                "SELECT h.seq FROM (SELECT MIN(seq) AS seq FROM {m} WHERE published_at IS NULL AND msg_key IS NOT NULL \
                 GROUP BY msg_key) heads JOIN {m} h ON h.seq = heads.seq WHERE {ready_h} AND {slice_h} ORDER BY h.seq LIMIT ?",
                ready_h = ready("h"),
                slice_h = in_slice("h"),
            ),
            reschedule: format!(
                "UPDATE {m} SET locked_by = NULL, locked_until = NULL, \
                 available_at = DATE_ADD({NOW}, INTERVAL ? MICROSECOND), last_error = ? \
                 WHERE id = ? AND locked_by = ? AND published_at IS NULL"
            ),
            to_dead: format!(
                "INSERT INTO {d} (id, topic, msg_key, payload, headers, idempotency_key, created_at, attempts, error, dead_at) \
                 SELECT id, topic, msg_key, payload, headers, idempotency_key, created_at, attempts, ?, {NOW} FROM {m} \
                 WHERE id = ? AND locked_by = ? AND published_at IS NULL"
            ),
            delete_owned: format!("DELETE FROM {m} WHERE id = ? AND locked_by = ?"),
            list_dead: format!(
                "SELECT seq, id, topic, msg_key, payload, headers, created_at, attempts, error, error, dead_at \
                 FROM {d} ORDER BY seq LIMIT ?"
            ),
            select_pending: crate::admin::select_pending_sql(&m),
            blocked_keys: crate::admin::blocked_keys_sql(&m),
            select_dead: format!(
                "SELECT seq, id, topic, msg_key, payload, headers, created_at, attempts, error, error, dead_at FROM {d}"
            ),
            count_scheduled: format!(
                "SELECT COUNT(*) FROM {m} WHERE published_at IS NULL AND last_error IS NULL AND attempts = 0 \
                 AND available_at > {NOW}"
            ),
            purge_published: format!(
                "DELETE FROM {m} WHERE published_at IS NOT NULL \
                 AND published_at <= DATE_SUB({NOW}, INTERVAL ? MICROSECOND) ORDER BY published_at LIMIT ?"
            ),
            stats: format!(
                "SELECT COUNT(*), CAST(COALESCE(SUM(last_error IS NOT NULL), 0) AS SIGNED), \
                 TIMESTAMPDIFF(MICROSECOND, MIN(created_at), {NOW}) FROM {m} WHERE published_at IS NULL"
            ),
            count_dead: format!("SELECT COUNT(*) FROM {d}"),
            inbox: format!(
                // IGNORE only has the duplicate key to ignore: both values are validated before binding.
                "INSERT IGNORE INTO {i} (consumer, message_id, processed_at) VALUES (?, ?, {NOW})"
            ),
            messages: m,
            dead: d,
        }
    }

    pub(super) fn placeholders(n: usize) -> String {
        let mut s = String::with_capacity(n * 2);
        for i in 0..n {
            s.push_str(if i == 0 { "?" } else { ",?" });
        }
        s
    }

    pub(super) fn lock_rows(&self, n: usize) -> String {
        format!(
            "SELECT seq, id, topic, msg_key, payload, headers, created_at, attempts, last_error FROM {} \
             WHERE seq IN ({}) AND published_at IS NULL AND available_at <= {NOW} \
             AND (locked_until IS NULL OR locked_until <= {NOW}) ORDER BY seq FOR UPDATE SKIP LOCKED",
            self.messages,
            Self::placeholders(n)
        )
    }

    pub(super) fn set_lease(&self, n: usize) -> String {
        format!(
            "UPDATE {} SET locked_by = ?, locked_until = DATE_ADD({NOW}, INTERVAL ? MICROSECOND), attempts = attempts + 1 \
             WHERE seq IN ({})",
            self.messages,
            Self::placeholders(n)
        )
    }

    pub(super) fn by_ids(&self, prefix: &str, n: usize) -> String {
        format!("{prefix} id IN ({})", Self::placeholders(n))
    }
}

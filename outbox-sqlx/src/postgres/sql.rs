//! The SQL text of a PostgreSQL store, built once from its table names.

use crate::StoreOptions;

/// An interval of one millisecond, to multiply by a bound number of milliseconds.
pub(super) const MS: &str = "interval '1 millisecond'";

pub(super) struct Sql {
    pub(super) messages: String,
    pub(super) channel: String,
    pub(super) schema: String,
    pub(super) insert: String,
    pub(super) insert_keyless: String,
    pub(super) insert_rows: String,
    pub(super) existing: String,
    pub(super) existing_dead: String,
    pub(super) claim: String,
    pub(super) explain_claim: String,
    pub(super) extend: String,
    pub(super) release: String,
    pub(super) ack_delete: String,
    pub(super) ack_retain: String,
    pub(super) reschedule: String,
    pub(super) dead_letter: String,
    pub(super) list_dead: String,
    pub(super) select_dead: String,
    pub(super) select_pending: String,
    pub(super) blocked_keys: String,
    pub(super) count_scheduled: String,
    pub(super) replay: String,
    pub(super) delete_dead: String,
    pub(super) purge_published: String,
    pub(super) stats: String,
    pub(super) count_dead: String,
    pub(super) inbox: String,
    pub(super) relay_heartbeat: String,
    pub(super) relays: String,
    pub(super) relay_deregister: String,
    pub(super) waiters: String,
    pub(super) register_waiter: String,
}

impl Sql {
    pub(super) fn new(options: &StoreOptions) -> Self {
        let t = &options.tables;
        let (m, d, i) =
            (t.qualified(&t.messages(), '"'), t.qualified(&t.dead_letters(), '"'), t.qualified(&t.inbox(), '"'));
        let p = t.prefix().as_str();
        let r = t.qualified(&t.relays(), '"');
        let w = t.qualified(&t.waiters(), '"');
        // Claims and acknowledgements commit without waiting for the WAL flush unless asked to (see
        // `StoreOptions::durable_relay_commits`). `set_config(.., true)` lasts until the end of the
        // statement's own transaction, so the connection keeps its setting.
        let relay_commit = if options.durable_relay_commits {
            "true"
        } else {
            "(SELECT set_config('synchronous_commit', 'off', true)) = 'off'"
        };
        let channel = match t.schema() {
            Some(schema) => format!("{schema}_{p}_outbox"),
            None => format!("{p}_outbox"),
        };
        let create_schema =
            t.schema().map(|s| format!("CREATE SCHEMA IF NOT EXISTS {};\n", s.quoted('"'))).unwrap_or_default();
        let cols = "id, topic, msg_key, payload, headers, created_at, attempts, last_error";
        // The enqueue statements wake relays at commit unless asked not to (see
        // `StoreOptions::wake_ups`); without it they still take the channel as $7. They
        // notify only while a relay waits for one (a row of `{w}` not yet expired): a notifying
        // commit takes the database-wide notification lock, and a busy relay needs no wake-up.
        let notify = if options.wake_ups == crate::WakeUps::Notify {
            format!(", {}", notify_if_waited(&w, "$7"))
        } else {
            String::new()
        };
        // A claim must never scan the whole backlog. Keyless rows come oldest first from their own
        // partial index. Keyed rows come from a window (limit + 25%, read without locks) of the oldest
        // unfinished keyed rows of the claim's key slice, claimable or not: a prefix of them in enqueue
        // order, so a key's first row in it is the key's oldest, and a leased or retrying row of a key
        // shows in it. The window is the first rows of the claim's slice that a walk of the keyed
        // index from the oldest row meets; the walk stops once the window is full, or after twice
        // (limit + 25%) x slices rows of every key (so a slice can run ahead of the others). The
        // slice's filter stays outside that walk: the planner has no statistics for the slice's
        // hash and would rather read the whole table and sort it. Keys are grouped in byte order
        // (`COLLATE "C"`): only equality matters there, and a locale's comparison costs several
        // times as much.
        // Each key's run is its rows from the first while they are claimable, with `prv` the window's
        // previous row of the key; the run's rows are then locked with SKIP LOCKED. A row that another
        // claim took meanwhile is skipped, and the store hands back the rest of its key's run after
        // the claim (its `prv` no longer matches).
        // A claim behind a batch of the same relay ($8: that batch's ids, still leased to $1) passes
        // over that batch's rows as if they were done: a key's run may go on after them (the first
        // row after them has no `prv`), and they are not claimed again. The window grows by their
        // number.
        // Only when the window is clogged (it is full, yet yields fewer than `limit` rows and more
        // than `limit / 4` of its rows wait behind in-flight or retrying rows) and the store lets the
        // claim look past it ($7) is the head of every key looked up, with
        // a loose index scan over (msg_key, seq): O(keys) instead of O(backlog). The window's other
        // rows are unlocked when the statement ends. Keyless and keyed rows are disjoint, so only the
        // two keyed branches (a head can be in both) need de-duplicating.
        let ready = |alias: &str| {
            format!(
                "{alias}.published_at IS NULL AND {alias}.available_at <= now() \
                 AND ({alias}.locked_until IS NULL OR {alias}.locked_until <= now())"
            )
        };
        // A claim in a key slice ($5 slices, this one $6; $5 = 0: every key) takes keyed rows only of
        // keys that hash into it.
        let in_slice =
            |alias: &str| format!("mod(abs(hashtext({alias}.msg_key)::bigint), greatest($5::bigint, 1)) = $6::bigint");
        let claimable = format!(
            "WITH RECURSIVE \
             keyless AS (SELECT k.seq, k.ctid, NULL::bigint AS prv FROM {m} k WHERE k.msg_key IS NULL AND k.seq > $4 AND {ready_k} \
               ORDER BY k.seq LIMIT $3 FOR UPDATE SKIP LOCKED), \
             win AS MATERIALIZED (SELECT s.seq, s.ctid, s.msg_key, s.ready, s.id, s.locked_by FROM \
               (SELECT w.seq, w.ctid, w.msg_key, ({ready_w}) AS ready, w.id, w.locked_by FROM {m} w \
                 WHERE w.msg_key IS NOT NULL AND w.published_at IS NULL ORDER BY w.seq LIMIT {window} * greatest($5, 1) * 2) s \
               WHERE {slice_s} LIMIT {window}), \
             linked AS MATERIALIZED (SELECT w.seq, w.ctid, w.mine, \
               CASE WHEN lag(w.mine) OVER k THEN NULL ELSE lag(w.seq) OVER k END AS prv, bool_and(w.ready OR w.mine) OVER k AS unbroken \
               FROM (SELECT v.seq, v.ctid, v.msg_key, v.ready, (b.id IS NOT NULL AND v.locked_by = $1) AS mine \
                 FROM win v LEFT JOIN unnest($8::uuid[]) AS b(id) ON b.id = v.id) w \
               WINDOW k AS (PARTITION BY w.msg_key COLLATE \"C\" ORDER BY w.seq)), \
             locked AS MATERIALIZED (SELECT o.seq, o.ctid FROM {m} o WHERE o.ctid = ANY (ARRAY(SELECT ctid FROM linked WHERE unbroken AND NOT mine)) \
               AND o.msg_key IS NOT NULL AND {ready_o} FOR UPDATE OF o SKIP LOCKED), \
             runs AS MATERIALIZED (SELECT k.seq, k.ctid, l.prv FROM locked k JOIN linked l ON l.seq = k.seq), \
             clogged AS MATERIALIZED (SELECT $7::boolean AND (SELECT count(*) FROM win) = {window} \
               AND (SELECT count(*) FROM linked WHERE unbroken AND NOT mine) < $3 \
               AND (SELECT count(*) FROM linked WHERE NOT unbroken) > $3 / 4 AS yes), \
             keys(k) AS (SELECT min(msg_key) FROM {m} WHERE msg_key IS NOT NULL AND published_at IS NULL AND (SELECT yes FROM clogged) \
               UNION ALL SELECT (SELECT min(n.msg_key) FROM {m} n WHERE n.msg_key > keys.k AND n.published_at IS NULL) \
               FROM keys WHERE keys.k IS NOT NULL), \
             heads AS (SELECT (SELECT h.ctid FROM {m} h WHERE h.msg_key = keys.k AND h.published_at IS NULL ORDER BY h.seq LIMIT 1) AS ctid \
               FROM keys WHERE keys.k IS NOT NULL), \
             more_heads AS (SELECT o.seq, o.ctid, NULL::bigint AS prv FROM {m} o WHERE o.ctid = ANY (ARRAY(SELECT ctid FROM heads)) \
               AND o.msg_key IS NOT NULL AND {ready_o} AND {slice_o} ORDER BY o.seq LIMIT $3 FOR UPDATE OF o SKIP LOCKED) \
             SELECT seq, ctid, prv FROM keyless UNION ALL SELECT seq, ctid, prv FROM runs \
             UNION ALL SELECT h.seq, h.ctid, h.prv FROM more_heads h WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.seq = h.seq) \
             ORDER BY seq LIMIT $3",
            window = "($3 + $3 / 4 + cardinality($8::uuid[]))",
            ready_k = ready("k"),
            ready_w = ready("w"),
            ready_o = ready("o"),
            slice_s = in_slice("s"),
            slice_o = in_slice("o"),
        );
        // The update reaches the picked rows by the tuple ids that locked them (a TID scan), not by a
        // second walk of the primary key: a row this statement holds locked keeps its tuple id until
        // the statement ends. A row whose lockable version committed after the statement's snapshot
        // is invisible to the TID scan, so it is unlocked untouched and left to the next claim; each
        // row comes back with its `prv`, so the store hands back a key's rows that followed it.
        let claim = format!(
            "WITH picked AS ({claimable}), \
             leased AS (UPDATE {m} SET locked_by = $1, locked_until = now() + $2 * {MS}, attempts = attempts + 1 \
               WHERE ctid = ANY (ARRAY(SELECT ctid FROM picked)) AND {relay_commit} RETURNING seq, {cols}) \
             SELECT l.*, p.prv FROM leased l JOIN picked p ON p.seq = l.seq"
        );
        // `fillfactor = 50`: a claim rewrites every row it leases, and with half of each page free the
        // new versions fit beside the old ones as HOT updates that touch no index (a claim of 1,000
        // rows: 7 ms instead of 19 ms). Rows are deleted on acknowledgement, so the space is reused.
        let select_dead = format!(
            "SELECT seq, id, topic, msg_key, payload, headers, created_at, attempts, error, error, dead_at FROM {d}"
        );
        Self {
            schema: format!(
                r#"{create_schema}CREATE TABLE IF NOT EXISTS {m} (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id UUID NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    msg_key TEXT,
    payload BYTEA NOT NULL,
    headers JSONB NOT NULL DEFAULT '{{}}',
    idempotency_key TEXT UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    available_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    locked_by UUID,
    locked_until TIMESTAMPTZ,
    published_at TIMESTAMPTZ
);
ALTER TABLE {m} SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
CREATE INDEX IF NOT EXISTS "{p}_messages_pending_keyless" ON {m} (seq) WHERE published_at IS NULL AND msg_key IS NULL;
CREATE INDEX IF NOT EXISTS "{p}_messages_pending_keyed" ON {m} (seq) WHERE published_at IS NULL AND msg_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS "{p}_messages_key" ON {m} (msg_key, seq) WHERE published_at IS NULL AND msg_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS "{p}_messages_published" ON {m} (published_at) WHERE published_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS {d} (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id UUID NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    msg_key TEXT,
    payload BYTEA NOT NULL,
    headers JSONB NOT NULL DEFAULT '{{}}',
    idempotency_key TEXT UNIQUE,
    created_at TIMESTAMPTZ NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    dead_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {i} (
    consumer TEXT NOT NULL,
    message_id UUID NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE TABLE IF NOT EXISTS {r} (
    id UUID PRIMARY KEY,
    name TEXT NOT NULL,
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    published BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS {w} (
    id UUID PRIMARY KEY,
    until TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS "{p}_messages_failed" ON {m} (seq) WHERE published_at IS NULL AND last_error IS NOT NULL;
"#
            ),
            insert: format!(
                "WITH ins AS (INSERT INTO {m} (id, topic, msg_key, payload, headers, available_at, idempotency_key) \
                 VALUES ($1, $2, $3, $4, $5, now() + $6 * {MS}, $8) \
                 ON CONFLICT (idempotency_key) DO NOTHING RETURNING id) \
                 SELECT id{notify} FROM ins"
            ),
            // A message without an idempotency key cannot conflict, and the speculative insertion of
            // `ON CONFLICT` costs ~8% of a one-row business transaction: a plain insert. Its
            // parameters are the first seven of `insert`'s, so both share one bind chain.
            insert_keyless: format!("WITH ins AS ({} RETURNING 1) SELECT 1{notify} FROM ins", message_insert(&m, 1)),
            // A batch without idempotency keys: one statement, rows in the given order (so `seq`, and
            // with it per-key order, follows the batch), one notification.
            insert_rows: format!(
                "WITH ins AS (INSERT INTO {m} (id, topic, msg_key, payload, headers, available_at) \
                 SELECT b.id, b.topic, b.msg_key, b.payload, b.headers, now() + b.delay_ms * {MS} \
                 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::jsonb[], $6::bigint[]) \
                 WITH ORDINALITY AS b(id, topic, msg_key, payload, headers, delay_ms, n) ORDER BY b.n RETURNING 1) \
                 SELECT count(*){notify} FROM ins"
            ),
            existing: format!("SELECT id FROM {m} WHERE idempotency_key = $1"),
            existing_dead: format!("SELECT id FROM {d} WHERE idempotency_key = $1"),
            relay_heartbeat: format!(
                "INSERT INTO {r} (id, name, host, pid, published) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), published = excluded.published"
            ),
            relays: format!(
                "SELECT r.id, r.name, r.host, r.pid, r.started_at, r.heartbeat_at, \
                 (SELECT count(*) FROM {m} o WHERE o.locked_by = r.id AND o.published_at IS NULL AND o.locked_until > now()), \
                 r.published FROM {r} r WHERE r.heartbeat_at > now() - $1 * {MS} ORDER BY r.started_at"
            ),
            relay_deregister: format!("DELETE FROM {r} WHERE id = $1"),
            register_waiter: format!(
                "WITH expired AS (DELETE FROM {w} WHERE until < now() - interval '1 hour') \
                 INSERT INTO {w} (id, until) VALUES ($1, now() + $2 * {MS}) \
                 ON CONFLICT (id) DO UPDATE SET until = excluded.until"
            ),
            waiters: w.clone(),
            explain_claim: format!("EXPLAIN {}", claimable.replace("$1", "NULL::uuid").replace("$8", "'{}'").replace("$3", "$1::bigint").replace("$4", "0").replace("$5", "$2").replace("$6", "$3").replace("$7", "true")),
            claim,
            extend: format!(
                "UPDATE {m} SET locked_until = now() + $3 * {MS} \
                 WHERE locked_by = $1 AND published_at IS NULL AND id = ANY($2)"
            ),
            release: format!(
                "UPDATE {m} SET locked_by = NULL, locked_until = NULL, attempts = GREATEST(attempts - 1, 0) \
                 WHERE locked_by = $1 AND published_at IS NULL AND id = ANY($2)"
            ),
            ack_delete: format!("DELETE FROM {m} WHERE id = ANY($1) AND {relay_commit}"),
            ack_retain: format!(
                "UPDATE {m} SET published_at = now(), locked_by = NULL, locked_until = NULL \
                 WHERE published_at IS NULL AND id = ANY($1) AND {relay_commit}"
            ),
            reschedule: format!(
                "UPDATE {m} AS m SET locked_by = NULL, locked_until = NULL, \
                 available_at = now() + r.delay_ms * {MS}, last_error = r.error \
                 FROM unnest($2::uuid[], $3::bigint[], $4::text[]) AS r(id, delay_ms, error) \
                 WHERE m.id = r.id AND m.locked_by = $1 AND m.published_at IS NULL"
            ),
            dead_letter: format!(
                "WITH failed AS (SELECT * FROM unnest($2::uuid[], $3::text[]) AS f(id, error)), \
                 moved AS (DELETE FROM {m} AS m USING failed f \
                   WHERE m.id = f.id AND m.locked_by = $1 AND m.published_at IS NULL \
                   RETURNING m.seq, m.id, m.topic, m.msg_key, m.payload, m.headers, m.idempotency_key, m.created_at, m.attempts, f.error) \
                 INSERT INTO {d} (id, topic, msg_key, payload, headers, idempotency_key, created_at, attempts, error) \
                 SELECT id, topic, msg_key, payload, headers, idempotency_key, created_at, attempts, error FROM moved ORDER BY seq"
            ),
            list_dead: format!("{select_dead} ORDER BY seq LIMIT $1"),
            select_pending: crate::admin::select_pending_sql(&m),
            blocked_keys: crate::admin::blocked_keys_sql(&m),
            select_dead,
            count_scheduled: format!(
                "SELECT COUNT(*) FROM {m} WHERE published_at IS NULL AND last_error IS NULL AND attempts = 0 \
                 AND available_at > now()"
            ),
            replay: format!(
                "WITH moved AS (DELETE FROM {d} WHERE id = ANY($1) \
                   RETURNING seq, id, topic, msg_key, payload, headers, idempotency_key, created_at, error) \
                 INSERT INTO {m} (id, topic, msg_key, payload, headers, idempotency_key, created_at, available_at, attempts, last_error) \
                 SELECT id, topic, msg_key, payload, headers, idempotency_key, created_at, now(), 0, error FROM moved ORDER BY seq"
            ),
            delete_dead: format!("DELETE FROM {d} WHERE id = ANY($1)"),
            purge_published: format!(
                "DELETE FROM {m} WHERE seq IN (SELECT seq FROM {m} WHERE published_at IS NOT NULL \
                 AND published_at <= now() - $1 * {MS} ORDER BY published_at LIMIT $2)"
            ),
            stats: format!(
                "SELECT COUNT(*), COUNT(*) FILTER (WHERE last_error IS NOT NULL), \
                 EXTRACT(EPOCH FROM (now() - MIN(created_at)))::float8 FROM {m} WHERE published_at IS NULL"
            ),
            count_dead: format!("SELECT COUNT(*) FROM {d}"),
            inbox: format!("INSERT INTO {i} (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"),
            channel,
            messages: m,
        }
    }
}

/// The insert of one message without an idempotency key into `messages`, its six parameters (id,
/// topic, key, payload, headers, delay in ms) numbered from `$first`.
pub(super) fn message_insert(messages: &str, first: usize) -> String {
    let [id, topic, key, payload, headers, delay] = [0, 1, 2, 3, 4, 5].map(|i| first + i);
    format!(
        "INSERT INTO {messages} (id, topic, msg_key, payload, headers, available_at) \
         VALUES (${id}, ${topic}, ${key}, ${payload}, ${headers}, now() + ${delay} * {MS})"
    )
}

/// A `pg_notify` on the channel bound as `channel` if a relay waits for one (a row of `waiters`
/// that has not expired), else NULL.
pub(super) fn notify_if_waited(waiters: &str, channel: &str) -> String {
    format!("(SELECT pg_notify({channel}, '') FROM {waiters} WHERE until > now() LIMIT 1)")
}

CREATE TABLE IF NOT EXISTS "library_messages" (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id UUID NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    msg_key TEXT,
    payload BYTEA NOT NULL,
    headers JSONB NOT NULL DEFAULT '{}',
    idempotency_key TEXT UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    available_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    locked_by UUID,
    locked_until TIMESTAMPTZ,
    published_at TIMESTAMPTZ
);
ALTER TABLE "library_messages" SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
CREATE INDEX IF NOT EXISTS "library_messages_pending_keyless" ON "library_messages" (seq) WHERE published_at IS NULL AND msg_key IS NULL;
CREATE INDEX IF NOT EXISTS "library_messages_pending_keyed" ON "library_messages" (seq) WHERE published_at IS NULL AND msg_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS "library_messages_key" ON "library_messages" (msg_key, seq) WHERE published_at IS NULL AND msg_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS "library_messages_published" ON "library_messages" (published_at) WHERE published_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS "library_dead_letters" (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id UUID NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    msg_key TEXT,
    payload BYTEA NOT NULL,
    headers JSONB NOT NULL DEFAULT '{}',
    idempotency_key TEXT UNIQUE,
    created_at TIMESTAMPTZ NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    dead_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS "library_inbox" (
    consumer TEXT NOT NULL,
    message_id UUID NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

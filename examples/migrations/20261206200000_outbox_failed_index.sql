CREATE INDEX IF NOT EXISTS "library_messages_failed" ON "library_messages" (seq) WHERE published_at IS NULL AND last_error IS NOT NULL;

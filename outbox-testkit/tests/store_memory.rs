//! The store suite against the in-memory reference store.
use outbox_testkit::memory::MemoryHarness;

outbox_testkit::store_suite!(memory, || async { MemoryHarness::new() });

//! Conformance suites for outbox stores and publishers (in progress).

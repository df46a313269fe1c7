//! Examples of the outbox SDK; see the `[[example]]` targets.

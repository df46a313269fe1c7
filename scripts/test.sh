#!/usr/bin/env bash
# The whole test suite against the real local services (the README's test command): every crate,
# every feature, every backend with cargo test, then the chaos test's short form (scripts/chaos.sh:
# relay processes killed, PostgreSQL and the brokers restarted).
#   scripts/test.sh                  # everything
#   scripts/test.sh -p outbox-engine   # extra arguments go to cargo test, and the chaos test is left out
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/test-services.sh
cargo test --workspace --all-features "$@"
if [ -n "${OUTBOX_TEST_SKIP:-}" ]; then
  echo "test: the tests of these backends were skipped by request (OUTBOX_TEST_SKIP): $OUTBOX_TEST_SKIP"
fi
if [ "$#" -eq 0 ]; then
  bash scripts/chaos.sh
fi

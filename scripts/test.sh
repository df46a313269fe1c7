#!/usr/bin/env bash
# The whole test suite against the real local services (the README's test command): every crate,
# every feature, every backend with cargo test, then the chaos test's short form (scripts/chaos.sh:
# relay processes killed, PostgreSQL and the brokers restarted).
#   scripts/test.sh                  # everything
#   scripts/test.sh -p outbox-core   # extra arguments go to cargo test, and the chaos test is left out
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/test-services.sh
cargo test --workspace --all-features "$@"
if [ "$#" -eq 0 ]; then
  bash scripts/chaos.sh
fi

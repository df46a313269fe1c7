#!/usr/bin/env bash
# The whole test suite against the real local services (the README's test command).
#   scripts/test.sh            # every crate, every feature, every backend
#   scripts/test.sh -p outbox-core   # extra arguments go to cargo test
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/test-services.sh
cargo test --workspace --all-features "$@"

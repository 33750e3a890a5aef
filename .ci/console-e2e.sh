#!/usr/bin/env bash
# Browser end-to-end test of the web console.
#
# Starts `wf-iot serve` on free ports with a fresh data directory, runs
# simulated devices against it (telemetry, commands, over-the-air updates),
# and drives the console in a real headless Chromium with Playwright
# (e2e/console.test.mjs): sign-in, devices, a live chart, a command, a
# device's state (desired state with If-Match, a stale save refused, server
# attributes) and a shadow job, a firmware upload and a rollout run to
# completion, the Chinese console, a viewer without write controls, an
# expired session. Screenshots of every
# page go to test-artifacts/console/.
#
# Installs what is missing: Debian's chromium (and a CJK font for the
# Chinese pages), Node.js and npm, and the pinned playwright-core (npm ci).
#
# Usage: bash .ci/console-e2e.sh [path/to/wf-iot]
#   Without a binary, builds it (CI=true adds cargo --locked).

set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
ARTIFACTS="$ROOT/test-artifacts/console"
ADMIN_PASSWORD=console-e2e-admin-password

# Only this script's settings, never the caller's wf-iot configuration.
while IFS= read -r name; do
    unset "$name"
done < <(compgen -e | grep '^WF_IOT_' || true)

CARGO_FLAGS=()
if [[ -n "${CI:-}" ]]; then
    CARGO_FLAGS+=(--locked)
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/wf-iot-console.XXXXXX")
SERVER_PID=""
SIM_PID=""

cleanup() {
    local status=$?
    for pid in "$SIM_PID" "$SERVER_PID"; do
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    if [[ $status -ne 0 ]]; then
        for log in server simulate; do
            if [[ -s "$WORK/$log.log" ]]; then
                printf '\n--- %s log (last 40 lines) ---\n' "$log" >&2
                tail -n 40 "$WORK/$log.log" >&2 || true
            fi
        done
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT

fail() {
    printf '\nFAILED: %s\n' "$*" >&2
    exit 1
}

section() {
    printf '\n==================== %s ====================\n' "$*"
}

# ---------------------------------------------------------------------------
section "Console e2e: tools"
apt_install() {
    command -v apt-get >/dev/null 2>&1 || fail "missing $*, and apt-get is not available to install it"
    if [[ -z "${APT_UPDATED:-}" ]]; then
        apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [[ ! -x "$CHROMIUM" ]]; then
    echo "installing chromium and chromium-driver"
    apt_install chromium chromium-driver
fi
if ! fc-list 2>/dev/null | grep -qiE 'wenquanyi|noto sans cjk|noto serif cjk|droid sans fallback'; then
    echo "installing a CJK font for the Chinese pages"
    apt_install fonts-wqy-zenhei fontconfig
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "installing Node.js and npm"
    apt_install nodejs npm
fi
"$CHROMIUM" --version 2>/dev/null
echo "node $(node --version), npm $(npm --version)"
(cd e2e && npm ci --no-audit --no-fund --loglevel=error)

# ---------------------------------------------------------------------------
section "Console e2e: build and start wf-iot serve"
if [[ $# -ge 1 ]]; then
    BIN=$(realpath "$1")
else
    cargo build "${CARGO_FLAGS[@]}" -p wf-iot
    TARGET_DIR=$(cargo metadata "${CARGO_FLAGS[@]}" --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    BIN="$TARGET_DIR/debug/wf-iot"
fi
[[ -x "$BIN" ]] || fail "$BIN was not built"

read -r AUTH_HTTP AUTH_GRPC DEVICE_HTTP DEVICE_GRPC MQTT_PORT MQTT_WS MQTT_HTTP MQTT_GRPC FIRMWARE_HTTP FIRMWARE_GRPC GATEWAY_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(11)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
')
(
    cd "$WORK"
    exec env WF_IOT_AUTH__HOST=127.0.0.1 \
        WF_IOT_AUTH__HTTP_PORT="$AUTH_HTTP" \
        WF_IOT_AUTH__GRPC_PORT="$AUTH_GRPC" \
        WF_IOT_DEVICE__HOST=127.0.0.1 \
        WF_IOT_DEVICE__HTTP_PORT="$DEVICE_HTTP" \
        WF_IOT_DEVICE__GRPC_PORT="$DEVICE_GRPC" \
        WF_IOT_MQTT_GATEWAY__HOST=127.0.0.1 \
        WF_IOT_MQTT_GATEWAY__MQTT_PORT="$MQTT_PORT" \
        WF_IOT_MQTT_GATEWAY__WS_PORT="$MQTT_WS" \
        WF_IOT_MQTT_GATEWAY__HTTP_PORT="$MQTT_HTTP" \
        WF_IOT_MQTT_GATEWAY__GRPC_PORT="$MQTT_GRPC" \
        WF_IOT_FIRMWARE__HOST=127.0.0.1 \
        WF_IOT_FIRMWARE__HTTP_PORT="$FIRMWARE_HTTP" \
        WF_IOT_FIRMWARE__GRPC_PORT="$FIRMWARE_GRPC" \
        WF_IOT_GATEWAY__HOST=127.0.0.1 \
        WF_IOT_GATEWAY__HTTP_PORT="$GATEWAY_PORT" \
        WF_IOT_ADMIN_PASSWORD="$ADMIN_PASSWORD" \
        WF_IOT_LOG__LEVEL=warn \
        "$BIN" serve
) >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
BASE="http://127.0.0.1:${GATEWAY_PORT}"
for _ in $(seq 1 60); do
    kill -0 "$SERVER_PID" 2>/dev/null || fail "wf-iot serve exited during startup"
    if curl -fsS --max-time 2 "$BASE/readyz" >/dev/null 2>&1 &&
        curl -fsS --max-time 2 "http://127.0.0.1:${AUTH_HTTP}/readyz" >/dev/null 2>&1; then
        break
    fi
    sleep 1
done
curl -fsS --max-time 5 "$BASE/login" >/dev/null || fail "the console does not answer at $BASE/login"
echo "ok: console at $BASE"

# ---------------------------------------------------------------------------
section "Console e2e: simulated devices"
WF_IOT_SIM_PASSWORD="$ADMIN_PASSWORD" WF_IOT_LOG__LEVEL=warn "$BIN" simulate \
    --devices 3 --rate 6 --duration 600 \
    --auth-url "http://127.0.0.1:${AUTH_HTTP}" --device-url "http://127.0.0.1:${DEVICE_HTTP}" \
    --mqtt-host 127.0.0.1 --mqtt-port "$MQTT_PORT" >"$WORK/simulate.log" 2>&1 &
SIM_PID=$!
for _ in $(seq 1 40); do
    kill -0 "$SIM_PID" 2>/dev/null || fail "wf-iot simulate exited: $(tail -n 5 "$WORK/simulate.log")"
    grep -q 'devices connected' "$WORK/simulate.log" 2>/dev/null && break
    sleep 0.5
done
grep -q 'devices connected' "$WORK/simulate.log" || fail "the simulated devices did not connect"
echo "ok: 3 simulated devices publishing"

# An image to upload: 256 KiB of random bytes.
head -c 262144 /dev/urandom >"$WORK/sensor-firmware-1.1.0.bin"

# ---------------------------------------------------------------------------
section "Console e2e: Chromium (e2e/console.test.mjs)"
rm -rf "$ARTIFACTS"
mkdir -p "$ARTIFACTS"
(
    cd e2e
    WF_BASE_URL="$BASE" WF_ADMIN_PASSWORD="$ADMIN_PASSWORD" WF_ARTIFACTS="$ARTIFACTS" \
        WF_FIRMWARE_FILE="$WORK/sensor-firmware-1.1.0.bin" CHROMIUM="$CHROMIUM" \
        node --test --test-concurrency=1 --test-reporter=spec console.test.mjs
)
echo "screenshots: $(find "$ARTIFACTS" -name '*.png' | wc -l) in ${ARTIFACTS#"$ROOT"/}"

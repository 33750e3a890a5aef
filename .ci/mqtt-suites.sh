#!/usr/bin/env bash
# MQTT devices against a real `wf-iot serve` (all-in-one: SQLite, embedded
# broker, in-process events), with paho-mqtt clients. Two suites share one
# harness (.ci/wf_iot_harness.py) and one virtualenv:
#
# durability: what an MQTT acknowledgement promises (.ci/ingest_durability.py)
#   1. kill -9: devices with persistent sessions publish QoS 1 telemetry with
#      distinct timestamps; the server is killed with SIGKILL mid-stream and
#      restarted on the same data directory; every message whose PUBACK a
#      device received must be stored.
#   2. disk full (root: mounts a small tmpfs as the data directory, always
#      unmounted): acknowledgements stop instead of messages being lost, an
#      API write answers 507 with the error envelope, and both recover by
#      themselves once space is freed.
#
# hostile: hostile clients are refused or bounded (.ci/mqtt_hostile.py):
#   subscriptions to `#`, `$SYS/#` and other devices' topics, wills and
#   retained messages on other devices' topics, QoS 2, 64 KiB + 1 and 10 MiB
#   payloads, deeply nested and non-finite JSON, 1,000 rapid reconnects of
#   one device, 200 connections that never send CONNECT, a client that never
#   reads; the server's memory stays within a budget and a well-behaved
#   device is served after every probe.
#
# shadow: device state with paho-mqtt devices (.ci/mqtt_shadow.py): reports,
#   desired state with If-Match through the api-gateway, deltas on connect,
#   shadow/get, refusals on shadow/rejected, a fleet shadow job to convergence.
#
# Usage: .ci/mqtt-suites.sh path/to/wf-iot [durability|hostile|shadow]...  (default: all)
# paho-mqtt (pinned) comes from PyPI into a virtualenv in a temporary directory.

set -euo pipefail

BIN=${1:?usage: $0 path/to/wf-iot [durability|hostile]...}
shift
SUITES=("$@")
if ((${#SUITES[@]} == 0)); then
    SUITES=(durability hostile shadow)
fi
[[ -x "$BIN" ]] || { echo "not an executable: $BIN" >&2; exit 2; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$(mktemp -d -t wf-iot-mqtt-venv.XXXXXX)"
trap 'rm -rf "$VENV"' EXIT

# The suites import .ci/wf_iot_harness.py: no __pycache__ in the work tree.
export PYTHONDONTWRITEBYTECODE=1

python3 -m venv "$VENV" || { echo "python3 -m venv failed (apt-get install python3-venv)" >&2; exit 1; }
"$VENV/bin/pip" install --quiet --disable-pip-version-check 'paho-mqtt==2.1.0'

for suite in "${SUITES[@]}"; do
    case "$suite" in
    durability)
        echo "--- acknowledged telemetry through kill -9"
        "$VENV/bin/python" "$HERE/ingest_durability.py" kill9 "$BIN"
        echo "--- a full data disk"
        "$VENV/bin/python" "$HERE/ingest_durability.py" disk-full "$BIN"
        ;;
    hostile)
        echo "--- hostile MQTT clients"
        "$VENV/bin/python" "$HERE/mqtt_hostile.py" "$BIN"
        ;;
    shadow)
        echo "--- device state with paho-mqtt devices"
        "$VENV/bin/python" "$HERE/mqtt_shadow.py" "$BIN"
        ;;
    *)
        echo "unknown suite: $suite (durability, hostile or shadow)" >&2
        exit 2
        ;;
    esac
done

#!/usr/bin/env bash
# What an MQTT acknowledgement promises, against a real `wf-iot serve`
# (all-in-one: SQLite, embedded broker, in-process events):
#
#   1. kill -9: devices with persistent sessions publish QoS 1 telemetry with
#      distinct timestamps; the server is killed with SIGKILL mid-stream and
#      restarted on the same data directory; every message whose PUBACK a
#      device received must be stored.
#   2. disk full (root: mounts a small tmpfs as the data directory, always
#      unmounted): acknowledgements stop instead of messages being lost, an
#      API write answers 507 with the error envelope, and both recover by
#      themselves once space is freed.
#
# Usage: .ci/ingest-durability.sh path/to/wf-iot
# paho-mqtt (pinned) comes from PyPI into a virtualenv in a temporary directory.

set -euo pipefail

BIN=${1:?usage: $0 path/to/wf-iot}
[[ -x "$BIN" ]] || { echo "not an executable: $BIN" >&2; exit 2; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$(mktemp -d -t wf-iot-durability-venv.XXXXXX)"
trap 'rm -rf "$VENV"' EXIT

python3 -m venv "$VENV" || { echo "python3 -m venv failed (apt-get install python3-venv)" >&2; exit 1; }
"$VENV/bin/pip" install --quiet --disable-pip-version-check 'paho-mqtt==2.1.0'

echo "--- acknowledged telemetry through kill -9"
"$VENV/bin/python" "$HERE/ingest_durability.py" kill9 "$BIN"
echo "--- a full data disk"
"$VENV/bin/python" "$HERE/ingest_durability.py" disk-full "$BIN"

#!/usr/bin/env python3
"""What a PUBACK promises, checked against a real `wf-iot serve`.

    ingest_durability.py kill9     BIN   acknowledged telemetry survives SIGKILL
    ingest_durability.py disk-full BIN   a full data disk stops acknowledgements
                                         and API writes (507), and recovers

Both start `wf-iot serve` (the all-in-one mode: SQLite, embedded broker,
in-process events) on free ports with a fresh data directory, register
devices through the API and publish QoS 1 telemetry with paho-mqtt from
persistent sessions (clean session off), each message with its own `ts`.
Every PUBACK is recorded; at the end every acknowledged (device, ts) must be
in the `device_data` table of the data directory's devices.db.

disk-full mounts a small tmpfs (root needed) as the data directory and
always unmounts it. Run through .ci/mqtt-suites.sh, which provides
paho-mqtt in a virtualenv.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import paho.mqtt.client as mqtt

from wf_iot_harness import Server, create_devices, fail, http, login, stored


class Device:
    """One device on a persistent session, publishing QoS 1 telemetry with
    distinct timestamps and recording which ones were acknowledged."""

    def __init__(self, device_id, secret, port, base_ts, inflight, extra=""):
        self.device_id = device_id
        self.base_ts = base_ts
        self.extra = extra
        self.lock = threading.Lock()
        self.mids = {}
        self.early = set()
        self.acked = set()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id,
                                  clean_session=False, protocol=mqtt.MQTTv311)
        self.client.username_pw_set(device_id, secret)
        self.client.max_inflight_messages_set(inflight)
        self.client.reconnect_delay_set(min_delay=0.2, max_delay=1)
        self.client.on_publish = self._on_publish
        self.client.connect_async("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self.lock:
            ts = self.mids.pop(mid, None)
            if ts is None:
                self.early.add(mid)
            else:
                self.acked.add(ts)

    def publish(self, i):
        ts = self.base_ts + i
        payload = json.dumps({"ts": ts, "seq": i, "note": self.extra} if self.extra
                             else {"ts": ts, "seq": i})
        # Not under self.lock: paho calls on_publish holding its own lock,
        # which publish() takes too.
        info = self.client.publish(f"devices/{self.device_id}/telemetry", payload, qos=1)
        with self.lock:
            if info.mid in self.early:
                self.early.discard(info.mid)
                self.acked.add(ts)
            else:
                self.mids[info.mid] = ts

    def acked_count(self):
        with self.lock:
            return len(self.acked)

    def acked_ts(self):
        with self.lock:
            return set(self.acked)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def wait_connected(devices, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if all(d.client.is_connected() for d in devices):
            return
        time.sleep(0.1)
    fail("the devices did not connect")


def missing_acknowledged(devices, data_dir):
    acked = {(d.device_id, ts) for d in devices for ts in d.acked_ts()}
    return acked, acked - stored(data_dir)


def wait_all_stored(devices, data_dir, seconds):
    deadline = time.time() + seconds
    while True:
        acked, missing = missing_acknowledged(devices, data_dir)
        if not missing or time.time() > deadline:
            return acked, missing
        time.sleep(0.5)


def kill9(binary):
    n_devices, per_device, inflight = 10, 3000, 50
    work = tempfile.mkdtemp(prefix="wf-iot-kill9-")
    data_dir = os.path.join(work, "data")
    server = Server(binary, data_dir, os.path.join(work, "server.log"))
    devices = []
    try:
        server.start()
        token = login(server)
        secrets = create_devices(server, token, "k9", n_devices)
        base = int(time.time() * 1000) - 10_000_000
        devices = [Device(d, s, server.mqtt_port, base, inflight) for d, s in secrets.items()]
        wait_connected(devices)
        for i in range(per_device):
            for d in devices:
                d.publish(i)
        total = n_devices * per_device
        kill_at = total // 4
        deadline = time.time() + 120
        while sum(d.acked_count() for d in devices) < kill_at:
            if time.time() > deadline:
                fail(f"only {sum(d.acked_count() for d in devices)} PUBACKs in 120 s")
            time.sleep(0.005)
        server.kill9()
        acked_at_kill = sum(d.acked_count() for d in devices)
        print(f"SIGKILL after {acked_at_kill} PUBACKs of {total} messages")
        server.start()
        deadline = time.time() + 300
        while sum(d.acked_count() for d in devices) < total:
            if time.time() > deadline:
                fail(f"after the restart only {sum(d.acked_count() for d in devices)} of "
                     f"{total} messages were acknowledged within 300 s:\n{server.tail()}")
            time.sleep(0.2)
        acked, missing = wait_all_stored(devices, data_dir, 30)
        if missing:
            sample = sorted(missing)[:5]
            fail(f"{len(missing)} of {len(acked)} acknowledged messages were never stored "
                 f"(for example {sample})")
        print(f"ok: all {len(acked)} acknowledged messages are stored "
              f"(SIGKILL after {acked_at_kill} PUBACKs, restarted on the same data directory)")
    finally:
        for d in devices:
            d.close()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def fill(path):
    """Writes `path` until the filesystem refuses."""
    chunk = b"\0" * (64 * 1024)
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError:
                break
        for size in (4096, 512, 1):
            while True:
                try:
                    f.write(b"\0" * size)
                except OSError:
                    break


def disk_full(binary):
    if os.geteuid() != 0:
        fail("disk-full mounts a tmpfs and must run as root")
    work = tempfile.mkdtemp(prefix="wf-iot-diskfull-")
    data_dir = os.path.join(work, "data")
    os.makedirs(data_dir)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", data_dir], check=True)
    server = Server(binary, data_dir, os.path.join(work, "server.log"),
                    {"WF_IOT_MQTT_GATEWAY__DURABLE_ACK_TIMEOUT_MS": "2000"})
    device = None
    try:
        server.start()
        token = login(server)
        secrets = create_devices(server, token, "full", 1)
        (device_id, secret), = secrets.items()
        base = int(time.time() * 1000) - 10_000_000
        # 2 KiB of text per message, so that the store needs new pages.
        device = Device(device_id, secret, server.mqtt_port, base, 20, extra="x" * 2048)
        wait_connected([device])
        for i in range(20):
            device.publish(i)
        deadline = time.time() + 30
        while device.acked_count() < 20:
            if time.time() > deadline:
                fail("the first messages were not acknowledged")
            time.sleep(0.05)
        print("ok: messages are acknowledged while there is room")

        filler = os.path.join(data_dir, "filler")
        fill(filler)
        sent = 20
        # Keep publishing until the store refuses and acknowledgements stop.
        stalled_since, last = None, device.acked_count()
        deadline = time.time() + 120
        while time.time() < deadline:
            if sent - device.acked_count() < 20:
                device.publish(sent)
                sent += 1
                continue
            now_acked = device.acked_count()
            if now_acked != last:
                last, stalled_since = now_acked, None
            elif stalled_since is None:
                stalled_since = time.time()
            elif time.time() - stalled_since > 8:
                break
            time.sleep(0.05)
        else:
            fail(f"acknowledgements never stopped on a full disk ({device.acked_count()} of {sent})")
        # Asked through the API: a reader of the SQLite file itself may not
        # see the newest commits while the disk is full.
        acked = device.acked_ts()
        status, series = http(
            "GET", server.url("DEVICE", f"/api/v1/devices/{device_id}/telemetry?metric=seq"
                              f"&from={base}&to={base + 100_000}&limit=1000"), token=token)
        if status != 200:
            fail(f"reading the stored series answered {status}: {series}")
        missing = acked - {p["ts"] for p in series["points"]}
        if missing:
            fail(f"{len(missing)} messages acknowledged on a full disk are not stored: "
                 f"{sorted(missing)[:5]}")
        print(f"ok: with the disk full, acknowledgements stopped ({len(acked)} acknowledged, "
              f"{sent - len(acked)} waiting) and every acknowledged message is stored")

        # A small write may still fit in pages the database already has;
        # writes that need new ones must be refused with a clear error.
        metadata = {"blob": "m" * 15000}
        for n in range(1, 41):
            status, body = http("POST", server.url("DEVICE", "/api/v1/devices"),
                                {"id": f"full-api-{n}", "name": "x", "metadata": metadata}, token)
            if status == 201:
                continue
            if status not in (503, 507) or not isinstance(body, dict) or \
                    body.get("error", {}).get("code") not in ("insufficient_storage", "unavailable"):
                fail(f"an API write on a full disk answered {status}: {body}\n{server.tail()}")
            print(f"ok: an API write on a full disk answers {status} {body['error']['code']}: "
                  f"{body['error']['message']} (after {n - 1} that still fitted)")
            break
        else:
            fail("40 API writes of 15 KiB each all succeeded on a full disk")

        os.remove(filler)
        deadline = time.time() + 60
        while device.acked_count() < sent:
            if time.time() > deadline:
                fail(f"after space returned only {device.acked_count()} of {sent} messages "
                     f"were acknowledged:\n{server.tail()}")
            time.sleep(0.2)
        acked, missing = wait_all_stored([device], data_dir, 30)
        if missing:
            fail(f"{len(missing)} acknowledged messages were not stored after recovery")
        deadline = time.time() + 30
        while True:
            status, body = http("POST", server.url("DEVICE", "/api/v1/devices"),
                                {"id": "full-new", "name": "x", "metadata": metadata}, token)
            if status == 201:
                break
            if time.time() > deadline:
                fail(f"API writes did not recover: {status} {body}")
            time.sleep(0.5)
        print(f"ok: space returned: all {sent} messages acknowledged and stored, API writes "
              f"accepted again")
    finally:
        if device:
            device.close()
        server.stop()
        subprocess.run(["umount", data_dir], check=False)
        shutil.rmtree(work, ignore_errors=True)


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("kill9", "disk-full"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    binary = os.path.abspath(sys.argv[2])
    {"kill9": kill9, "disk-full": disk_full}[sys.argv[1]](binary)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Hostile MQTT clients against a real `wf-iot serve`: each is refused or
bounded, the server's memory stays bounded, and the broker keeps serving
well-behaved devices.

    mqtt_hostile.py BIN [PROBE...]   all probes, or only the named ones

Starts `wf-iot serve` (all-in-one: SQLite, embedded broker) on free ports with
a fresh data directory, registers devices through the API and drives them with
paho-mqtt (MQTT 5 where reason codes matter, 3.1.1 as well), and with raw
sockets where a client must misbehave below what paho allows (never sending
CONNECT, never reading). After every probe a well-behaved device publishes
QoS 1 telemetry, which must be acknowledged and readable through the API.
The server's resident memory (VmRSS) is recorded around the floods and must
stay within RSS_BUDGET_MIB of where it started.

Every probe runs; the failures are listed at the end and the exit status is 1
when there is any. Run through .ci/mqtt-suites.sh, which provides paho-mqtt in
a virtualenv.
"""

import json
import os
import select
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from wf_iot_harness import Client, Server, create_devices, fail, http, login, stored, \
    stored_rows, wait_until

# How much the server's resident memory may grow over the whole suite.
RSS_BUDGET_MIB = 100
# The documented payload limit (mqtt_gateway.max_payload_bytes).
MAX_PAYLOAD = 64 * 1024
# How long a TCP connection that never sends CONNECT may stay open.
NO_CONNECT_DEADLINE_S = 30
# mqtt_gateway.max_unanswered_connections_per_ip, left at its default.
UNANSWERED_PER_IP = 128
# Commands of 15 KiB sent to the client that never reads: the broker holds
# at most about a thousand messages for a device (rmqtt's message queue and
# in-flight window), so the first round fills that and the others must not
# add their size to the server's memory.
COMMAND_ROUNDS = 3
COMMANDS_PER_ROUND = 500
# Subscriptions that all match devices/{id}/commands.
OVERLAPPING = ["#", "+", "commands", "commands/#", "+/#"]

NOT_AUTHORIZED = 0x87
QUOTA_EXCEEDED = 0x97
PAYLOAD_FORMAT_INVALID = 0x99


def now_ms():
    return int(time.time() * 1000)


# --- raw MQTT 3.1.1 packets, for clients paho cannot play ------------------

def _remaining_length(n):
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s):
    b = s.encode() if isinstance(s, str) else s
    return len(b).to_bytes(2, "big") + b


def raw_connect(client_id, username, password, keepalive=60):
    body = _string("MQTT") + b"\x04" + b"\xc2" + keepalive.to_bytes(2, "big") + \
        _string(client_id) + _string(username) + _string(password)
    return b"\x10" + _remaining_length(len(body)) + body


def raw_subscribe(packet_id, topic, qos):
    body = packet_id.to_bytes(2, "big") + _string(topic) + bytes([qos])
    return b"\x82" + _remaining_length(len(body)) + body


def raw_publish_qos0(topic, payload):
    body = _string(topic) + payload
    return b"\x30" + _remaining_length(len(body)) + body


def socket_closed_by_peer(sock):
    """Whether the peer has closed `sock` (non-blocking check)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(65536) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except BlockingIOError:
        return False


# --- the suite -------------------------------------------------------------

class Suite:
    def __init__(self, server, token, secrets):
        self.server = server
        self.token = token
        self.secrets = secrets
        self.failures = []
        self.rss = []
        self.alive_seq = 0
        ids = sorted(secrets)
        (self.good, self.victim, self.attacker, self.attacker311, self.flapper, self.sender,
         self.parser, self.reader) = ids[:8]
        self.good_client = None

    # helpers

    def check(self, ok, what):
        print(f"  {'ok' if ok else 'FAILED'}: {what}", flush=True)
        if not ok:
            self.failures.append(what)
        return ok

    def client(self, device_id, **kwargs):
        return Client(device_id, self.secrets[device_id], self.server.mqtt_port, **kwargs)

    def connected_client(self, device_id, **kwargs):
        c = self.client(device_id, **kwargs)
        code = c.connect()
        if code != 0:
            self.check(False, f"{device_id} could connect (CONNACK {code})")
        return c

    def record_rss(self, label):
        rss = self.server.rss_mib()
        self.rss.append((label, rss))
        print(f"  server VmRSS {label}: {rss:.1f} MiB", flush=True)
        return rss

    def api(self, method, path, body=None):
        return http(method, self.server.url("DEVICE", path), body, self.token)

    def device(self, device_id):
        status, body = self.api("GET", f"/api/v1/devices/{device_id}")
        if status != 200:
            self.check(False, f"GET /api/v1/devices/{device_id} answered {status}: {body}")
            return {}
        return body

    def status_reasons(self, device_id):
        status, body = self.api("GET", f"/api/v1/devices/{device_id}/status-history?limit=500")
        if status != 200:
            self.check(False, f"status history of {device_id} answered {status}: {body}")
            return []
        return [entry["reason"] for entry in body]

    def send_command(self, device_id, params=None):
        status, body = self.api("POST", f"/api/v1/devices/{device_id}/commands",
                                {"name": "probe", "params": params or {}, "timeout_s": 60})
        return status, body

    def still_serving(self, label):
        """A well-behaved device publishes QoS 1 telemetry: it must be
        acknowledged, and the API must answer it as the latest value."""
        self.alive_seq += 1
        seq, ts = self.alive_seq, now_ms()
        c = self.good_client
        if c is None or not c.connected():
            if c is not None:
                c.close()
            c = self.good_client = self.connected_client(self.good)
        code = c.publish(f"devices/{self.good}/telemetry", json.dumps({"alive": seq, "ts": ts}))

        def latest():
            status, body = self.api("GET", f"/api/v1/devices/{self.good}/telemetry/latest")
            return status == 200 and any(v["metric"] == "alive" and v["ts"] == ts
                                         for v in body["values"])

        ok = code == 0 and wait_until(latest, 10, 0.1)
        self.check(ok and self.server.alive(),
                   f"after {label}: a well-behaved device's telemetry is acknowledged "
                   f"(PUBACK {code}) and stored")

    # probes

    def subscriptions(self):
        """Wildcard, $SYS and cross-device subscriptions are refused and
        receive nothing; the victim's own traffic flows meanwhile."""
        victim = self.connected_client(self.victim)
        codes = victim.subscribe(f"devices/{self.victim}/#", qos=1)
        self.check(codes == [1], f"a device may subscribe to its own topics (SUBACK {codes})")
        filters = ["#", "$SYS/#", "$SYS/brokers/+/clients/#", "+/+/+", "+/#", "devices/#",
                   "devices/+/telemetry", f"devices/{self.victim}/#",
                   f"devices/{self.victim}/commands", f"$share/g/devices/{self.victim}/#",
                   "$share/g/#", "devices/+/commands", "devices/+/+/#"]
        attackers = []
        for device_id, v5 in [(self.attacker, True), (self.attacker311, False)]:
            c = self.connected_client(device_id, v5=v5)
            attackers.append(c)
            own = c.subscribe(f"devices/{device_id}/commands", qos=1)
            self.check(own == [1], f"MQTT {'5' if v5 else '3.1.1'}: its own command topic is "
                                   f"granted (SUBACK {own})")
            for f in filters:
                codes = c.subscribe(f, qos=1)
                # 0x87 Not authorized in MQTT 5; 0x80 Failure in 3.1.1.
                want = [NOT_AUTHORIZED] if v5 else [0x80]
                self.check(codes == want or (codes is None and c.closed),
                           f"MQTT {'5' if v5 else '3.1.1'}: subscribing to {f!r} is refused "
                           f"(SUBACK {codes}, want {want} or the connection closed)")
        # The victim's traffic: telemetry up, a command down.
        ts = now_ms()
        code = victim.publish(f"devices/{self.victim}/telemetry", json.dumps({"v": 1, "ts": ts}))
        status, _ = self.send_command(self.victim, {"secret": "for the victim only"})
        got = wait_until(lambda: any(m.topic == f"devices/{self.victim}/commands"
                                     for m in victim.received()), 5)
        self.check(code == 0 and status == 201 and got,
                   f"the victim's telemetry is acknowledged (PUBACK {code}) and its command "
                   f"(HTTP {status}) reaches it")
        time.sleep(1.0)
        for c in attackers:
            leaked = [m.topic for m in c.received()]
            self.check(not leaked, f"{c.device_id} received nothing of other devices' or "
                                   f"system topics (got {leaked[:5]})")
        for c in attackers + [victim]:
            c.close()

    def wills(self):
        """A last will on another device's topic refuses the connection and is
        never delivered or stored; a will on the device's own status topic
        works (the control)."""
        watcher = self.connected_client(self.victim)
        watcher.subscribe(f"devices/{self.victim}/#", qos=1)
        cases = [
            (True, f"devices/{self.victim}/status", "offline"),
            (True, f"devices/{self.victim}/telemetry", json.dumps({"forged_will": 1})),
            (True, f"devices/{self.victim}/commands", json.dumps({"id": "x", "name": "wipe"})),
            (True, "$SYS/brokers", "x"),
            (True, "#", "x"),
            (False, f"devices/{self.victim}/status", "offline"),
            (False, f"devices/{self.victim}/telemetry", json.dumps({"forged_will": 1})),
        ]
        for v5, topic, payload in cases:
            c = self.client(self.attacker, v5=v5, will=(topic, payload, 1, True))
            code = c.connect()
            accepted = code == 0
            if accepted:
                c.drop()  # the will would be published now
            else:
                c.close()
            self.check(not accepted, f"MQTT {'5' if v5 else '3.1.1'}: a will on {topic!r} "
                                     f"refuses the connection (CONNACK {code})")
        time.sleep(1.0)
        leaked = [m.topic for m in watcher.received()]
        self.check(not leaked, f"the victim received no forged will (got {leaked[:5]})")
        self.check(not stored(self.server.data_dir, "forged_will"),
                   "no forged will was stored as telemetry")
        reasons = self.status_reasons(self.victim)
        self.check("last_will" not in reasons,
                   f"the victim's status history has no last will (reasons {reasons[:6]})")
        self.check(self.device(self.victim).get("online") is True,
                   "the victim is still online")
        watcher.close()
        # Control: a will on the device's own status topic is accepted and,
        # when the connection is lost, recorded as the reason.
        c = self.client(self.attacker, will=(f"devices/{self.attacker}/status", "offline", 1,
                                             False))
        code = c.connect()
        c.drop()
        ok = code == 0 and wait_until(lambda: "last_will" in self.status_reasons(self.attacker),
                                      10, 0.2)
        self.check(ok, f"control: a will on the device's own status topic is accepted "
                       f"(CONNACK {code}) and recorded when the connection is lost")

    def retained(self):
        """Retained messages on another device's topics are refused and never
        delivered; refused messages on a device's own topics are not retained
        either."""
        for v5, device_id in [(True, self.attacker), (False, self.attacker311)]:
            c = self.connected_client(device_id, v5=v5)
            for topic, payload in [
                (f"devices/{self.victim}/commands", json.dumps({"id": "r", "name": "wipe"})),
                (f"devices/{self.victim}/telemetry", json.dumps({"forged_retained": 1})),
                (f"devices/{self.victim}/ota", json.dumps({"url": "http://evil"})),
            ]:
                code = c.publish(topic, payload, qos=1, retain=True)
                if v5:
                    self.check(code == NOT_AUTHORIZED or (code is None and c.closed),
                               f"MQTT 5: a retained publish on {topic!r} is refused "
                               f"(PUBACK {code}, want 0x87)")
                else:
                    self.check(code == 0 or (code is None and c.closed),
                               f"MQTT 3.1.1: a retained publish on {topic!r} is answered with "
                               f"a plain PUBACK or a closed connection (PUBACK {code})")
            c.close()
        # 100 refused 48 KiB retained messages on unknown topics of its own:
        # none may be kept (and grow the broker's memory).
        c = self.connected_client(self.attacker)
        pad = "r" * (48 * 1024)
        codes = Counter()
        for i in range(100):
            codes[c.publish(f"devices/{self.attacker}/junk/{i}", json.dumps({"pad": pad}),
                            qos=1, retain=True)] += 1
        self.check(set(codes) == {PAYLOAD_FORMAT_INVALID},
                   f"MQTT 5: retained messages on unknown topics of the device's own are "
                   f"refused 0x99 (PUBACK codes {dict(codes)})")
        c.close()
        victim = self.connected_client(self.victim)
        victim.subscribe(f"devices/{self.victim}/#", qos=1)
        own = self.connected_client(self.attacker)
        own.subscribe(f"devices/{self.attacker}/#", qos=1)
        time.sleep(1.5)
        # Retained messages arrive with the retain flag; the victim's open
        # command, sent again because it reconnected, does not.
        leaked = [m.topic for m in victim.received() if m.retain]
        self.check(not leaked, f"a new subscriber on the victim's topics gets no retained "
                               f"message (got {leaked[:5]})")
        kept = [m.topic for m in own.received() if m.retain]
        self.check(not kept, f"no refused message was retained ({len(kept)} came back, "
                             f"e.g. {kept[:3]})")
        self.check(not stored(self.server.data_dir, "forged_retained"),
                   "no forged retained telemetry was stored")
        victim.close()
        own.close()

    def qos2(self):
        """QoS 2 telemetry completes (PUBREC only once stored, then PUBCOMP)
        and is stored exactly once; a QoS 2 subscription gets a command once."""
        for v5 in (True, False):
            c = self.connected_client(self.sender, v5=v5)
            ts = now_ms()
            code = c.publish(f"devices/{self.sender}/telemetry",
                             json.dumps({"q2": 1 if v5 else 2, "ts": ts}), qos=2)
            rows = stored_rows(self.server.data_dir, self.sender, "q2", ts)
            self.check(code == 0 and rows == 1,
                       f"MQTT {'5' if v5 else '3.1.1'}: QoS 2 telemetry completes (PUBCOMP "
                       f"{code}) and is stored when it does")
            # The same message again (a device retrying after a lost PUBCOMP).
            code = c.publish(f"devices/{self.sender}/telemetry",
                             json.dumps({"q2": 1 if v5 else 2, "ts": ts}), qos=2)
            db_rows = stored_rows(self.server.data_dir, self.sender, "q2", ts)
            self.check(code == 0 and db_rows == 1,
                       f"MQTT {'5' if v5 else '3.1.1'}: sent twice, it is stored once "
                       f"(PUBCOMP {code}, {db_rows} rows)")
            c.close()
        c = self.connected_client(self.sender)
        granted = c.subscribe(f"devices/{self.sender}/commands", qos=2)
        self.check(granted in ([1], [2]), f"a QoS 2 subscription is granted (SUBACK {granted})")
        status, body = self.send_command(self.sender)
        command_id = body.get("id") if isinstance(body, dict) else None
        wait_until(lambda: c.received(), 5)
        time.sleep(0.5)
        copies = [m for m in c.received() if command_id and command_id.encode() in m.payload]
        self.check(status == 201 and len(copies) == 1,
                   f"a command (HTTP {status}) reaches a QoS 2 subscriber once "
                   f"({len(copies)} copies)")
        c.close()

    def payload_sizes(self):
        """64 KiB is stored; 64 KiB + 1 is refused (0x97) and not stored;
        10 MiB closes the connection, is not stored, and does not grow the
        server's memory."""
        topic = f"devices/{self.sender}/telemetry"

        def padded(ts, size, metrics=17):
            # Text values of at most 4 KiB each, the longest the store keeps.
            keys = [f"p{i:02d}" for i in range(metrics)]
            room = size - len(json.dumps({"ts": ts, **{k: "" for k in keys}}))
            values = {"ts": ts}
            for i, k in enumerate(keys):
                values[k] = "p" * (room // metrics + (1 if i < room % metrics else 0))
            body = json.dumps(values)
            assert len(body) == size and all(len(v) <= 4096 for v in values.values()
                                             if isinstance(v, str))
            return body

        c = self.connected_client(self.sender)
        ts = now_ms()
        code = c.publish(topic, padded(ts, MAX_PAYLOAD))
        self.check(code == 0 and (self.sender, ts) in stored(self.server.data_dir, "p00"),
                   f"MQTT 5: a {MAX_PAYLOAD}-byte payload is acknowledged (PUBACK {code}) "
                   f"and stored")
        code = c.publish(topic, padded(ts + 1, MAX_PAYLOAD + 1))
        self.check(code == QUOTA_EXCEEDED or (code is None and c.closed),
                   f"MQTT 5: a {MAX_PAYLOAD + 1}-byte payload is refused (PUBACK {code}, "
                   f"want 0x97 or the connection closed)")
        self.check(c.connected(), "MQTT 5: the connection stays up after the refusal")
        c.close()
        c = self.connected_client(self.sender, v5=False)
        code = c.publish(topic, padded(ts + 2, MAX_PAYLOAD + 1))
        self.check(code == 0 or (code is None and c.closed),
                   f"MQTT 3.1.1: a {MAX_PAYLOAD + 1}-byte payload gets a plain PUBACK or a "
                   f"closed connection (PUBACK {code})")
        c.close()
        before = self.record_rss("before the 10 MiB payloads")
        big = json.dumps({"ts": ts + 3, "p00": "p" * (10 * 1024 * 1024)})
        for v5 in (True, False):
            c = self.connected_client(self.sender, v5=v5)
            code = c.publish(topic, big, seconds=20)
            self.check(code is None or code >= 0x80,
                       f"MQTT {'5' if v5 else '3.1.1'}: a 10 MiB payload is refused (PUBACK "
                       f"{code}, connection {'closed' if c.closed else 'open'})")
            c.close()
        # Four at once, over raw sockets.
        def send_big(_):
            try:
                with socket.create_connection(("127.0.0.1", self.server.mqtt_port), 10) as s:
                    s.sendall(raw_connect(self.parser, self.parser, self.secrets[self.parser]))
                    s.sendall(raw_publish_qos0(topic.replace(self.sender, self.parser).encode(),
                                               big.encode()))
            except OSError:
                pass  # closed by the server
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(send_big, range(4)))
        after = self.record_rss("after the 10 MiB payloads")
        stored_pads = {ts_ for _, ts_ in stored(self.server.data_dir, "p00")}
        self.check(stored_pads == {ts}, f"only the 64 KiB payload was stored "
                                        f"(stored p00 timestamps {sorted(stored_pads)})")
        # Six 10 MiB payloads: holding even one of each in memory would
        # exceed the bound.
        self.check(after - before < 32, f"the 10 MiB payloads grew the server's memory by "
                                        f"{after - before:.1f} MiB (< 32 MiB)")

    def bad_json(self):
        """Deeply nested and non-finite JSON is refused (0x99), stored
        nowhere, and the connection stays up."""
        deep_obj = '{"a":' * 1000 + "1" + "}" * 1000
        deep_arr = "[" * 1000 + "]" * 1000
        base = now_ms()
        cases = [
            ("telemetry", '{"ts": %d, "n": %s}' % (base, deep_obj)),
            ("telemetry", deep_obj),
            ("telemetry", deep_arr),
            ("telemetry", '{"ts": %d, "v": NaN}' % (base + 1)),
            ("telemetry", '{"ts": %d, "v": Infinity}' % (base + 2)),
            ("telemetry", '{"ts": %d, "v": -Infinity}' % (base + 3)),
            ("telemetry", '{"ts": %d, "v": 1e999}' % (base + 4)),
            ("telemetry", '{"ts": NaN, "v": 1}'),
            ("telemetry", '{"ts": 1e999, "v": 1}'),
            ("shadow/reported", '{"s": %s}' % deep_obj),
            ("commands/response", '{"id": "x", "status": "succeeded", "result": %s}' % deep_obj),
            ("commands/response", '{"id": "x", "status": "succeeded", "result": NaN}'),
            ("ota/progress", '{"task_id": "t", "state": "s", "progress": Infinity}'),
        ]
        for v5 in (True, False):
            c = self.connected_client(self.parser, v5=v5)
            for route, payload in cases:
                code = c.publish(f"devices/{self.parser}/{route}", payload)
                want = PAYLOAD_FORMAT_INVALID if v5 else 0
                self.check(code == want, f"MQTT {'5' if v5 else '3.1.1'}: {route} "
                                         f"{payload[:28]!r}... is answered {code} (want {want})")
            # The connection is still good for a valid message.
            ts = now_ms()
            code = c.publish(f"devices/{self.parser}/telemetry", json.dumps({"ok": 1, "ts": ts}))
            self.check(code == 0 and c.connected(),
                       f"MQTT {'5' if v5 else '3.1.1'}: a valid message after them is "
                       f"acknowledged (PUBACK {code})")
            c.close()
        rows = stored_rows(self.server.data_dir, self.parser)
        self.check(rows == 2, f"only the two valid messages were stored ({rows} values)")

    def unstorable_values(self):
        """Values the store cannot keep (text over 4 KiB, metric names that
        are not 1-64 letters, digits, '.', '_', '-') are refused with 0x99,
        or stored: an acknowledgement means stored."""
        c = self.connected_client(self.sender)
        base = now_ms()
        cases = [
            {"long_text": "x" * 4097},
            {"bad metric": 1},
            {"m" * 65: 1},
            {"temp/C": 1},
            {"fine": 1, "bad metric": 2},
        ]
        for i, values in enumerate(cases):
            ts = base + i
            code = c.publish(f"devices/{self.sender}/telemetry", json.dumps({"ts": ts, **values}))
            rows = stored_rows(self.server.data_dir, self.sender, ts=ts)
            shown = {k[:12]: (v[:8] + "..." if isinstance(v, str) else v)
                     for k, v in values.items()}
            self.check((code == PAYLOAD_FORMAT_INVALID and rows == 0) or
                       (code == 0 and rows == len(values)),
                       f"MQTT 5: {shown} is refused 0x99 or stored in full (PUBACK {code}, "
                       f"{rows} of {len(values)} values stored)")
        c.close()

    def reconnects(self, n=1000):
        """n back-to-back reconnects of one device with the same client id:
        taking over a live session, after a dropped socket, after DISCONNECT;
        no CONNACK may be a refusal."""
        refusals = Counter()
        previous = None
        started = time.time()
        for i in range(n):
            mode = ("takeover", "dropped", "disconnect")[i % 3]
            v5 = i % 2 == 0
            if previous is not None and mode == "dropped":
                previous.drop()
                previous = None
            elif previous is not None and mode == "disconnect":
                previous.close()
                previous = None
            c = self.client(self.flapper, v5=v5, clean=i % 4 < 2)
            code = c.connect(seconds=10)
            if code != 0:
                refusals[(mode, "MQTT 5" if v5 else "MQTT 3.1.1",
                          "no CONNACK" if code is None else hex(code))] += 1
            if previous is not None:  # taken over
                previous.client.loop_stop()
                sock = previous.client.socket()
                if sock is not None:
                    sock.close()
            previous = c if code == 0 else None
            if code != 0:
                c.close()
        elapsed = time.time() - started
        self.check(not refusals, f"{n} reconnects in {elapsed:.1f} s: no CONNACK refused "
                                 f"({sum(refusals.values())} refused: {dict(refusals)})")
        # The last connection is live: the device is online and can publish.
        last = previous or self.connected_client(self.flapper)
        ts = now_ms()
        code = last.publish(f"devices/{self.flapper}/telemetry", json.dumps({"up": 1, "ts": ts}))
        online = wait_until(lambda: self.device(self.flapper).get("online") is True, 5, 0.2)
        self.check(code == 0 and online,
                   f"after the reconnects the device publishes (PUBACK {code}) and is online "
                   f"({online})")
        last.close()
        offline = wait_until(lambda: self.device(self.flapper).get("online") is False, 10, 0.2)
        self.check(offline, "when its last connection ends, the device is offline")

    def silent_sockets(self, n=200):
        """TCP connections from one address that never send CONNECT (some
        send half a packet): beyond UNANSWERED_PER_IP they are closed at
        once, the rest within NO_CONNECT_DEADLINE_S, and devices from
        another address connect meanwhile."""
        fds_before = self.server.open_fds()
        socks = []
        for i in range(n):
            # From 127.0.0.2: the well-behaved devices use 127.0.0.1.
            s = socket.create_connection(("127.0.0.1", self.server.mqtt_port), 10,
                                         source_address=("127.0.0.2", 0))
            if i % 10 == 1:
                s.sendall(b"\x10")  # the first byte of a CONNECT
            elif i % 10 == 2:
                s.sendall(b"\x10\x7f\x00\x04MQTT")  # a CONNECT that never completes
            s.setblocking(False)
            socks.append(s)
        opened = time.time()
        time.sleep(0.5)
        at_once = sum(1 for s in socks if socket_closed_by_peer(s))
        self.check(at_once == n - UNANSWERED_PER_IP,
                   f"of {n} silent connections from one address, {at_once} were closed at once "
                   f"(want {n - UNANSWERED_PER_IP}: {UNANSWERED_PER_IP} may wait for their CONNECT)")
        self.record_rss(f"with {n} silent connections open")
        c = self.client(self.sender)
        code = c.connect(seconds=5)
        ts = now_ms()
        pub = c.publish(f"devices/{self.sender}/telemetry", json.dumps({"meanwhile": 1, "ts": ts}),
                        seconds=5) if code == 0 else None
        self.check(code == 0 and pub == 0,
                   f"with {n} silent connections open a device connects (CONNACK {code}) and "
                   f"publishes (PUBACK {pub})")
        c.close()
        open_socks = set(socks)
        closed_at = []
        while open_socks and time.time() - opened < NO_CONNECT_DEADLINE_S + 1:
            readable, _, _ = select.select(list(open_socks), [], [], 0.5)
            for s in readable:
                if socket_closed_by_peer(s):
                    open_socks.discard(s)
                    closed_at.append(time.time() - opened)
        for s in socks:
            s.close()
        latest = f"{max(closed_at):.1f} s" if closed_at else "-"
        self.check(not open_socks,
                   f"{n - len(open_socks)} of {n} connections that never sent CONNECT were "
                   f"closed by the server within {NO_CONNECT_DEADLINE_S} s (latest after "
                   f"{latest})")
        # Their descriptors are given back: the server holds about as many
        # as before (a few come and go with the device connections above).
        fds_after = self.server.open_fds()
        self.check(fds_after <= fds_before + 20,
                   f"the server holds {fds_after} file descriptors after the silent "
                   f"connections, {fds_before} before (budget: +20)")

    def never_reads(self):
        """A device subscribed to its own topics that never reads its socket,
        while it echoes 60 KiB messages to itself and commands are sent to
        it: the server's memory stays bounded and others are served."""
        before = self.record_rss("before the never-reading client")
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", self.server.mqtt_port))
        s.sendall(raw_connect(self.reader, self.reader, self.secrets[self.reader], keepalive=0))
        # MQTT 3.1.1 delivers a copy for every matching subscription: five
        # overlapping ones make each command five messages.
        for packet_id, suffix in enumerate(OVERLAPPING, start=1):
            s.sendall(raw_subscribe(packet_id, f"devices/{self.reader}/{suffix}", 1))
        time.sleep(0.5)
        echo = raw_publish_qos0(f"devices/{self.reader}/shadow/reported".encode(),
                                json.dumps({"pad": "e" * (60 * 1024)}).encode())
        s.settimeout(0.2)
        sent, stalled = 0, 0
        started = time.time()
        # About 256 MiB of echoes, until the server stops reading (2 s
        # without progress), at most 20 s.
        while sent < 4400 and stalled < 10 and time.time() - started < 20:
            try:
                s.sendall(echo)
                sent, stalled = sent + 1, 0
            except socket.timeout:
                stalled += 1
            except OSError:
                break
        echo_s = time.time() - started
        mid = self.record_rss(f"after {sent} echoes of 60 KiB ({sent * 60 / 1024:.0f} MiB) "
                              f"in {echo_s:.1f} s")
        # Commands of 15 KiB, in rounds, four senders at a time. The first
        # round fills what the broker holds for the device (its in-flight
        # window and message queue); the rounds after it must not grow the
        # server's memory by what they carry (five copies of each).
        params = {"pad": "c" * (15 * 1024)}
        round_rss = []
        started = time.time()
        statuses = Counter()
        # Meanwhile a well-behaved device publishes four times a second.
        latencies, done = [], threading.Event()

        def publish_meanwhile():
            good = self.client(self.victim)
            if good.connect() != 0:
                latencies.append(None)
                return
            while not done.is_set():
                t0 = time.time()
                code = good.publish(f"devices/{self.victim}/telemetry",
                                    json.dumps({"meanwhile": len(latencies)}), seconds=10)
                latencies.append(time.time() - t0 if code == 0 else None)
                time.sleep(0.25)
            good.close()

        meanwhile = threading.Thread(target=publish_meanwhile)
        meanwhile.start()
        with ThreadPoolExecutor(4) as pool:
            for r in range(COMMAND_ROUNDS):
                statuses.update(pool.map(lambda _: self.send_command(self.reader, params)[0],
                                         range(COMMANDS_PER_ROUND)))
                round_rss.append(self.record_rss(
                    f"after {(r + 1) * COMMANDS_PER_ROUND} commands to the never-reading client"))
        done.set()
        meanwhile.join()
        sent_commands = COMMAND_ROUNDS * COMMANDS_PER_ROUND
        slowest = max((t for t in latencies if t is not None), default=None)
        self.check(latencies and None not in latencies and slowest < 5,
                   f"meanwhile a well-behaved device had all of its {len(latencies)} messages "
                   f"acknowledged (slowest after {slowest or 0:.2f} s, < 5 s)")
        self.check(set(statuses) <= {201},
                   f"{sent_commands} commands to the never-reading device were accepted in "
                   f"{time.time() - started:.1f} s (HTTP {dict(statuses)})")
        carried = (COMMAND_ROUNDS - 1) * COMMANDS_PER_ROUND * len(OVERLAPPING) * 15 / 1024
        grown, bound = round_rss[-1] - round_rss[0], carried * 3 / 4
        self.check(grown < bound,
                   f"after the first round, {carried:.0f} MiB more for the device grew the "
                   f"server's memory by {grown:.1f} MiB (< {bound:.0f} MiB)")
        # Others are served, both ways.
        other = self.connected_client(self.sender)
        other.subscribe(f"devices/{self.sender}/commands", qos=1)
        status, _ = self.send_command(self.sender)
        got = wait_until(lambda: other.received(), 5)
        self.check(status == 201 and got, "another device still receives its command")
        other.close()
        after = self.record_rss("after the never-reading client")
        self.check(after - before < RSS_BUDGET_MIB,
                   f"the never-reading client grew the server's memory by {after - before:.1f} "
                   f"MiB (< {RSS_BUDGET_MIB} MiB; {mid - before:.1f} MiB after the echoes)")
        s.close()


PROBES = ["subscriptions", "wills", "retained", "qos2", "payload_sizes", "bad_json",
          "unstorable_values", "reconnects", "silent_sockets", "never_reads"]


def main():
    if len(sys.argv) < 2 or any(p not in PROBES for p in sys.argv[2:]):
        print(__doc__ + "\nprobes: " + " ".join(PROBES), file=sys.stderr)
        sys.exit(2)
    binary = os.path.abspath(sys.argv[1])
    probes = sys.argv[2:] or PROBES
    work = tempfile.mkdtemp(prefix="wf-iot-hostile-")
    server = Server(binary, os.path.join(work, "data"), os.path.join(work, "server.log"))
    suite = None
    started = time.time()
    try:
        server.start()
        token = login(server)
        suite = Suite(server, token, create_devices(server, token, "hostile", 8))
        suite.record_rss("at the start")
        suite.still_serving("the start")
        for name in probes:
            print(f"--- {name}: {getattr(Suite, name).__doc__.split(chr(10))[0]}", flush=True)
            getattr(suite, name)()
            if not server.alive():
                suite.check(False, f"the server is still running after {name}")
                break
            suite.still_serving(name)
        if server.alive():
            end = suite.record_rss("at the end")
            start = suite.rss[0][1]
            suite.check(end - start < RSS_BUDGET_MIB,
                        f"over the suite the server's memory grew by {end - start:.1f} MiB "
                        f"(< {RSS_BUDGET_MIB} MiB)")
    finally:
        if suite and suite.good_client:
            suite.good_client.close()
        server.stop()
        log_tail = server.tail(20)
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(probes)} probes in {time.time() - started:.0f} s")
    if suite.failures:
        print(f"server log (last lines):\n{log_tail}", file=sys.stderr)
        fail(f"{len(suite.failures)} check(s) failed:\n  " + "\n  ".join(suite.failures))
    print("ok: every hostile client was refused or bounded, and the broker kept serving")


if __name__ == "__main__":
    main()

"""A real `wf-iot serve` for the MQTT suites in .ci/.

Shared by ingest_durability.py, mqtt_hostile.py and mqtt_shadow.py: free
ports, the server process (all-in-one mode: SQLite, embedded broker, in-process events) on a
fresh data directory, the REST calls the suites need (login, registering
devices, reading what was stored), a recording paho-mqtt client, and
waiting for a condition.
"""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import paho.mqtt.client as mqtt

ADMIN_PASSWORD = "suite-admin-password"


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_until(predicate, seconds, interval=0.1):
    """Calls `predicate` until it returns something true or `seconds` pass;
    returns its last result."""
    deadline = time.time() + seconds
    while True:
        result = predicate()
        if result or time.time() > deadline:
            return result
        time.sleep(interval)


class Server:
    """`wf-iot serve` on fixed free ports, restartable on the same data dir."""

    def __init__(self, binary, data_dir, log_path, extra_env=None):
        self.binary = binary
        self.data_dir = data_dir
        self.log_path = log_path
        names = [
            "AUTH__HTTP_PORT", "AUTH__GRPC_PORT", "DEVICE__HTTP_PORT", "DEVICE__GRPC_PORT",
            "MQTT_GATEWAY__MQTT_PORT", "MQTT_GATEWAY__WS_PORT", "MQTT_GATEWAY__HTTP_PORT",
            "MQTT_GATEWAY__GRPC_PORT", "FIRMWARE__HTTP_PORT", "FIRMWARE__GRPC_PORT",
            "GATEWAY__HTTP_PORT",
        ]
        self.ports = dict(zip(names, free_ports(len(names))))
        env = {k: v for k, v in os.environ.items() if not k.startswith("WF_IOT_")}
        for service in ["AUTH", "DEVICE", "MQTT_GATEWAY", "FIRMWARE", "GATEWAY"]:
            env[f"WF_IOT_{service}__HOST"] = "127.0.0.1"
        for name, port in self.ports.items():
            env[f"WF_IOT_{name}"] = str(port)
        env["WF_IOT_DATA_DIR"] = data_dir
        env["WF_IOT_ADMIN_PASSWORD"] = ADMIN_PASSWORD
        env["WF_IOT_GATEWAY__RATE_LIMITS__ENABLED"] = "false"
        env["WF_IOT_LOG__LEVEL"] = "warn"
        env.update(extra_env or {})
        self.env = env
        self.proc = None

    @property
    def mqtt_port(self):
        return self.ports["MQTT_GATEWAY__MQTT_PORT"]

    def url(self, service, path):
        return f"http://127.0.0.1:{self.ports[service + '__HTTP_PORT']}{path}"

    def start(self):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.binary, "serve"], env=self.env, stdout=log, stderr=log)
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                fail(f"wf-iot serve exited during startup; see {self.log_path}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url("DEVICE", "/readyz"), timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        fail(f"wf-iot serve was not ready within 90 s:\n{self.tail()}")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def rss_mib(self):
        """The server's resident memory (VmRSS) in MiB."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        fail("no VmRSS in /proc/<pid>/status")

    def open_fds(self):
        """How many file descriptors the server holds."""
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, n=30):
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""


def http(method, url, body=None, token=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


def login(server):
    status, body = http("POST", server.url("AUTH", "/api/v1/auth/login"),
                        {"username": "admin", "password": ADMIN_PASSWORD})
    if status != 200:
        fail(f"login answered {status}: {body}")
    return body["access_token"]


def create_devices(server, token, prefix, n):
    """Registers `{prefix}-00` .. and returns {device id: secret}."""
    devices = {}
    for i in range(n):
        device_id = f"{prefix}-{i:02d}"
        status, body = http("POST", server.url("DEVICE", "/api/v1/devices"),
                            {"id": device_id, "name": device_id}, token)
        if status != 201:
            fail(f"creating {device_id} answered {status}: {body}")
        devices[device_id] = body["credentials"]["secret"]
    return devices


def stored(data_dir, metric="seq", device_id=None):
    """(device id, ts) of every stored value of `metric`, read from the data
    directory's devices.db."""
    db = sqlite3.connect(f"file:{os.path.join(data_dir, 'devices.db')}?mode=ro", uri=True,
                         timeout=30)
    try:
        if device_id is None:
            rows = db.execute("SELECT device_id, ts FROM device_data WHERE metric = ?",
                              (metric,)).fetchall()
        else:
            rows = db.execute("SELECT device_id, ts FROM device_data WHERE metric = ? "
                              "AND device_id = ?", (metric, device_id)).fetchall()
    finally:
        db.close()
    return set(rows)


def stored_rows(data_dir, device_id, metric=None, ts=None):
    """How many values of `device_id` (of `metric`, at `ts`) devices.db holds."""
    query, args = "SELECT COUNT(*) FROM device_data WHERE device_id = ?", [device_id]
    if metric is not None:
        query, args = query + " AND metric = ?", args + [metric]
    if ts is not None:
        query, args = query + " AND ts = ?", args + [ts]
    db = sqlite3.connect(f"file:{os.path.join(data_dir, 'devices.db')}?mode=ro", uri=True,
                         timeout=30)
    try:
        return db.execute(query, args).fetchone()[0]
    finally:
        db.close()


class Client:
    """A paho-mqtt connection that records what the broker answers: CONNACK,
    SUBACKs and PUBACKs (PUBCOMPs) by message id, messages received, and the
    connection's end. It never reconnects by itself."""

    def __init__(self, device_id, secret, port, v5=True, will=None, clean=True):
        self.device_id = device_id
        self.v5 = v5
        kwargs = {} if v5 else {"clean_session": clean}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id,
                                  protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                                  reconnect_on_failure=False, **kwargs)
        self.client.username_pw_set(device_id, secret)
        if will:
            self.client.will_set(*will)
        self.cond = threading.Condition()
        self.connack = None
        self.closed = False
        self.subacks = {}
        self.pubacks = {}
        self.messages = []
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.port = port

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self.cond:
            self.connack = reason_code.value
            self.cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.cond:
            self.subacks[mid] = [rc.value for rc in reason_codes]
            self.cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self.cond:
            self.pubacks[mid] = reason_code.value
            self.cond.notify_all()

    def _on_message(self, client, userdata, message):
        with self.cond:
            self.messages.append(message)
            self.cond.notify_all()

    def _wait(self, predicate, seconds):
        with self.cond:
            return self.cond.wait_for(predicate, seconds)

    def connect(self, seconds=10):
        """Connects and returns the CONNACK's reason code, or None when the
        connection ended without one."""
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=60)
        except OSError:
            self.closed = True
            return None
        self.client.loop_start()
        self._wait(lambda: self.connack is not None or self.closed, seconds)
        return self.connack

    def subscribe(self, topic, qos=1, seconds=5):
        """The SUBACK's reason codes, or None when the connection ended."""
        result, mid = self.client.subscribe(topic, qos)
        if result != mqtt.MQTT_ERR_SUCCESS:
            return None
        self._wait(lambda: mid in self.subacks or self.closed, seconds)
        return self.subacks.get(mid)

    def publish(self, topic, payload, qos=1, retain=False, seconds=15):
        """The PUBACK's (PUBCOMP's) reason code, or None when none came (the
        connection was closed)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        self._wait(lambda: info.mid in self.pubacks or self.closed, seconds)
        return self.pubacks.get(info.mid)

    def received(self):
        with self.cond:
            return list(self.messages)

    def connected(self):
        return self.connack == 0 and not self.closed

    def drop(self):
        """Ends the connection without DISCONNECT, as a lost network would."""
        sock = self.client.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._wait(lambda: self.closed, 5)
        self.client.loop_stop()

    def close(self):
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

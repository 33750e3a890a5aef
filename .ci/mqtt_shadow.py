#!/usr/bin/env python3
"""Device state with paho-mqtt devices against a real `wf-iot serve`.

    mqtt_shadow.py BIN

Starts `wf-iot serve` (all-in-one: SQLite, embedded broker) on free ports
and drives devices with paho-mqtt, the operator side through the
api-gateway's REST API:

1. a device reports its state; an operator sets desired state with
   If-Match, and a stale version is refused with 412; the connected device
   gets the delta on shadow/desired, applies it and reports back, and the
   delta empties;
2. desired state set while the device is away reaches it when it
   reconnects; shadow/get answers the whole document on devices/{id}/shadow;
3. bad input from the device (not JSON, not an object, too large, a publish
   on shadow/desired) is refused on shadow/rejected, the document is
   unchanged and the connection stays up;
4. a fleet shadow job by tag reaches three devices, one of them offline
   until later, and completes once every device converged.

Run through .ci/mqtt-suites.sh, which provides paho-mqtt in a virtualenv.
"""

import json
import shutil
import sys
import tempfile
import time

from wf_iot_harness import Client, Server, fail, http, login, wait_until

PREFIX = "devices/{}/shadow"


def check(condition, message):
    if not condition:
        fail(message)


class Firmware:
    """A device that applies every desired delta it gets and reports back,
    as real firmware does."""

    def __init__(self, server, device_id, secret):
        self.device_id, self.secret, self.server = device_id, secret, server
        self.client = None

    def connect(self):
        self.client = Client(self.device_id, self.secret, self.server.mqtt_port, v5=False)
        check(self.client.connect() == 0, f"{self.device_id} could not connect")
        topic = PREFIX.format(self.device_id)
        for suffix in ["/desired", "", "/rejected"]:
            check(self.client.subscribe(topic + suffix) == [1], f"subscribe {topic}{suffix}")
        self.client.client.message_callback_add(topic + "/desired", self._apply)

    def _apply(self, client, userdata, message):
        body = json.loads(message.payload)
        client.publish(PREFIX.format(self.device_id) + "/reported",
                       json.dumps(body["state"]), qos=1)

    def close(self):
        self.client.close()


def messages(client, topic):
    return [json.loads(m.payload) for m in client.received() if m.topic == topic]


def main():
    binary = sys.argv[1]
    work = tempfile.mkdtemp(prefix="wf-iot-shadow-")
    server = Server(binary, f"{work}/data", f"{work}/server.log")
    try:
        server.start()
        run(server)
        print("device state over MQTT: every check passed")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def run(server):
    token = login(server)
    api = lambda path: server.url("GATEWAY", f"/api/v1{path}")  # noqa: E731

    def create(device_id, tags=()):
        status, body = http("POST", api("/devices"),
                            {"id": device_id, "name": device_id, "tags": list(tags)}, token)
        check(status == 201, f"creating {device_id}: {status} {body}")
        return body["credentials"]["secret"]

    def shadow(device_id):
        status, body = http("GET", api(f"/devices/{device_id}/shadow"), token=token)
        check(status == 200, f"GET shadow of {device_id}: {status} {body}")
        return body

    def set_desired(device_id, desired, version=None):
        headers = {} if version is None else {"If-Match": f'"{version}"'}
        return http("PATCH", api(f"/devices/{device_id}/shadow"), {"desired": desired}, token,
                    headers)

    # 1. Report, desire, converge.
    secret = create("sh-1")
    dev = Client("sh-1", secret, server.mqtt_port, v5=False)
    check(dev.connect() == 0, "sh-1 could not connect")
    for suffix in ["/desired", "", "/rejected"]:
        check(dev.subscribe(PREFIX.format("sh-1") + suffix) == [1], f"subscribe {suffix}")
    check(dev.publish(PREFIX.format("sh-1") + "/reported",
                      json.dumps({"sampling_ms": 1000, "fw_version": "1.0.0"})) == 0,
          "the report was not acknowledged")
    doc = wait_until(lambda: (d := shadow("sh-1"))["reported"].get("fw_version") and d, 10)
    check(doc, "the reported state never showed")
    version = doc["version"]
    status, body = set_desired("sh-1", {"sampling_ms": 250}, version)
    check(status == 200 and body["delta"] == {"sampling_ms": 250}, f"PATCH: {status} {body}")
    status, body = set_desired("sh-1", {"sampling_ms": 500}, version)
    check(status == 412 and body["error"]["code"] == "precondition_failed",
          f"a stale If-Match answered {status} {body}")
    desired_topic = PREFIX.format("sh-1") + "/desired"
    got = wait_until(lambda: messages(dev, desired_topic), 10)
    check(got and got[-1] == {"version": version + 1, "state": {"sampling_ms": 250}},
          f"the delta on shadow/desired: {got}")
    dev.publish(PREFIX.format("sh-1") + "/reported", json.dumps({"sampling_ms": 250}))
    check(wait_until(lambda: shadow("sh-1")["delta"] == {}, 10), "the delta never emptied")

    # 2. Away, back, and asking.
    dev.close()
    check(wait_until(lambda: not http("GET", api("/devices/sh-1"), token=token)[1]["online"], 10),
          "sh-1 never went offline")
    status, body = set_desired("sh-1", {"mode": "eco"})
    check(status == 200, f"PATCH while away: {status} {body}")
    dev = Client("sh-1", secret, server.mqtt_port, v5=False)
    check(dev.connect() == 0, "sh-1 could not reconnect")
    for suffix in ["/desired", "", "/rejected"]:
        dev.subscribe(PREFIX.format("sh-1") + suffix)
    got = wait_until(lambda: messages(dev, desired_topic), 10)
    check(got and got[-1]["state"] == {"mode": "eco"}, f"nothing on reconnect: {got}")
    dev.publish(PREFIX.format("sh-1") + "/get", b"")
    full = wait_until(lambda: messages(dev, PREFIX.format("sh-1")), 10)
    check(full and full[-1]["desired"] == {"sampling_ms": 250, "mode": "eco"}
          and full[-1]["version"] == shadow("sh-1")["version"], f"shadow/get answered {full}")

    # 3. Bad input: refused on shadow/rejected, nothing changes, still connected.
    before = shadow("sh-1")["version"]
    rejected_topic = PREFIX.format("sh-1") + "/rejected"
    for topic, payload, code in [
        ("/reported", b"{not json", "not_json"),
        ("/reported", b"[1, 2, 3]", "not_object"),
        ("/reported", json.dumps({"blob": "x" * (17 * 1024)}).encode(), "too_large"),
        ("/desired", json.dumps({"version": 99, "state": {"mode": "hacked"}}).encode(),
         "not_allowed"),
    ]:
        count = len(messages(dev, rejected_topic))
        dev.publish(PREFIX.format("sh-1") + topic, payload, qos=0)
        got = wait_until(lambda: len(messages(dev, rejected_topic)) > count
                         and messages(dev, rejected_topic), 10)
        check(got and got[-1]["code"] == code, f"{topic} {payload[:20]!r}: refusal {got}")
    check(dev.connected(), "the connection did not stay up")
    after = shadow("sh-1")
    check(after["version"] == before and after["desired"].get("mode") == "eco",
          f"a refused update changed the document: {after}")

    # 4. A fleet job by tag, one device offline until later.
    fleet = {f"fl-{i}": create(f"fl-{i}", ["site-a"]) for i in range(3)}
    create("elsewhere")
    devices = {d: Firmware(server, d, s) for d, s in fleet.items()}
    for d in ["fl-0", "fl-1"]:
        devices[d].connect()
    time.sleep(0.5)
    status, job = http("POST", api("/shadow-jobs"),
                       {"desired": {"sampling_ms": 2000}, "target": {"tag": "site-a"},
                        "rate_per_second": 50}, token)
    check(status == 201 and job["progress"]["targeted"] == 3, f"job: {status} {job}")
    job_path = api(f"/shadow-jobs/{job['id']}")
    progress = wait_until(lambda: (p := http("GET", job_path, token=token)[1]["progress"])
                          ["converged"] == 2 and p, 20)
    check(progress and progress["pending"] == 1, f"two devices should converge: {progress}")
    devices["fl-2"].connect()
    done = wait_until(lambda: (j := http("GET", job_path, token=token)[1])["status"] == "completed"
                      and j, 20)
    check(done, "the job never completed")
    check(done["progress"] == {"targeted": 3, "delivered": 3, "converged": 3, "pending": 0,
                               "failed": 0}, f"progress {done['progress']}")
    check(shadow("elsewhere")["version"] == 0, "a device outside the target was changed")
    for fw in devices.values():
        fw.close()
    dev.close()


if __name__ == "__main__":
    main()

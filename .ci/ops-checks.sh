#!/usr/bin/env bash
# Checks of the deployment and operations files under deploy/:
#
#   - the Prometheus rules and scrape config (promtool), the Grafana
#     dashboard, the Kubernetes manifests, kong.yml and the compose file
#     parse and hold together;
#   - the real nginx (Debian's package) with deploy/nginx/wf-iot.conf, in
#     front of a running `wf-iot serve`: over HTTPS a login, a live
#     Server-Sent Events stream that shows a device event, a WebSocket
#     upgrade, and a firmware upload larger than nginx's default body limit;
#   - JSON logs carry the service and the request id sent through nginx;
#   - every wf_* metric that the alert rules and the dashboard name is
#     exported by the running services.
#
# Usage: .ci/ops-checks.sh PATH/TO/wf-iot
# Uses only free ports and a temporary directory; never touches a system
# nginx or Prometheus.

set -euo pipefail

BIN=${1:?usage: .ci/ops-checks.sh PATH/TO/wf-iot}
BIN=$(realpath "$BIN")
[[ -x "$BIN" ]] || { echo "ops-checks: $BIN is not executable" >&2; exit 2; }
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPLOY="$ROOT/deploy"
WORK=$(mktemp -d -t wf-iot-ops.XXXXXX)
ADMIN_PASSWORD="ops-check-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
SERVER_PID=""
NGINX_PID=""
SIM_PID=""
SSE_PID=""
STARTED=$(date +%s)

section() { printf '\n=== ops: %s\n' "$*"; }
fail() {
    echo "ops-checks FAILED: $*" >&2
    exit 1
}

cleanup() {
    local status=$?
    for pid in "$SSE_PID" "$SIM_PID"; do
        if [[ -n "$pid" ]]; then
            kill "$pid" 2>/dev/null || true
        fi
    done
    if [[ -n "$NGINX_PID" ]]; then
        kill -QUIT "$NGINX_PID" 2>/dev/null || true
    fi
    if [[ -n "$SERVER_PID" ]]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 20); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ -n "$NGINX_PID" ]]; then
        for _ in $(seq 1 10); do
            kill -0 "$NGINX_PID" 2>/dev/null || break
            sleep 0.3
        done
        kill -KILL "$NGINX_PID" 2>/dev/null || true
    fi
    wait 2>/dev/null || true
    if [[ $status -ne 0 ]]; then
        for log in "$WORK/server.log" "$WORK/nginx/error.log" "$WORK/simulate.log" "$WORK/sse.txt"; do
            if [[ -s "$log" ]]; then
                echo "--- last lines of $log" >&2
                tail -n 25 "$log" >&2
            fi
        done
    fi
    rm -rf "$WORK"
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------
section "tools"
missing=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v curl >/dev/null 2>&1 || missing+=(curl)
python3 -c 'import yaml' 2>/dev/null || missing+=(python3-yaml)
if ((${#missing[@]})); then
    echo "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || echo "apt-get update failed; trying the install anyway"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        fail "apt-get install ${missing[*]} failed"
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
"$NGINX" -v 2>&1
promtool --version 2>&1 | head -n 1

# ---------------------------------------------------------------------------
section "Prometheus rules and scrape config (promtool)"
promtool check rules "$DEPLOY/prometheus/alerts.yml"
promtool check config "$DEPLOY/prometheus/prometheus.yml"
# The Kubernetes variant lives in a ConfigMap: check it the same way.
python3 - "$DEPLOY/k8s/monitoring.yaml" "$WORK/k8s-prometheus" <<'EOF'
import os, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
os.makedirs(sys.argv[2], exist_ok=True)
found = False
for d in docs:
    if d.get("kind") == "ConfigMap" and "prometheus.yml" in d.get("data", {}):
        for name, text in d["data"].items():
            open(os.path.join(sys.argv[2], name), "w").write(text)
        found = True
sys.exit(0 if found else "no ConfigMap with prometheus.yml in monitoring.yaml")
EOF
if ! promtool check config "$WORK/k8s-prometheus/prometheus.yml" >"$WORK/promtool-k8s.txt" 2>&1; then
    # Debian builds Prometheus without Kubernetes service discovery.
    if grep -q 'field kubernetes_sd_configs not found' "$WORK/promtool-k8s.txt"; then
        echo "note: this promtool has no Kubernetes service discovery; checking the rest of the file"
        sed '/kubernetes_sd_configs:/,/names: \[wf-iot\]/d' "$WORK/k8s-prometheus/prometheus.yml" \
            >"$WORK/k8s-prometheus/prometheus-no-sd.yml"
        promtool check config "$WORK/k8s-prometheus/prometheus-no-sd.yml" ||
            fail "the Kubernetes Prometheus config in deploy/k8s/monitoring.yaml is invalid"
    else
        cat "$WORK/promtool-k8s.txt" >&2
        fail "the Kubernetes Prometheus config in deploy/k8s/monitoring.yaml is invalid"
    fi
fi
cmp -s "$WORK/k8s-prometheus/alerts.yml" "$DEPLOY/prometheus/alerts.yml" ||
    fail "deploy/k8s/monitoring.yaml carries alert rules that differ from deploy/prometheus/alerts.yml"
echo "ok: the Kubernetes Prometheus config is valid and carries the same rules"

# ---------------------------------------------------------------------------
section "Grafana dashboard, Kubernetes manifests, kong.yml, compose file"
python3 - "$DEPLOY" <<'EOF'
import json, pathlib, sys, yaml
deploy = pathlib.Path(sys.argv[1])

dash = json.loads((deploy / "grafana/dashboards/wf-iot-overview.json").read_text())
ids = set()
for p in dash["panels"]:
    assert p["id"] not in ids, f"duplicate panel id {p['id']}"
    ids.add(p["id"])
    if p["type"] != "row":
        assert p.get("targets"), f"panel {p['title']!r} has no query"
        for t in p["targets"]:
            assert t["expr"].strip(), f"panel {p['title']!r} has an empty query"
print(f"ok: dashboard {dash['title']!r}, {len(ids)} panels")

kinds = {}
hpas = []
for f in sorted((deploy / "k8s").glob("*.yaml")):
    if f.name == "kustomization.yaml":
        listed = yaml.safe_load(f.read_text())["resources"]
        for r in listed:
            assert (deploy / "k8s" / r).is_file(), f"kustomization.yaml lists a missing {r}"
        continue
    for d in yaml.safe_load_all(f.read_text()):
        if not d:
            continue
        for key in ("apiVersion", "kind", "metadata"):
            assert key in d, f"{f.name}: a document without {key}"
        kinds.setdefault(d["kind"], []).append(d["metadata"]["name"])
        if d["kind"] == "Deployment":
            spec = d["spec"]["template"]["spec"]
            for c in spec["containers"]:
                name = f"{f.name}: {d['metadata']['name']}/{c['name']}"
                assert c.get("readinessProbe") and c.get("livenessProbe"), f"{name} lacks probes"
                assert c.get("resources", {}).get("requests"), f"{name} lacks resource requests"
            sel = d["spec"]["selector"]["matchLabels"]
            labels = d["spec"]["template"]["metadata"]["labels"]
            assert all(labels.get(k) == v for k, v in sel.items()), f"{f.name}: selector does not match the pod labels"
        if d["kind"] == "HorizontalPodAutoscaler":
            hpas.append(d)
for d in hpas:
    assert d["spec"]["scaleTargetRef"]["name"] in kinds.get("Deployment", []), \
        f"HPA {d['metadata']['name']} targets an unknown Deployment"
for needed in ("Deployment", "Service", "ConfigMap", "Secret", "HorizontalPodAutoscaler"):
    assert needed in kinds, f"no {needed} in deploy/k8s"
print("ok: Kubernetes manifests: " + ", ".join(f"{len(v)} {k}" for k, v in sorted(kinds.items())))

kong = yaml.safe_load((deploy / "kong/kong.yml").read_text())
assert kong["_format_version"].startswith("3"), "kong.yml: _format_version 3.x expected"
plugins = {p["name"] for p in kong.get("plugins", [])}
for s in kong["services"]:
    for r in s.get("routes", []):
        plugins |= {p["name"] for p in r.get("plugins", [])}
    plugins |= {p["name"] for p in s.get("plugins", [])}
for needed in ("jwt", "rate-limiting", "cors"):
    assert needed in plugins, f"kong.yml: no {needed} plugin"
consumers = kong.get("consumers", [])
assert any(c.get("jwt_secrets") for c in consumers), "kong.yml: no consumer with a JWT credential"
print(f"ok: kong.yml: {len(kong['services'])} services, plugins {sorted(plugins)}")

for f in sorted((deploy / "consul").glob("*.json")):
    json.loads(f.read_text())
print("ok: Consul service definitions parse")
EOF

# Against the Kubernetes API schemas too, where the validator is installed
# (pip install kubernetes-validate).
if command -v kubernetes-validate >/dev/null 2>&1; then
    manifests=()
    for f in "$DEPLOY"/k8s/*.yaml; do
        [[ "$f" == */kustomization.yaml ]] || manifests+=("$f")
    done
    kubernetes-validate --strict --quiet -k 1.31.0 "${manifests[@]}" ||
        fail "a Kubernetes manifest does not match the API schema"
    echo "ok: Kubernetes manifests match the 1.31 API schemas"
fi

if docker compose version >/dev/null 2>&1; then
    (cd "$DEPLOY" && docker compose --env-file env.example -f docker-compose.yml config -q)
    echo "ok: docker compose config"
elif command -v docker-compose >/dev/null 2>&1; then
    # Compose v1 knows the file format but not the top-level `name`.
    sed '/^name: /d' "$DEPLOY/docker-compose.yml" >"$DEPLOY/.ops-check-compose.yml"
    if (cd "$DEPLOY" && docker-compose --env-file env.example -f .ops-check-compose.yml config -q); then
        rm -f "$DEPLOY/.ops-check-compose.yml"
        echo "ok: docker-compose config"
    else
        rm -f "$DEPLOY/.ops-check-compose.yml"
        fail "docker-compose config refused deploy/docker-compose.yml"
    fi
else
    python3 - "$DEPLOY/docker-compose.yml" <<'EOF'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
for name, svc in doc["services"].items():
    for dep in (svc.get("depends_on") or {}):
        assert dep in doc["services"], f"{name} depends on unknown service {dep}"
print(f"ok: docker-compose.yml parses, {len(doc['services'])} services (no compose CLI here)")
EOF
fi

# ---------------------------------------------------------------------------
section "wf-iot serve (all-in-one, free ports, JSON logs)"
read -r AUTH_HTTP AUTH_GRPC DEVICE_HTTP DEVICE_GRPC MQTT_PORT MQTT_WS MQTT_HTTP MQTT_GRPC \
    FIRMWARE_HTTP FIRMWARE_GRPC GATEWAY_PORT NGINX_HTTP NGINX_HTTPS < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(13)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
')
mkdir -p "$WORK/run"
(
    cd "$WORK/run"
    exec env WF_IOT_DATA_DIR="$WORK/run/data" \
        WF_IOT_LOG__FORMAT=json \
        WF_IOT_LOG__SERVICE=wf-iot-ops-check \
        WF_IOT_LOG__LEVEL='info,wf_common::telemetry=debug,rmqtt=warn,rmqtt_net=warn' \
        WF_IOT_AUTH__HOST=127.0.0.1 WF_IOT_AUTH__HTTP_PORT="$AUTH_HTTP" WF_IOT_AUTH__GRPC_PORT="$AUTH_GRPC" \
        WF_IOT_DEVICE__HOST=127.0.0.1 WF_IOT_DEVICE__HTTP_PORT="$DEVICE_HTTP" WF_IOT_DEVICE__GRPC_PORT="$DEVICE_GRPC" \
        WF_IOT_MQTT_GATEWAY__HOST=127.0.0.1 WF_IOT_MQTT_GATEWAY__MQTT_PORT="$MQTT_PORT" \
        WF_IOT_MQTT_GATEWAY__WS_PORT="$MQTT_WS" WF_IOT_MQTT_GATEWAY__HTTP_PORT="$MQTT_HTTP" \
        WF_IOT_MQTT_GATEWAY__GRPC_PORT="$MQTT_GRPC" \
        WF_IOT_FIRMWARE__HOST=127.0.0.1 WF_IOT_FIRMWARE__HTTP_PORT="$FIRMWARE_HTTP" \
        WF_IOT_FIRMWARE__GRPC_PORT="$FIRMWARE_GRPC" \
        WF_IOT_FIRMWARE__PUBLIC_URL="https://127.0.0.1:${NGINX_HTTPS}" \
        WF_IOT_GATEWAY__HOST=127.0.0.1 WF_IOT_GATEWAY__HTTP_PORT="$GATEWAY_PORT" \
        WF_IOT_GATEWAY__TRUSTED_PROXIES='["127.0.0.1"]' \
        WF_IOT_ADMIN_PASSWORD="$ADMIN_PASSWORD" \
        "$BIN" serve
) >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 90); do
    kill -0 "$SERVER_PID" 2>/dev/null || fail "wf-iot serve exited during startup"
    if curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:${GATEWAY_PORT}/readyz" 2>/dev/null &&
        curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:${FIRMWARE_HTTP}/readyz" 2>/dev/null; then
        break
    fi
    sleep 1
done
curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:${GATEWAY_PORT}/readyz" ||
    fail "wf-iot serve did not become ready within 90 s"
echo "ok: wf-iot serve is ready (api-gateway on ${GATEWAY_PORT})"

# ---------------------------------------------------------------------------
section "nginx with deploy/nginx/wf-iot.conf (HTTPS ${NGINX_HTTPS}, HTTP ${NGINX_HTTP})"
mkdir -p "$WORK/certs" "$WORK/nginx"
# nginx started as root runs its workers as nobody: let them reach their
# temporary directories (the key stays readable by root only).
chmod 711 "$WORK"
chmod 755 "$WORK/nginx"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$WORK/certs/tls.key" -out "$WORK/certs/tls.crt" 2>/dev/null ||
    fail "openssl could not make a self-signed certificate"
# The deploy config, with this machine's addresses and paths instead of the
# container ones; every replaced line must exist, so a change to the deploy
# file that this adaptation no longer covers fails here.
python3 - "$DEPLOY/nginx" "$WORK" "$GATEWAY_PORT" "$MQTT_WS" "$NGINX_HTTP" "$NGINX_HTTPS" <<'EOF'
import pathlib, sys
src, work, gateway, mqtt_ws, http, https = sys.argv[1:]
src, work = pathlib.Path(src), pathlib.Path(work)
conf = (src / "wf-iot.conf").read_text()
replacements = [
    ("server gateway:8000", f"server 127.0.0.1:{gateway}"),
    ("server mosquitto:8083;", f"server 127.0.0.1:{mqtt_ws};"),
    ("listen 80;", f"listen 127.0.0.1:{http};"),
    ("listen [::]:80;", ""),
    ("listen 443 ssl http2;", f"listen 127.0.0.1:{https} ssl http2;"),
    ("listen [::]:443 ssl http2;", ""),
    ("/etc/nginx/certs/", f"{work}/certs/"),
    ("/etc/nginx/wf-iot/proxy-params.conf", f"{work}/nginx/proxy-params.conf"),
    ("/var/log/nginx/access.log", f"{work}/nginx/access.log"),
]
for old, new in replacements:
    if old not in conf:
        sys.exit(f"deploy/nginx/wf-iot.conf no longer contains {old!r}: update .ci/ops-checks.sh")
    conf = conf.replace(old, new)
(work / "nginx/wf-iot.conf").write_text(conf)
(work / "nginx/proxy-params.conf").write_text((src / "proxy-params.conf").read_text())
(work / "nginx/nginx.conf").write_text(f"""
worker_processes 1;
pid {work}/nginx/nginx.pid;
error_log {work}/nginx/error.log info;
events {{ worker_connections 512; }}
http {{
    client_body_temp_path {work}/nginx/client_body;
    proxy_temp_path {work}/nginx/proxy;
    fastcgi_temp_path {work}/nginx/fastcgi;
    uwsgi_temp_path {work}/nginx/uwsgi;
    scgi_temp_path {work}/nginx/scgi;
    default_type application/octet-stream;
    include {work}/nginx/wf-iot.conf;
}}
""")
EOF
NGINX_ARGS=(-p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf")
"$NGINX" -t "${NGINX_ARGS[@]}" -q || fail "nginx -t refused the deploy configuration"
"$NGINX" "${NGINX_ARGS[@]}" -g 'daemon off;' >"$WORK/nginx/stdout.log" 2>&1 &
NGINX_PID=$!
HTTPS="https://localhost:${NGINX_HTTPS}"
CURL=(curl -sS --max-time 30 --cacert "$WORK/certs/tls.crt" --resolve "localhost:${NGINX_HTTPS}:127.0.0.1")
for _ in $(seq 1 30); do
    kill -0 "$NGINX_PID" 2>/dev/null || fail "nginx exited at start"
    if "${CURL[@]}" -fo /dev/null "$HTTPS/nginx-health" 2>/dev/null; then
        break
    fi
    sleep 0.3
done
"${CURL[@]}" -fo /dev/null "$HTTPS/nginx-health" || fail "nginx does not answer over HTTPS"
echo "ok: nginx answers over HTTPS with the certificate it was given"

code=$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:${NGINX_HTTP}/api/v1/devices")
[[ "$code" == 301 ]] || fail "plain HTTP answered $code, expected a 301 to HTTPS"
echo "ok: plain HTTP is redirected to HTTPS"

code=$("${CURL[@]}" -o /dev/null -w '%{http_code}' "$HTTPS/metrics")
[[ "$code" == 404 ]] || fail "/metrics through nginx answered $code, expected 404"
echo "ok: the gateway's /metrics is not published through nginx"

echo "--- login through nginx"
REQUEST_ID="ops-check-login-$$"
code=$("${CURL[@]}" -o "$WORK/login.json" -D "$WORK/login.headers" -w '%{http_code}' \
    -X POST -H 'content-type: application/json' -H "x-request-id: ${REQUEST_ID}" \
    -d "{\"username\":\"admin\",\"password\":\"${ADMIN_PASSWORD}\"}" "$HTTPS/api/v1/auth/login")
[[ "$code" == 200 ]] || fail "login through nginx answered $code: $(cat "$WORK/login.json")"
TOKEN=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["access_token"])' "$WORK/login.json")
grep -qix "x-request-id: ${REQUEST_ID}" < <(tr -d '\r' <"$WORK/login.headers") ||
    fail "the request id sent through nginx did not come back"
grep -qi '^strict-transport-security:' "$WORK/login.headers" || fail "no HSTS header over HTTPS"
echo "ok: logged in through nginx; the request id came back"

echo "--- the request id in the JSON logs"
found=""
for _ in $(seq 1 20); do
    if python3 - "$WORK/server.log" "$REQUEST_ID" <<'EOF'; then
import json, sys
path, rid = sys.argv[1:]
for line in open(path, errors="replace"):
    if rid not in line:
        continue
    entry = json.loads(line)
    if entry.get("request_id") == rid:
        for key in ("timestamp", "level", "service", "target", "message"):
            assert key in entry, f"log line without {key}: {line}"
        assert entry["service"] == "wf-iot-ops-check", line
        sys.exit(0)
sys.exit(1)
EOF
        found=yes
        break
    fi
    sleep 0.25
done
[[ -n "$found" ]] || fail "no JSON log line carries request_id ${REQUEST_ID} and the service name"
echo "ok: a JSON log line carries service, level and the request id from the edge"

echo "--- a live stream (Server-Sent Events) through nginx shows a device event"
"${CURL[@]}" --max-time 60 -N -H "authorization: Bearer ${TOKEN}" -H 'accept: text/event-stream' \
    "$HTTPS/api/v1/devices/stream" >"$WORK/sse.txt" 2>"$WORK/sse.err" &
SSE_PID=$!
for _ in $(seq 1 40); do
    grep -q '^event: ready' "$WORK/sse.txt" 2>/dev/null && break
    sleep 0.25
done
grep -q '^event: ready' "$WORK/sse.txt" || fail "the stream did not open through nginx: $(cat "$WORK/sse.err")"
WF_IOT_SIM_PASSWORD="$ADMIN_PASSWORD" WF_IOT_LOG__LEVEL=warn "$BIN" simulate --devices 3 --rate 30 \
    --duration 8 --fail-commands 0 --prefix ops \
    --auth-url "http://127.0.0.1:${AUTH_HTTP}" --device-url "http://127.0.0.1:${DEVICE_HTTP}" \
    --mqtt-host 127.0.0.1 --mqtt-port "$MQTT_PORT" >"$WORK/simulate.log" 2>&1 &
SIM_PID=$!
seen=""
for _ in $(seq 1 60); do
    if grep -q '^event: status' "$WORK/sse.txt" && grep -q '"ops-0000' "$WORK/sse.txt"; then
        seen=yes
        break
    fi
    sleep 0.25
done
[[ -n "$seen" ]] || fail "no device status event arrived on the stream through nginx"
echo "ok: the stream through nginx delivered a device status event as it happened"

echo "--- a command through nginx, answered by a simulated device"
code=$("${CURL[@]}" -o "$WORK/command.json" -w '%{http_code}' -X POST \
    -H "authorization: Bearer ${TOKEN}" -H 'content-type: application/json' \
    -d '{"name":"reboot","params":{},"timeout_s":10}' \
    "$HTTPS/api/v1/devices/ops-00001/commands?wait=true")
[[ "$code" == 201 ]] || fail "a command through nginx answered $code: $(cat "$WORK/command.json")"
echo "ok: command $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["status"])' "$WORK/command.json")"

echo "--- a WebSocket upgrade through nginx (MQTT over WebSocket at /mqtt)"
ws_status=$("${CURL[@]}" --http1.1 --max-time 3 -o /dev/null -w '%{http_code}' \
    -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' \
    -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' -H 'Sec-WebSocket-Protocol: mqtt' \
    "$HTTPS/mqtt" 2>/dev/null || true)
[[ "$ws_status" == 101 ]] || fail "the WebSocket upgrade through nginx answered ${ws_status:-nothing}, expected 101"
echo "ok: WebSocket upgrades pass through"

echo "--- a firmware upload through nginx (3 MiB, above nginx's default 1 MiB body limit)"
head -c $((3 * 1024 * 1024)) /dev/urandom >"$WORK/firmware.bin"
SHA=$(sha256sum "$WORK/firmware.bin" | cut -d' ' -f1)
code=$("${CURL[@]}" --max-time 120 -o "$WORK/firmware.json" -w '%{http_code}' \
    -H "authorization: Bearer ${TOKEN}" \
    -F name=ops-check -F device_type=simulated-sensor -F version=9.9.$$ -F "sha256=${SHA}" \
    -F "file=@$WORK/firmware.bin;type=application/octet-stream" \
    "$HTTPS/api/v1/firmware")
[[ "$code" == 201 ]] || fail "the firmware upload through nginx answered $code: $(cat "$WORK/firmware.json")"
FIRMWARE_ID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$WORK/firmware.json")
"${CURL[@]}" --max-time 120 -f -o "$WORK/firmware.back" -H "authorization: Bearer ${TOKEN}" \
    "$HTTPS/api/v1/firmware/${FIRMWARE_ID}/download" || fail "downloading the firmware through nginx failed"
[[ $(sha256sum "$WORK/firmware.back" | cut -d' ' -f1) == "$SHA" ]] ||
    fail "the firmware downloaded through nginx differs from the upload"
echo "ok: uploaded and downloaded ${FIRMWARE_ID} through nginx, SHA-256 intact"

wait "$SIM_PID" || fail "wf-iot simulate failed: $(tail -n 5 "$WORK/simulate.log")"
SIM_PID=""
kill "$SSE_PID" 2>/dev/null || true
wait "$SSE_PID" 2>/dev/null || true
SSE_PID=""
grep -q '"status":' "$WORK/nginx/access.log" || fail "nginx wrote no JSON access log"

# ---------------------------------------------------------------------------
section "every metric the alert rules and the dashboard name is exported"
for port in "$AUTH_HTTP" "$DEVICE_HTTP" "$FIRMWARE_HTTP" "$MQTT_HTTP" "$GATEWAY_PORT"; do
    curl -fsS --max-time 10 "http://127.0.0.1:${port}/metrics" || fail "GET /metrics on port ${port} failed"
done >"$WORK/metrics.txt"
python3 - "$DEPLOY" "$WORK/metrics.txt" <<'EOF'
import json, pathlib, re, sys, yaml
deploy, scraped = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]).read_text()
exported = set()
for line in scraped.splitlines():
    if line and not line.startswith("#"):
        exported.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))

used = {}
def collect(expr, where):
    for name in re.findall(r"\b(wf_[a-z0-9_]+)", expr):
        used.setdefault(name, set()).add(where)

rules = yaml.safe_load((deploy / "prometheus/alerts.yml").read_text())
for group in rules["groups"]:
    for rule in group["rules"]:
        collect(rule["expr"], f"alert {rule.get('alert') or rule.get('record')}")
dash = json.loads((deploy / "grafana/dashboards/wf-iot-overview.json").read_text())
for panel in dash["panels"]:
    for t in panel.get("targets", []):
        collect(t["expr"], f"panel {panel['title']!r}")

missing = {}
for name, where in sorted(used.items()):
    # A histogram x is exported as x_bucket, x_sum and x_count.
    candidates = {name, name + "_bucket", name + "_count", name + "_sum"}
    if name.endswith(("_bucket", "_count", "_sum")):
        candidates.add(name)
    if exported & candidates:
        print(f"  ok  {name}")
    else:
        missing[name] = where
if missing:
    for name, where in missing.items():
        print(f"  MISSING  {name}  (used by {', '.join(sorted(where))})")
    sys.exit(f"{len(missing)} metric(s) named by the rules or the dashboard are not exported")
print(f"ok: all {len(used)} metrics named by the rules and the dashboard are exported")
EOF

echo "--- nginx and wf-iot shut down"
kill -QUIT "$NGINX_PID"
for _ in $(seq 1 20); do
    kill -0 "$NGINX_PID" 2>/dev/null || break
    sleep 0.25
done
NGINX_PID=""
kill -TERM "$SERVER_PID"
server_status=0
wait "$SERVER_PID" || server_status=$?
SERVER_PID=""
[[ $server_status -eq 0 ]] || fail "wf-iot serve exited with status $server_status after SIGTERM"

echo
echo "ops checks passed in $(($(date +%s) - STARTED)) s"

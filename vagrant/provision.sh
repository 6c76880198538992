#!/bin/sh
# Provisions the Sluice dev VM, as root: toolchain, package, an example
# agent service under Sluice, and one swapped request to show for it.
# Safe to run again (`vagrant provision`): every step checks first.
set -eux

REPO=/home/vagrant/sluice
export DEBIAN_FRONTEND=noninteractive

# 1. Rust, then the project's own setup (clang, LLVM 22, redis-server,
#    nightly, bpf-linker, cargo-deb, bpffs).
apt-get update
apt-get install -y --no-install-recommends ca-certificates curl build-essential pkg-config git python3
if [ ! -x /root/.cargo/bin/cargo ]; then
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi
export PATH="/root/.cargo/bin:$PATH"
cd "$REPO"
cargo xtask setup
if [ "${SLUICE_VM_NO_INSTALL:-0}" = "1" ]; then
    echo "SLUICE_VM_NO_INSTALL=1: toolchain ready, package not installed"
    exit 0
fi

# 2. The package, installed like on any host.
cargo xtask dist
dpkg -i "$(ls -t target/debian/sluice_*.deb | head -n 1)"
systemctl enable --now redis-server

# 3. A stand-in upstream API on 127.0.0.2:8080 (api.demo.internal). It logs
#    which credential it received and accepts only the real key.
grep -q 'api.demo.internal' /etc/hosts || echo '127.0.0.2 api.demo.internal' >>/etc/hosts
install -d -m 0700 /etc/sluice-demo
if [ ! -e /etc/sluice-demo/real-key ]; then
    (umask 077; printf 'sk_demo_%s' "$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')" >/etc/sluice-demo/real-key)
fi
cat >/usr/local/lib/sluice-demo-upstream.py <<'PY'
import http.server, json

REAL_KEY = open("/etc/sluice-demo/real-key").read().strip()

class Api(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        auth = self.headers.get("Authorization", "")
        ok = auth == "Bearer " + REAL_KEY
        shown = auth[:19] + "…" if auth else "(none)"
        print(f"upstream: {self.command} {self.path} Authorization: {shown} real key: {ok}", flush=True)
        body = json.dumps({"charges": [] if ok else None, "authorized": ok}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.2", 8080), Api).serve_forever()
PY
cat >/etc/systemd/system/demo-upstream.service <<'UNIT'
[Unit]
Description=Stand-in upstream API for the Sluice demo (api.demo.internal:8080)

[Service]
ExecStart=/usr/bin/python3 /usr/local/lib/sluice-demo-upstream.py

[Install]
WantedBy=multi-user.target
UNIT

# 4. Sluice's config: one agent (the slice below) and one service.
cat >/etc/sluice/sluice.toml <<'TOML'
# Written by vagrant/provision.sh.
[gateway]
listen    = "127.0.0.1:15001"
state_dir = "/var/lib/sluice"
log_dir   = "/var/log/sluice"
redis_url = "redis://127.0.0.1:6379/0"
vault_key = "/etc/sluice/vault.key"
egress    = "deny"

[[agent]]
name   = "myagent"
cgroup = "sluice-agents-myagent.slice"

[[service]]
name       = "demo-api"
protocol   = "http"
upstream   = "api.demo.internal:8080"
credential = { secret = "demo-api-key", header = "Authorization", format = "Bearer {}" }
TOML
chown root:sluice-admin /etc/sluice/sluice.toml
chmod 0640 /etc/sluice/sluice.toml
sluice secret put demo-api-key </etc/sluice-demo/real-key

# 5. The agent: an existing service that calls the API every 5 s with
#    whatever token it was given. It knows nothing of Sluice; the drop-in
#    (the README's) moves it under Sluice.
cat >/etc/systemd/system/myagent.service <<'UNIT'
[Unit]
Description=Example agent: calls api.demo.internal with a placeholder token

[Service]
DynamicUser=yes
LoadCredential=token:/etc/myagent/token
# "$$" is a literal "$" for the shell (systemd.service(5), "Command lines").
ExecStart=/bin/sh -c 'while :; do curl -sS -H "Authorization: Bearer $$(cat "$${CREDENTIALS_DIRECTORY}/token")" http://api.demo.internal:8080/v1/charges; echo; sleep 5; done'

[Install]
WantedBy=multi-user.target
UNIT
install -d -m 0755 /etc/systemd/system/myagent.service.d
cat >/etc/systemd/system/myagent.service.d/sluice.conf <<'UNIT'
[Unit]
Wants=sluice.service
After=sluice.service

[Service]
Slice=sluice-agents-myagent.slice
UNIT

systemctl daemon-reload
systemctl enable --now demo-upstream.service
systemctl enable sluice.service
systemctl restart sluice.service
sluice doctor

install -d -m 0700 /etc/myagent
sluice token issue --agent myagent --service demo-api --ttl 720h >/etc/myagent/token.new
chmod 0600 /etc/myagent/token.new
mv /etc/myagent/token.new /etc/myagent/token
systemctl enable myagent.service
systemctl restart myagent.service

# 6. What to look at.
cat >/usr/local/bin/sluice-demo-show <<'SHOW'
#!/bin/sh
# The swapped request: the agent sends slt_…, the upstream gets the real key.
set -u
echo "== the agent's cgroup (systemd put it in the slice; Sluice attached there)"
systemctl show -p ControlGroup --value myagent.service
echo "== token the agent holds: $(cut -c1-12 /etc/myagent/token)…"
echo "== what the agent got back (journalctl -u myagent)"
journalctl -u myagent.service -n 3 -o cat --no-pager
echo "== what the upstream received (journalctl -u demo-upstream)"
journalctl -u demo-upstream.service -n 3 -o cat --no-pager
echo "== Sluice's record of it (sluice sessions list)"
sluice sessions list | tail -n 5
SHOW
chmod 0755 /usr/local/bin/sluice-demo-show
sleep 8
sluice-demo-show

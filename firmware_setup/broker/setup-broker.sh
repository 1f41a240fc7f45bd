#!/usr/bin/env bash
# A locked-down Mosquitto for one moe2 fleet: TLS with a local CA, a password per identity,
# and an ACL that confines every agent and client to its own topics.
#
#   setup-broker.sh --out DIR --fleet NAME [--agent ID ...] [--client NAME ...] [--dry-run]
#                   [--port P (8883)] [--client-port P (port + 1)] [--host NAME (localhost)]
#                   [--standby NAME ...]
#
# Two TLS listeners. The fleet port is for the controller and the agents: there the broker
# replaces every client id with the login's name (use_username_as_clientid), so no other
# login can take over an agent's or the controller's MQTT session. The client port is for
# clients (`moe2 ask`; operator tools with the controller's login): there a client keeps the
# id it chose, so one login may hold many connections, and every client id anywhere must
# start with "moe2-" (clientid_prefixes), which the fleet's own ids ("a1", "controller") do not.
# Agent ids therefore may not start with "moe2-". Packets over 1 MiB (max_packet_size) get
# their sender disconnected. Retained messages persist in DIR/data. See docs/security.md.
# --standby NAME adds a controller login for a hot-standby controller: on the fleet port
# each login holds one connection, so every controller process needs its own login.
#
# Writes into DIR: mosquitto.conf, ca.crt and ca.key (the local CA), server.crt and
# server.key, passwd-fleet and passwd-clients (hashed with mosquitto_passwd), acl, data/, and
# credentials.json (0600):
#   {"controller": {"username", "password"}, "agents": {ID: {...}}, "clients": {NAME: {...}},
#    "standby": {NAME: {...}}}
# Idempotent: a re-run keeps the CA, the server certificate (unless --host changed) and every
# existing credential, and adds the new identities. --dry-run says what would be written and
# changes nothing (on any machine: openssl and Mosquitto are not needed for it). Start it with
#   mosquitto -c DIR/mosquitto.conf
set -euo pipefail

prog=$(basename "$0")
die() { echo "$prog: $*" >&2; exit 1; }
usage() { sed -n '5,7p' "$0" | sed 's/^# *//' >&2; exit 2; }

out="" fleet="" port=8883 client_port="" host=localhost dry_run=0
agents=() clients=() standby=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    --fleet) fleet=${2:?--fleet needs a name}; shift 2 ;;
    --agent) agents+=("${2:?--agent needs an id}"); shift 2 ;;
    --client) clients+=("${2:?--client needs a name}"); shift 2 ;;
    --standby) standby+=("${2:?--standby needs a name}"); shift 2 ;;
    --port) port=${2:?--port needs a number}; shift 2 ;;
    --client-port) client_port=${2:?--client-port needs a number}; shift 2 ;;
    --host) host=${2:?--host needs a name}; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage ;;
    *) echo "$prog: unknown option $1" >&2; usage ;;
  esac
done
[ -n "$out" ] || die "--out DIR is required"
[ -n "$fleet" ] || die "--fleet NAME is required"

name_re='^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$'
for name in "$fleet" ${agents[@]+"${agents[@]}"} ${clients[@]+"${clients[@]}"} \
  ${standby[@]+"${standby[@]}"}; do
  [[ "$name" =~ $name_re ]] || die "'$name' is not a valid name: use letters, digits and ._:-"
done
for name in ${agents[@]+"${agents[@]}"} ${standby[@]+"${standby[@]}"}; do
  case "$name" in
    moe2-*) die "'$name' may not start with moe2-: that is the prefix of the ids clients" \
      "choose on the client port, so a client could take over its session" ;;
  esac
done
if ! [[ "$port" =~ ^[0-9]+$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
  die "--port must be 1-65535, not '$port'"; fi
if [ -z "$client_port" ]; then
  [ "$port" -lt 65535 ] || die "--port 65535 leaves no port for clients: give --client-port"
  client_port=$((port + 1))
fi
if ! [[ "$client_port" =~ ^[0-9]+$ ]] || [ "$client_port" -lt 1 ] \
  || [ "$client_port" -gt 65535 ]; then
  die "--client-port must be 1-65535, not '$client_port'"; fi
[ "$client_port" -ne "$port" ] || die "--client-port must differ from --port ($port)"
[[ "$host" =~ ^[A-Za-z0-9.:-]+$ ]] || die "--host '$host' is not a host name or address"

if [ "$dry_run" = 1 ]; then
  keep=$([ -s "$out/ca.key" ] && echo "kept" || echo "created")
  echo "dry run, nothing written; for fleet $fleet, host $host, TLS on port $port (controller" \
    "and agents) and $client_port (clients), into $out:"
  echo "  ca.crt, ca.key ($keep), server.crt, server.key, passwd-fleet, passwd-clients, acl," \
    "data/, mosquitto.conf"
  echo "  credentials.json (0600): controller, agents: ${agents[*]:-(none new)}," \
    "clients: ${clients[*]:-(none new)}, standby controllers: ${standby[*]:-(none new)};" \
    "existing logins kept"
  echo "then: mosquitto -c $out/mosquitto.conf"
  exit 0
fi

missing=()
command -v openssl >/dev/null 2>&1 || missing+=("openssl (Debian: apt-get install openssl)")
command -v mosquitto_passwd >/dev/null 2>&1 \
  || missing+=("mosquitto_passwd (Debian: apt-get install mosquitto)")
command -v python3 >/dev/null 2>&1 || missing+=("python3 (Debian: apt-get install python3)")
if [ ${#missing[@]} -gt 0 ]; then
  printf '%s: cannot proceed, this needs:\n' "$prog" >&2
  printf '  %s\n' "${missing[@]}" >&2
  exit 1
fi

umask 077
mkdir -p "$out"
out=$(cd "$out" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# -- certificates -------------------------------------------------------------------------
if [ ! -s "$out/ca.key" ] || [ ! -s "$out/ca.crt" ]; then
  echo "creating the fleet CA in $out/ca.crt"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
    -days 3650 -subj "/CN=moe2 $fleet CA" -keyout "$out/ca.key" -out "$out/ca.crt" 2>/dev/null
  rm -f "$out/server.crt"
fi

if [[ "$host" =~ ^[0-9.]+$ ]] || [[ "$host" == *:* ]]; then san_host="IP:$host"; else
  san_host="DNS:$host"; fi
san="subjectAltName=$san_host,DNS:localhost,IP:127.0.0.1"
if [ -s "$out/server.crt" ] && [ -s "$out/server.key" ] \
  && openssl x509 -in "$out/server.crt" -noout -ext subjectAltName 2>/dev/null \
    | tr ',' '\n' | sed 's/^ *//' | grep -qxF "${san_host/IP:/IP Address:}"; then
  :  # the server certificate already names this host
else
  echo "creating the server certificate for $host"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
    -subj "/CN=$host" -keyout "$out/server.key" -out "$tmp/server.csr" 2>/dev/null
  printf '%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$san" >"$tmp/ext"
  openssl x509 -req -in "$tmp/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
    -CAcreateserial -CAserial "$out/ca.srl" -days 825 -sha256 -extfile "$tmp/ext" \
    -out "$out/server.crt" 2>/dev/null
fi

# -- credentials, password file and ACL ---------------------------------------------------
# Python writes credentials.json (keeping every existing password), the plain "user:password"
# list that mosquitto_passwd hashes, and the ACL.
python3 - "$out" "$fleet" "$tmp" "${#agents[@]}" "${#standby[@]}" \
  ${agents[@]+"${agents[@]}"} ${standby[@]+"${standby[@]}"} ${clients[@]+"${clients[@]}"} <<'PY'
import json, os, secrets, sys
from pathlib import Path

out, fleet, work = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
n_agents, n_standby = int(sys.argv[4]), int(sys.argv[5])
new_agents = sys.argv[6:6 + n_agents]
new_standby = sys.argv[6 + n_agents:6 + n_agents + n_standby]
new_clients = sys.argv[6 + n_agents + n_standby:]
path = out / "credentials.json"
creds = {"controller": {}, "agents": {}, "clients": {}, "standby": {}}
if path.exists():
    try:
        creds.update(json.loads(path.read_text()))
    except ValueError as exc:
        sys.exit(f"setup-broker.sh: {path} is not valid JSON ({exc}); fix or remove it")

def ident(name):
    return {"username": name, "password": secrets.token_urlsafe(24)}

if not creds["controller"].get("password"):
    creds["controller"] = ident("controller")
for name in new_agents:
    creds["agents"].setdefault(name, ident(name))
for name in new_clients:
    creds["clients"].setdefault(name, ident(name))
for name in new_standby:
    creds["standby"].setdefault(name, ident(name))
controllers = [creds["controller"]] + list(creds["standby"].values())
users = controllers + list(creds["agents"].values()) + list(creds["clients"].values())
names = [u["username"] for u in users]
dupes = sorted({n for n in names if names.count(n) > 1})
if dupes:
    sys.exit(f"setup-broker.sh: {', '.join(dupes)} named twice (agents, clients, standby "
             "controllers and 'controller' need distinct names)")

tmp = path.with_suffix(".tmp")
tmp.write_text(json.dumps(creds, indent=2, sort_keys=True) + "\n")
os.chmod(tmp, 0o600)
tmp.replace(path)
def plain(logins):
    return "".join(f"{u['username']}:{u['password']}\n" for u in logins)

# The fleet port: the controllers and the agents. The client port: the clients, and the
# controllers' logins for operator tools (they cannot displace a controller from there).
(work / "plain-fleet").write_text(plain(controllers + list(creds["agents"].values())))
(work / "plain-clients").write_text(plain(controllers + list(creds["clients"].values())))

p = f"moe2/{fleet}"
acl = [
    "# moe2 fleet ACL, written by setup-broker.sh; anonymous clients are refused.",
    "# The controllers publish plans, jobs, answers and controller topics; read everything.",
]
for u in controllers:
    acl += [f"user {u['username']}", f"topic readwrite {p}/#", ""]
for agent_id, u in sorted(creds["agents"].items()):
    acl += [f"# agent {agent_id}: its own status and reports; reads its own plan and jobs",
            f"user {u['username']}"]
    acl += [f"topic write {p}/agents/{agent_id}/{t}"
            for t in ("status", "capabilities", "telemetry", "results", "events")]
    acl += [f"topic read {p}/agents/{agent_id}/{t}" for t in ("plan", "jobs", "cancel")]
    acl += [""]
for client, u in sorted(creds["clients"].items()):
    # clients/{login}/prompts: a prompt topic only this login may publish on, so whoever
    # reads it knows the asker's login (MQTT does not tell a subscriber who published) and
    # answers it under replies/{login}/ only (and a cancel there stops only the login's own
    # prompts). The shared prompts topics are not a client's:
    # a prompt there could ask for its answer in another client's inbox.
    acl += [f"# client {client}: its own prompt topics; reads only the replies under its name",
            f"user {u['username']}",
            f"topic write {p}/clients/{u['username']}/prompts",
            f"topic write {p}/clients/{u['username']}/prompts/text",
            f"topic write {p}/clients/{u['username']}/prompts/cancel",
            f"topic read {p}/replies/{u['username']}/#",
            f"topic read {p}/controller/status",
            f"topic read {p}/controllers/+/status",
            ""]
(out / "acl").write_text("\n".join(acl))
PY

for kind in fleet clients; do
  mosquitto_passwd -U "$tmp/plain-$kind" >/dev/null
  mv -f "$tmp/plain-$kind" "$out/passwd-$kind"
done
rm -f "$out/passwd"  # the single password file of earlier versions
mkdir -p "$out/data"

tls="certfile $out/server.crt
keyfile $out/server.key
cafile $out/ca.crt
tls_version tlsv1.2"
cat >"$out/mosquitto.conf" <<EOF
# moe2 fleet "$fleet" broker, written by setup-broker.sh: mosquitto -c $out/mosquitto.conf
# Threat model and identities: docs/security.md.
per_listener_settings true
persistence true
persistence_location $out/data/
log_dest stderr
log_type error
log_type warning
log_type notice
set_tcp_nodelay true
# A packet over 1 MiB gets its sender disconnected (the fleet's payloads are at most 256 KiB).
max_packet_size 1048576
# Every client id must start with moe2-, except where the broker replaces it with the login's
# name (the fleet port): so no login can claim "controller" or an agent's id and evict it.
clientid_prefixes moe2-

# The fleet port: the controller and the agents; the client id is the login's name.
listener $port
use_username_as_clientid true
allow_anonymous false
password_file $out/passwd-fleet
acl_file $out/acl
$tls

# The client port: prompts in, replies out; many connections per login.
listener $client_port
allow_anonymous false
password_file $out/passwd-clients
acl_file $out/acl
$tls
EOF

# Mosquitto started as root drops to the mosquitto user: let it read what it needs, no more.
chmod 0644 "$out/mosquitto.conf" "$out/ca.crt" "$out/server.crt"
chmod 0600 "$out/ca.key" "$out/credentials.json"
rm -f "$out/ca.srl"
# The persistence database is written by the broker's user.
chmod 0700 "$out/data"
if [ "$(id -u)" -eq 0 ] && getent group mosquitto >/dev/null 2>&1; then
  chgrp mosquitto "$out" "$out/server.key" "$out/passwd-fleet" "$out/passwd-clients" "$out/acl"
  chmod 0750 "$out"
  chmod 0640 "$out/server.key" "$out/passwd-fleet" "$out/passwd-clients" "$out/acl"
  if getent passwd mosquitto >/dev/null 2>&1; then chown mosquitto:mosquitto "$out/data"; fi
else
  chmod 0600 "$out/server.key" "$out/passwd-fleet" "$out/passwd-clients" "$out/acl"
fi

n_agents=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["agents"]))' \
  "$out/credentials.json")
n_clients=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["clients"]))' \
  "$out/credentials.json")
echo "broker for fleet $fleet in $out: TLS, $n_agents agent(s), $n_clients client(s)"
echo "start it with: mosquitto -c $out/mosquitto.conf"
echo "controller and agents: broker = \"mqtts://$host:$port\""
echo "clients (moe2 ask, client ids moe2-...): broker = \"mqtts://$host:$client_port\""
echo "with ca_file = \"$out/ca.crt\" and a login from $out/credentials.json"

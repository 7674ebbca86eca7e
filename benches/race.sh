#!/usr/bin/env bash
# The race: the same campaign through mailsim's MTA and through Postfix (Debian's package, its
# own configuration directory, loopback only), alternating, ROUNDS times each, end to end: from
# the start of injection to the last message stored by the fleet. Both MTAs take the campaign by
# SMTP from `mailsim send` (8 connections) and deliver to the same fleet (mailsim fleet); Postfix
# routes every scenario domain to its fleet host by transport_maps, mailsim resolves MX through
# the fleet's fake-dns. DKIM: none on both sides (Postfix would need a milter).
# Usage: benches/race.sh [SIZE_BYTES] [MESSAGES] [ROUNDS]
# The last line: race: mailsim=<msg/s> postfix=<msg/s> ratio=<r> size=<bytes> messages=<n>
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-5120}
MESSAGES=${2:-50000}
ROUNDS=${3:-3}
FLEET_PORT=25251
DNS_PORT=25353
MAILSIM_SUB=127.0.0.1:2600
POSTFIX_PORT=2526

if ! command -v postfix >/dev/null; then
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >/dev/null
fi
cargo build --release --quiet
BIN=$PWD/target/release/mailsim
WORK=$(mktemp -d)
chmod 755 "$WORK"  # Postfix's own user works in here
PF=$WORK/postfix
cleanup() {
  postfix -c "$PF/conf" stop >/dev/null 2>&1 || true
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/race.toml" <<TOML
name = "race"
seed = 17
[mta]
run_time_s_max = 3600
[[sender]]
domain = "news.example.test"
dmarc = "v=DMARC1; p=none"
[[domain]]
name = "a.test"
[[domain]]
name = "b.test"
[[domain]]
name = "c.test"
[[domain]]
name = "d.test"
[campaign]
messages = $MESSAGES
size_bytes = $SIZE
TOML

fleet_start() {
  FLEET_DIR=$WORK/fleet-$1
  "$BIN" fleet "$WORK/race.toml" --out "$FLEET_DIR" --port $FLEET_PORT --dns-port $DNS_PORT \
    > "$WORK/fleet.out" 2>/dev/null &
  FLEET=$!
  for _ in $(seq 100); do grep -q ready "$WORK/fleet.out" 2>/dev/null && return; sleep 0.1; done
  echo "the fleet did not start" >&2; exit 1
}
fleet_stop() { kill -INT $FLEET; wait $FLEET 2>/dev/null || true; rm -rf "$FLEET_DIR"; }

# Postfix: its own config and queue under $WORK, loopback only, no DNS, no TLS.
postfix_setup() {
  if python3 -c "import socket; socket.create_connection(('127.0.0.1', $POSTFIX_PORT), 1)" 2>/dev/null; then
    echo "something already listens on 127.0.0.1:$POSTFIX_PORT (another Postfix?)" >&2; exit 1
  fi
  mkdir -p "$PF/conf" "$PF/queue" "$PF/data"
  chown postfix:postfix "$PF/data"
  local routes
  routes=$(sed -n 's/^fleet: route \([^ ]*\) \([^ ]*\)$/\1=smtp:[\2]:'$FLEET_PORT'/p' "$WORK/fleet.out" | paste -sd, -)
  cat > "$PF/conf/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $PF/queue
data_directory = $PF/data
meta_directory = /etc/postfix
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.mailsim.test
mydestination =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
transport_maps = inline:{ $routes }
default_process_limit = 200
maillog_file = /dev/stdout
CF
  awk '/^[^#[:space:]]/ && NF >= 8 {$5 = "n"; print; next} {print}' /etc/postfix/master.cf \
    | sed "s/^smtp inet n - n - - smtpd/127.0.0.1:$POSTFIX_PORT inet n - n - - smtpd/" > "$PF/conf/master.cf"
  postfix -c "$PF/conf" start-fg > "$WORK/postfix.log" 2>&1 &
  for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $POSTFIX_PORT), 1)" 2>/dev/null && return
    sleep 0.1
  done
  echo "postfix did not start:" >&2; cat "$WORK/postfix.log" >&2; exit 1
}

# One round: inject the campaign into the MTA at $1, wait for the fleet to store all of it;
# prints messages per second from injection start to the last message stored.
round() {
  local to=$1 start_ms
  start_ms=$(date +%s%3N)
  "$BIN" send "$WORK/race.toml" --to "$to" --connections 8 > /dev/null
  local stored=0
  for _ in $(seq 1200); do
    stored=$(cat "$FLEET_DIR/stored.count" 2>/dev/null || echo 0)
    [ "$stored" -ge "$MESSAGES" ] && break
    sleep 0.5
  done
  if [ "$stored" -lt "$MESSAGES" ]; then
    echo "only $stored of $MESSAGES messages reached the fleet through $to in 10 minutes" >&2
    exit 1
  fi
  "$BIN" events "$FLEET_DIR" | python3 -c "
import json, sys
start, n = $start_ms, $MESSAGES
last = max(json.loads(l)['ts'] for l in sys.stdin if '\"stored\"' in l)
print(f'{n / ((last - start) / 1000):.0f}')"
}

mailsim_rates=()
postfix_rates=()
for r in $(seq "$ROUNDS"); do
  fleet_start "m$r"
  "$BIN" mta --spool "$WORK/spool-$r" --dns 127.0.0.1:$DNS_PORT --remote-port $FLEET_PORT \
    --submission $MAILSIM_SUB --conns-per-domain-max 20 > /dev/null 2>&1 &
  MTA=$!
  sleep 0.5
  rate=$(round $MAILSIM_SUB)
  kill -INT $MTA; wait $MTA 2>/dev/null || true
  fleet_stop
  mailsim_rates+=("$rate")
  echo "round $r: mailsim $rate msg/s" >&2

  fleet_start "p$r"
  [ "$r" = 1 ] && postfix_setup
  rate=$(round 127.0.0.1:$POSTFIX_PORT)
  fleet_stop
  postfix_rates+=("$rate")
  echo "round $r: postfix $rate msg/s" >&2
done
python3 - "$SIZE" "$MESSAGES" "${mailsim_rates[*]}" "${postfix_rates[*]}" <<'PY'
import statistics, sys
size, n = int(sys.argv[1]), int(sys.argv[2])
m = statistics.median(float(x) for x in sys.argv[3].split())
p = statistics.median(float(x) for x in sys.argv[4].split())
print(f"race: mailsim={m:.0f} postfix={p:.0f} ratio={m / p:.2f} size={size} messages={n}")
PY

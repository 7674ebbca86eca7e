#!/usr/bin/env bash
# The race: the same campaign through mailsim's MTA and through Postfix (Debian's package, its
# own configuration directory, loopback only), alternating, ROUNDS times each, end to end: from
# the start of injection to the last message stored by the fleet. Both MTAs take the campaign by
# SMTP from `mailsim send` (8 connections, unsigned) and deliver to the same fleet (mailsim
# fleet); Postfix routes every scenario domain to its fleet host by transport_maps, mailsim
# resolves MX through the fleet's fake-dns.
# MODE plain: no DKIM, no TLS on either side. MODE tls-dkim (production-like): both MTAs sign
# with the same RSA-2048 key (mailsim itself, `mta --dkim`; Postfix through OpenDKIM as its
# milter, Debian's package with its own configuration) and speak STARTTLS to the fleet (Postfix
# smtp_tls_security_level = may; mailsim opportunistic); the fleet verifies DKIM on both, and
# a round counts only if every message arrived DKIM-pass and over TLS.
# Usage: benches/race.sh [SIZE_BYTES] [MESSAGES] [ROUNDS] [MODE]
# The last line: race: mailsim=<msg/s> postfix=<msg/s> ratio=<r> size=<bytes> messages=<n>
#   tls=<on|off> dkim=<on|off>
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-5120}
MESSAGES=${2:-50000}
ROUNDS=${3:-3}
MODE=${4:-plain}
case "$MODE" in
  plain) TLS=off; DKIM=off ;;
  tls-dkim) TLS=on; DKIM=on ;;
  *) echo "MODE: plain or tls-dkim, not $MODE" >&2; exit 2 ;;
esac
MILTER_PORT=28891
FLEET_PORT=25251
DNS_PORT=25353
MAILSIM_SUB=127.0.0.1:2600
POSTFIX_PORT=2526

if ! command -v postfix >/dev/null; then
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >/dev/null
fi
if [ "$DKIM" = on ] && ! command -v opendkim >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q opendkim >/dev/null
fi
cargo build --release --quiet
BIN=$PWD/target/release/mailsim
WORK=$(mktemp -d)
chmod 755 "$WORK"  # Postfix's own user works in here
PF=$WORK/postfix
cleanup() {
  postfix -c "$PF/conf" stop >/dev/null 2>&1 || true
  [ -n "${DKIMDIR:-}" ] && [ -f "$DKIMDIR/opendkim.pid" ] && kill "$(cat "$DKIMDIR/opendkim.pid")" 2>/dev/null || true
  [ -n "${DKIMDIR:-}" ] && rm -rf "$DKIMDIR"
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

SENDER_KEY=""
if [ "$DKIM" = on ]; then
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/dkim.pem" 2>/dev/null
  chmod 600 "$WORK/dkim.pem"
  # The fleet publishes the public half at race._domainkey.news.example.test.
  SENDER_KEY='dkim_private_key = "dkim.pem"
dkim_selector = "race"'
fi
cat > "$WORK/race.toml" <<TOML
name = "race"
seed = 17
[mta]
run_time_s_max = 3600
[[sender]]
domain = "news.example.test"
dmarc = "v=DMARC1; p=none"
$SENDER_KEY
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

# OpenDKIM for Postfix: signing mode, the race's key, a milter socket on loopback. OpenDKIM
# refuses a configuration or key under a directory others can write (/tmp), so they live in a
# private directory of their own.
opendkim_start() {
  DKIMDIR=$(mktemp -d "${HOME:-/root}/.mailsim-race-dkim.XXXXXX")
  chmod 700 "$DKIMDIR"
  cp "$WORK/dkim.pem" "$DKIMDIR/dkim.pem"
  cat > "$DKIMDIR/opendkim.conf" <<CONF
Syslog no
Background no
Mode s
Domain news.example.test
Selector race
KeyFile $DKIMDIR/dkim.pem
Canonicalization relaxed/relaxed
SignatureAlgorithm rsa-sha256
Socket inet:$MILTER_PORT@127.0.0.1
PidFile $DKIMDIR/opendkim.pid
CONF
  opendkim -f -x "$DKIMDIR/opendkim.conf" > "$WORK/opendkim.log" 2>&1 &
  for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $MILTER_PORT), 1)" 2>/dev/null && return
    sleep 0.1
  done
  echo "opendkim did not start:" >&2; cat "$WORK/opendkim.log" >&2; exit 1
}

# Postfix: its own config and queue under $WORK, loopback only, no DNS; TLS and OpenDKIM in
# the tls-dkim mode.
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
smtp_tls_security_level = $([ "$TLS" = on ] && echo may || echo none)
smtp_tls_CAfile = $WORK/ca.pem
smtpd_tls_security_level = none
$([ "$DKIM" = on ] && printf 'smtpd_milters = inet:127.0.0.1:%s\nnon_smtpd_milters = $smtpd_milters\nmilter_default_action = tempfail' "$MILTER_PORT")
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
    stored=$(cat "$FLEET_DIR/stored.count" 2>/dev/null || true)
    stored=${stored:-0}  # the file may be caught between its truncation and its write
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
  # What the fleet saw: every message DKIM-pass and over TLS in the tls-dkim mode.
  "$BIN" events "$FLEET_DIR" | python3 -c "
import json, sys
n, dkim, tls = $MESSAGES, '$DKIM', '$TLS'
passed = encrypted = 0
for l in sys.stdin:
    e = json.loads(l)
    if e['type'] == 'auth_verdict' and e['dkim'] == 'pass':
        passed += 1
    if e['type'] == 'stored' and e.get('tls'):
        encrypted += 1
print(f'fleet: {passed} DKIM pass, {encrypted} stored over TLS', file=sys.stderr)
if (dkim == 'on' and passed < n) or (tls == 'on' and encrypted < n):
    sys.exit(f'not every message was signed and encrypted ({passed}, {encrypted} of {n})')
"
}

mailsim_rates=()
postfix_rates=()
for r in $(seq "$ROUNDS"); do
  fleet_start "m$r"
  tls_args=(--tls off)
  [ "$TLS" = on ] && tls_args=(--tls opportunistic --tls-ca "$FLEET_DIR/ca.pem")
  dkim_args=()
  [ "$DKIM" = on ] && dkim_args=(--dkim "news.example.test:race:$WORK/dkim.pem")
  "$BIN" mta --spool "$WORK/spool-$r" --dns 127.0.0.1:$DNS_PORT --remote-port $FLEET_PORT \
    --submission $MAILSIM_SUB --conns-per-domain-max 20 "${tls_args[@]}" "${dkim_args[@]}" \
    > /dev/null 2>&1 &
  MTA=$!
  sleep 0.5
  rate=$(round $MAILSIM_SUB)
  kill -INT $MTA; wait $MTA 2>/dev/null || true
  fleet_stop
  mailsim_rates+=("$rate")
  echo "round $r: mailsim $rate msg/s" >&2

  fleet_start "p$r"
  cp "$FLEET_DIR/ca.pem" "$WORK/ca.pem"
  if [ "$r" = 1 ]; then
    [ "$DKIM" = on ] && opendkim_start
    postfix_setup
  fi
  rate=$(round 127.0.0.1:$POSTFIX_PORT)
  fleet_stop
  postfix_rates+=("$rate")
  echo "round $r: postfix $rate msg/s" >&2
done
python3 - "$SIZE" "$MESSAGES" "${mailsim_rates[*]}" "${postfix_rates[*]}" "$TLS" "$DKIM" <<'PY'
import statistics, sys
size, n = int(sys.argv[1]), int(sys.argv[2])
m = statistics.median(float(x) for x in sys.argv[3].split())
p = statistics.median(float(x) for x in sys.argv[4].split())
print(f"race: mailsim={m:.0f} postfix={p:.0f} ratio={m / p:.2f} size={size} messages={n} "
      f"tls={sys.argv[5]} dkim={sys.argv[6]}")
PY

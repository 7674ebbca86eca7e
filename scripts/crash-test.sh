#!/usr/bin/env bash
# Crash test: submit a campaign by SMTP to the MTA daemon, kill -9 it at random points (at
# least KILLS_MIN times) and restart it on the same spool; then check from the fleet's
# mailboxes and the MTA's event log that every acknowledged message was delivered or bounced,
# none lost, none stuck, and count duplicates.
# Usage: scripts/crash-test.sh [MESSAGES] [KILLS_MIN]
# The last line is: crash: injected=N kills=K delivered=D bounced=B lost=L duplicates=U
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-20000}
KILLS_MIN=${2:-5}
cargo build --release --quiet
BIN=$PWD/target/release/mailsim
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
sed "s/^messages = .*/messages = $MESSAGES/" scenarios/crash.toml > "$WORK/crash.toml"

"$BIN" fleet "$WORK/crash.toml" --out "$WORK/fleet" > "$WORK/fleet.out" 2> "$WORK/fleet.err" &
for _ in $(seq 50); do grep -q ready "$WORK/fleet.out" 2>/dev/null && break; sleep 0.1; done
DNS=$(sed -n 's/.*dns=\([^ ]*\).*/\1/p' "$WORK/fleet.out")
PORT=$(sed -n 's/.*smtp_port=\([0-9]*\).*/\1/p' "$WORK/fleet.out")
SUB=127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

start_mta() {
  "$BIN" mta --spool "$WORK/spool" --dns "$DNS" --remote-port "$PORT" --submission "$SUB" \
    --retry-interval-s-min 1 --retry-interval-s-max 2 >> "$WORK/mta.out" 2>> "$WORK/mta.err" &
  MTA=$!
  for _ in $(seq 50); do
    [ "$(grep -c ready "$WORK/mta.out" 2>/dev/null)" -ge "$1" ] && return; sleep 0.1
  done
}
starts=1
start_mta $starts

"$BIN" send "$WORK/crash.toml" --to "$SUB" --acked "$WORK/acked.txt" > "$WORK/send.out" &
SEND=$!
kills=0
while [ $kills -lt "$KILLS_MIN" ] || kill -0 $SEND 2>/dev/null; do
  sleep "0.$(( RANDOM % 9 + 2 ))"
  kill -9 $MTA; wait $MTA 2>/dev/null || true
  kills=$((kills + 1)); starts=$((starts + 1))
  start_mta $starts
done
wait $SEND

python3 - "$WORK" "$BIN" "$kills" <<'PY'
import json, os, subprocess, sys, time
work, binary, kills = sys.argv[1], sys.argv[2], int(sys.argv[3])
acked = set(open(os.path.join(work, "acked.txt")).read().split())
deadline = time.time() + 300
while True:
    copies = []
    for root, _, files in os.walk(os.path.join(work, "fleet", "mailboxes")):
        if os.path.basename(root) != "new":
            continue
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                for line in fh:
                    if line.lower().startswith(b"message-id:"):
                        copies.append(line.split(b":", 1)[1].strip().decode())
                        break
    copies = [c for c in copies if c in acked]
    events = subprocess.run([binary, "events", os.path.join(work, "spool")],
                            capture_output=True, text=True).stdout.splitlines()
    message_of, bounced = {}, set()
    for line in events:
        e = json.loads(line)
        if e["type"] == "injected":
            message_of[e["msg"]] = e["message_id"]
        elif e["type"] == "bounced" and e["msg"] in message_of:
            bounced.add(message_of[e["msg"]])
    delivered = set(copies)
    lost = acked - delivered - bounced
    if not lost or time.time() > deadline:
        break
    time.sleep(0.5)
summary = json.loads(subprocess.run([binary, "replay", os.path.join(work, "spool")],
                                    capture_output=True, text=True).stdout)
if summary["deferred"]:
    print(f"stuck: {summary['deferred']} messages still queued", file=sys.stderr)
print(f"crash: injected={len(acked)} kills={kills} delivered={len(delivered)} "
      f"bounced={len(bounced - delivered)} lost={len(lost)} duplicates={len(copies) - len(delivered)}")
sys.exit(1 if lost or summary["deferred"] else 0)
PY

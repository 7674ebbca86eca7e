#!/usr/bin/env bash
# Run every cargo-fuzz target for SECONDS each (default 60) with its seed corpus; print the
# executions and any finding. Needs cargo-fuzz (cargo install cargo-fuzz); libFuzzer's flags
# need a nightly compiler, or RUSTC_BOOTSTRAP=1 on stable as here.
# An input that takes over 10 s is a finding too (-timeout): a slow path is a denial of service.
# Findings land in fuzz/artifacts/<target>/; each becomes a regression test. Built with -O:
# third-party debug assertions (mail-parser) are not findings; our own checks are assert!s.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-60}
export RUSTC_BOOTSTRAP=1
declare -A SEEDS=(
  [smtp_server_session]=fuzz/seeds/smtp_server_session
  [smtp_reply_parser]=fuzz/seeds/smtp_reply_parser
  [bounce_classify]=bounce/tests/data/sisimai/eml
  [scenario_loader]=scenarios
  [imap_session]=fuzz/seeds/imap_session
  [pop3_session]=fuzz/seeds/pop3_session
  [log_file]=fuzz/seeds/log_file
)
status=0
for target in smtp_server_session smtp_reply_parser bounce_classify scenario_loader imap_session pop3_session log_file; do
  mkdir -p "fuzz/corpus/$target"
  log=$(mktemp)
  if cargo fuzz run -O "$target" "fuzz/corpus/$target" "${SEEDS[$target]}" -- \
      -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 > "$log" 2>&1; then
    result=ok
  else
    result=FINDING
    status=1
  fi
  runs=$(grep -m1 '^stat::number_of_executed_units' "$log" | awk '{print $2}')
  cov=$(grep -E '^#[0-9]+' "$log" | tail -1 | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
  echo "fuzz: target=$target seconds=$SECONDS_EACH execs=${runs:-?} cov=${cov:-?} result=$result"
  [ "$result" = ok ] || grep -E 'panicked|ERROR|artifact' "$log" | head -5
  rm -f "$log"
done
exit $status

#!/usr/bin/env bash
# The payments example: ~20 charges through a fake gateway that times out
# transiently, so retries with backoff show; card tokens encrypted at rest.
# Usage: bash scripts/payments/run.sh MOONTASK_BIN
# Uses $MOONTASK_KEY, or makes a throwaway key with `moontask keygen`.
# Exits with `moontask run --drain`'s code.
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: bash $0 MOONTASK_BIN" >&2
  exit 2
fi
bin=$1
here=$(cd "$(dirname "$0")" && pwd)
config=$here/moontask.lua

PAYMENTS_WORK=$(mktemp -d /tmp/moontask-payments.XXXXXX)
export PAYMENTS_WORK
if [ -z "${MOONTASK_KEY:-}" ]; then
  MOONTASK_KEY=$("$bin" keygen)
  echo "payments: MOONTASK_KEY is unset; using a throwaway key from moontask keygen"
fi
export MOONTASK_KEY
echo "payments: work folder $PAYMENTS_WORK"

now() { date +%s.%N; }
t0=$(now)
for i in $(seq 1 20); do
  user=$((40 + i))
  cents=$((i * 137 % 5000 + 99))
  amount=$((cents / 100)).$(printf '%02d' $((cents % 100)))
  "$bin" -c "$config" add charge_payment "$user" "\"tok_card${user}secret\"" "$amount" >/dev/null
done
echo "payments: enqueued 20 charge_payment task(s)"
t1=$(now)
code=0
"$bin" -c "$config" run --drain || code=$?
t2=$(now)

echo "== moontask list"
"$bin" -c "$config" list
id=$("$bin" lua "$here/most_retried.lua" "$config")
echo "== moontask logs $id (the most retried task)"
"$bin" -c "$config" logs "$id"
"$bin" lua "$here/../summary.lua" "$config" "$t0" "$t1" "$t2"
# The tokens were encrypted before they reached the database.
leaks=$(cat "$PAYMENTS_WORK"/moontask.db* "$PAYMENTS_WORK/moontask.log" | grep -a -c 'tok_card' || true)
echo "plain card tokens found in the database, its WAL and the log: $leaks"
exit "$code"

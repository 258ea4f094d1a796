#!/usr/bin/env bash
# The main job: hash every regular file under DIR with moontask.
# Usage: bash scripts/filehash/run.sh MOONTASK_BIN [DIR]   (DIR: /usr/share/doc)
# Makes a fresh work folder under /tmp (database and log file), enqueues one
# hash_file task per file, runs the queue until drained, prints a summary,
# and exits with `moontask run`'s code: 0 when every task succeeded, 1 if
# any failed (/usr/share/doc normally holds only readable files).
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: bash $0 MOONTASK_BIN [DIR]" >&2
  exit 2
fi
bin=$1
dir=${2:-/usr/share/doc}
here=$(cd "$(dirname "$0")" && pwd)
config=$here/moontask.lua
[ -d "$dir" ] || { echo "filehash: $dir is not a folder" >&2; exit 2; }
dir=$(cd "$dir" && pwd)  # tasks store absolute paths

FILEHASH_WORK=$(mktemp -d /tmp/moontask-filehash.XXXXXX)
export FILEHASH_WORK
echo "filehash: work folder $FILEHASH_WORK (database, moontask.log)"

now() { date +%s.%N; }
t0=$(now)
"$bin" lua "$here/enqueue.lua" "$config" "$dir"
t1=$(now)
code=0
"$bin" -c "$config" run --drain || code=$?
t2=$(now)

"$bin" lua "$here/../summary.lua" "$config" "$t0" "$t1" "$t2"
echo "log:      $FILEHASH_WORK/moontask.log ($(wc -l <"$FILEHASH_WORK/moontask.log") lines)"
echo "inspect:  FILEHASH_WORK=$FILEHASH_WORK $bin -c $config list --status FAILED"
exit "$code"

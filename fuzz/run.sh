#!/usr/bin/env bash
# Run one fuzzer on the build made by fuzz/build.sh:
#   fuzz/run.sh NAME SECONDS [extra libFuzzer flags...]      NAME: feed | ops | load | inputs
# Seeds come from fuzz/corpus/NAME/ (crash-* excluded); inputs that add coverage go to the work corpus
# fuzz/.build/corpus/NAME/; crashes, timeouts and OOMs go to fuzz/artifacts/NAME/ (crash-*, ...).
# The log is fuzz/.build/NAME.log. Exit status: libFuzzer's (non-zero on a finding).
set -euo pipefail
FUZZ=$(cd "$(dirname "$0")" && pwd)
VENV=${MELVIN_FUZZ_VENV:-$FUZZ/.venv}
WORK=${MELVIN_FUZZ_WORK:-$FUZZ/.build}
if [ $# -lt 2 ]; then
    echo "usage: $0 NAME SECONDS [libFuzzer flags...]   (NAME: feed, ops, load, inputs)" >&2
    exit 2
fi
NAME=$1
SECONDS_=$2
shift 2
SCRIPT=$FUZZ/fuzz_$NAME.py
PRELOAD=$WORK/asan_with_fuzzer.so
[ -f "$SCRIPT" ] || { echo "no fuzzer $SCRIPT" >&2; exit 2; }
[ -f "$PRELOAD" ] || { echo "$PRELOAD missing: run fuzz/build.sh first" >&2; exit 2; }
case "$NAME" in
    load) MAX_LEN=65536 ;;
    ops) MAX_LEN=4096 ;;
    *) MAX_LEN=8192 ;;
esac
CORPUS=$WORK/corpus/$NAME
ARTIFACTS=$FUZZ/artifacts/$NAME
# Seeds: fuzz/corpus/NAME/ without the saved findings (crash-*): those are regression tests
# (tests/test_fuzz_corpus.py) and would stop every run at its first input until they are fixed.
SEEDS=$WORK/seeds/$NAME
rm -rf "$SEEDS"
mkdir -p "$SEEDS" "$CORPUS" "$ARTIFACTS"
find "$FUZZ/corpus/$NAME" -maxdepth 1 -type f ! -name 'crash-*' -exec cp {} "$SEEDS/" \;
LOG=$WORK/$NAME.log

SYMBOLIZER=$(command -v llvm-symbolizer || ls /usr/lib/llvm-*/bin/llvm-symbolizer 2>/dev/null | head -1 || true)
export ASAN_SYMBOLIZER_PATH=${SYMBOLIZER:-}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:handle_abort=1:print_summary=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export PYTHONMALLOC=malloc       # Python objects (the bytes fed to the core) get ASan redzones too
export OPENBLAS_NUM_THREADS=1

set +e
(cd "$FUZZ" && LD_PRELOAD=$PRELOAD "$VENV/bin/python" "$SCRIPT" \
    -max_total_time="$SECONDS_" -max_len="$MAX_LEN" -timeout=60 -rss_limit_mb=4096 \
    -print_final_stats=1 -artifact_prefix="$ARTIFACTS/" "$@" "$CORPUS" "$SEEDS") 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
set -e

# Proof that the compiled core is instrumented: libFuzzer counts its inline 8-bit counters.
line=$(grep -m1 -E 'Loaded [0-9]+ modules +\([0-9]+ inline 8-bit counters\)' "$LOG" || true)
counters=$(sed -E 's/.*\(([0-9]+) inline 8-bit counters\).*/\1/' <<<"$line")
if [ -z "$line" ] || [ "${counters:-0}" -eq 0 ]; then
    echo "[run.sh] no inline 8-bit counters were loaded: the C core is not instrumented" >&2
    exit 3
fi
echo "[run.sh] $NAME: $line; corpus $(ls "$CORPUS" | wc -l) files; exit $rc"
exit "$rc"

#!/usr/bin/env bash
# One entry point that does its own setup: a venv, the dependencies, and a real (non-editable)
# build of the extension, so what runs is what users install.
#   ./dev.sh demo   train on the built-in corpus; show stats, held-out bits/byte, generations
#   ./dev.sh test   run the whole test suite against the installed extension
set -euo pipefail
cd "$(dirname "$0")"
VENV=${MELVIN_VENV:-.venv-melvin}
PY=${PYTHON:-python3}

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q ".[test]"
}

cmd=${1:-}
shift || true
case "$cmd" in
    demo)
        setup
        # Run from outside the source tree so the installed package (not ./melvin) is imported.
        (cd "$VENV" && OPENBLAS_NUM_THREADS=1 bin/melvin demo "$@")
        ;;
    test)
        setup
        OPENBLAS_NUM_THREADS=1 "$VENV/bin/pytest" -q -p no:cacheprovider tests "$@"
        ;;
    *)
        echo "usage: $0 demo|test [args]" >&2
        exit 2
        ;;
esac

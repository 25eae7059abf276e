#!/usr/bin/env bash
# One entry point that does its own setup: a venv, the dependencies, and a real (non-editable)
# build of the extension, so what runs is what users install.
#   ./dev.sh demo   train on the built-in corpus; show stats, held-out bits/byte, generations
#   ./dev.sh test   run the whole test suite against the installed extension, then (as root, or
#                   with MELVIN_SANITIZE=1) the ASan+UBSan build, every fuzzer for 60 s and the
#                   suite under ASan+UBSan; MELVIN_SANITIZE=0 skips that stage
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
        # Then the sanitizer gate: an ASan+UBSan+coverage build (clang, apt-get as root), each
        # fuzzer for 60 s, and the whole suite once under ASan+UBSan (fuzz/ci.sh, ~8 min).
        case "${MELVIN_SANITIZE:-auto}" in
            0) echo "dev.sh: sanitizer/fuzz stage skipped (MELVIN_SANITIZE=0)" ;;
            1) bash fuzz/ci.sh ;;
            *)
                if [ "$(id -u)" = 0 ]; then
                    bash fuzz/ci.sh
                else
                    echo "dev.sh: sanitizer/fuzz stage skipped: it apt-gets clang as root" \
                         "(run as root, or set MELVIN_SANITIZE=1 with clang + compiler-rt installed)"
                fi
                ;;
        esac
        ;;
    *)
        echo "usage: $0 demo|test [args]" >&2
        exit 2
        ;;
esac

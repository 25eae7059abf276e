#!/usr/bin/env bash
# Build melvin for fuzzing: clang, libFuzzer coverage counters, ASan and UBSan (recipes from
# shared/TOOLCHAIN.md). Self-contained on Debian 12 as root: installs clang/compiler-rt with apt
# if missing, creates a venv, builds a private copy of the sources (the source tree and any
# editable install stay untouched), installs it non-editable into the venv, and links the
# ASan+libFuzzer runtime `asan_with_fuzzer.so` that run.sh preloads.
#
#   fuzz/build.sh            # venv: fuzz/.venv   build dir: fuzz/.build
# Environment: PYTHON (python3), MELVIN_FUZZ_VENV, MELVIN_FUZZ_WORK, MELVIN_FUZZ_EXTRA_CFLAGS (appended
# to the sanitizer flags, e.g. "-fno-sanitize=nonnull-attribute" to step past a known report).
set -euo pipefail
FUZZ=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$FUZZ")
VENV=${MELVIN_FUZZ_VENV:-$FUZZ/.venv}
WORK=${MELVIN_FUZZ_WORK:-$FUZZ/.build}
PY=${PYTHON:-python3}
PIP_PACKAGES=("atheris==3.0.0" "cython>=3.0" "numpy>=1.26" "setuptools>=68" wheel
              pytest hypothesis "pytest-memray>=1.5" "memray>=1.11" tqdm psutil zstandard)

log() { echo "[build.sh] $*" >&2; }

apt_install() {
    if [ "$(id -u)" != 0 ]; then
        log "missing system packages ($*) and not root: install them and re-run"
        exit 1
    fi
    log "apt-get install $*"
    if [ -z "${_APT_UPDATED:-}" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        _APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# 1. Toolchain: clang 14 with compiler-rt (libclang-rt-14-dev is only a Recommends: name it).
rt_ok() {
    command -v clang >/dev/null 2>&1 || return 1
    local rt
    rt=$(dirname "$(clang -print-file-name=libclang_rt.asan-x86_64.a)")
    [ -f "$rt/libclang_rt.asan-x86_64.a" ] && [ -f "$rt/libclang_rt.fuzzer_no_main-x86_64.a" ]
}
if ! rt_ok || ! command -v tar >/dev/null || ! command -v ar >/dev/null; then
    apt_install clang libclang-rt-14-dev llvm-14 binutils tar
fi
rt_ok || { log "clang's compiler-rt (libclang_rt.asan, fuzzer_no_main) not found"; exit 1; }

# 2. Python with venv and headers (Debian splits them into python3-venv and python3-dev).
if ! "$PY" -c "import ensurepip, venv" >/dev/null 2>&1 || \
        ! "$PY" -c "import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))"; then
    apt_install python3-venv python3-dev
fi
if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade "${PIP_PACKAGES[@]}" 2>&1 \
    | grep -v '^WARNING: Location' || true
"$VENV/bin/python" -c "import atheris, Cython, numpy" || { log "venv packages missing"; exit 1; }

# 3. A private copy of the sources, without generated C or built modules (so cythonize regenerates
#    everything with line numbers for the sanitizer reports).
mkdir -p "$WORK"
rm -rf "$WORK/src"
mkdir -p "$WORK/src"
tar -C "$ROOT" --exclude='*.so' --exclude='*.c' --exclude='__pycache__' --exclude='*.html' \
    -cf - pyx melvin setup.py pyproject.toml README.md | tar -C "$WORK/src" -xf -

# 4. Build. An environment CFLAGS replaces Python's own (-O3 -fwrapv ...), so it carries -g and -O1;
#    MELVIN_CFLAGS adds the sanitizers (also to the link) and -fno-wrapv, because -fwrapv would
#    silently turn off UBSan's signed-overflow check.
SAN="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined"
SAN="$SAN -fno-omit-frame-pointer -g -O1 -fno-wrapv ${MELVIN_FUZZ_EXTRA_CFLAGS:-}"
log "building with CC=clang MELVIN_CFLAGS='$SAN' (log: $WORK/build.log)"
if ! (cd "$WORK/src" && CC=clang CXX=clang++ CFLAGS="-g -O1 -fno-omit-frame-pointer" \
        MELVIN_CFLAGS="$SAN" MELVIN_LINENUMS=1 \
        "$VENV/bin/python" -m pip install -v --no-build-isolation --no-deps \
        --disable-pip-version-check . > "$WORK/build.log" 2>&1); then
    tail -40 "$WORK/build.log" >&2
    log "build failed"
    exit 1
fi
if grep -E '^ *clang .*-c pyx/melvin' "$WORK/build.log" | grep -q -- '-fwrapv\b' && \
        ! grep -E '^ *clang .*-c pyx/melvin' "$WORK/build.log" | grep -q -- '-fno-wrapv'; then
    log "the compile line carries -fwrapv without -fno-wrapv: UBSan would miss signed overflow"
    exit 1
fi

# 5. The ASan runtime with libFuzzer's coverage hooks in one preloadable object. Preloading the plain
#    ASan runtime would bind the coverage hooks to weak stubs: the fuzzer would see no C coverage.
RT=$(dirname "$(clang -print-file-name=libclang_rt.asan-x86_64.a)")
cp "$RT/libclang_rt.asan-x86_64.a" "$WORK/san.a"
ar d "$WORK/san.a" asan_preinit.cpp.o
clang++ -Wl,--whole-archive "$RT/libclang_rt.fuzzer_no_main-x86_64.a" "$WORK/san.a" \
    -Wl,--no-whole-archive -lpthread -ldl -shared -o "$WORK/asan_with_fuzzer.so"
rm -f "$WORK/san.a"

# 6. Prove the installed extension is the instrumented one.
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
n=0
for so in "$SITE"/melvin/_core/*.so; do
    syms=$(nm -D "$so")       # (not `nm | grep -q`: with pipefail, grep's early exit fails nm)
    if grep -q '__sanitizer_cov_8bit_counters_init' <<<"$syms" && grep -q '__asan_' <<<"$syms"; then
        n=$((n + 1))
    else
        log "$so is not instrumented"
        exit 1
    fi
done
[ "$n" -ge 4 ] || { log "expected 4 instrumented modules, found $n"; exit 1; }
echo "$WORK/asan_with_fuzzer.so" > "$WORK/preload"
log "ok: $n instrumented modules in $SITE/melvin/_core; runtime $WORK/asan_with_fuzzer.so"

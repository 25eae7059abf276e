"""atheris entry point for targets.fuzz_load (run it with: fuzz/run.sh load SECONDS)."""
import sys

import atheris

# The Python layers (melvin/*.py, the target) get atheris coverage; the compiled core is covered
# by the clang build's inline 8-bit counters (fuzz/build.sh).
with atheris.instrument_imports(include=["melvin", "targets"]):
    import targets


def TestOneInput(data: bytes) -> None:
    if not data:        # keep a Python branch: clang-14's libFuzzer exits at start without one
        return
    targets.fuzz_load(data)


if __name__ == "__main__":
    targets.use_sorted_ranges_everywhere()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()

#!/usr/bin/env python3
"""Train a brain on large inputs in bounded memory (a thin wrapper over melvin.train).

    python tools/train.py ~/.cache/melvin-corpus/big.txt --out /tmp/big.mlv --max-memory 1G --json

See `python tools/train.py --help` or melvin/train.py for inputs, splits, memory, checkpoints and
--resume.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's idle BLAS threads steal a core here

import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from melvin.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

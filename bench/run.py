"""Run the benchmark: `python bench/run.py [--quick] [--runs N] [--out FILE.json]`.

See bench/README.md for what it measures and how.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())

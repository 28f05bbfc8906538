"""The WAN benchmark, as root: `.venv/bin/python bench/wan.py [--quick] [--links 10mbit,...]
[--out FILE.json]`.

Our tunnel next to direct TCP, stunnel and `ssh -tt -R` over an emulated slow uplink (three
network namespaces, a token-bucket modem queue both ways). See bench/README.md, "WAN benchmark".
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.wan_cli import main

if __name__ == "__main__":
    sys.exit(main())

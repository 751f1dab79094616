#!/usr/bin/env python3
"""The local lab's command line: `lab.py --help`. The code is the package labkit/ beside this
file (standard library only, PyYAML for the inventory); docs/LAB.md describes the lab."""

import sys
from pathlib import Path

# Run as a script by any python3 (the venv's or the system's): labkit is found beside this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from labkit.cli import main

if __name__ == "__main__":
    sys.exit(main())

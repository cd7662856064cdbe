"""Entry point: ``python search.py --budget-mb 5 --target-latency 20ms``."""

from __future__ import annotations

import sys

from search.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""Run every benchmark module of this folder (or the ones named on the command line).

Each module `bench/*_bench.py` exposes `main() -> None` that prints its own table
of results and ratios against the real peers. Benchmarks are never timed tests:
they print numbers, they do not pass or fail on them.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = argv or sorted(
        m.name for m in pkgutil.iter_modules([str(here)]) if m.name.endswith("_bench")
    )
    failed = 0
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        try:
            importlib.import_module(f"bench.{name}").main()
        except Exception:
            failed += 1
            traceback.print_exc()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Regenerate tests/cases/iotests/*.case from the translations in defs_*.py.

python3 tests/cases/iotests_gen            # writes every case
python3 tests/cases/iotests_gen 013 023    # only the cases of these iotests
"""

from __future__ import annotations

import sys
from pathlib import Path

import defs_000
import defs_025
import defs_042
import defs_061
import defs_080
import defs_103
import defs_121
import defs_133
import defs_154
import defs_244
import defs_filters
from builder import write_cases

MODULES = [defs_000, defs_025, defs_042, defs_061, defs_080, defs_103, defs_121, defs_133, defs_154, defs_244]
OUT = Path(__file__).resolve().parent.parent / "iotests"
# parts that need blkdebug/blkverify (not in this branch yet): a folder of their own
FILTER_MODULES = [defs_filters]
FILTER_OUT = Path(__file__).resolve().parent.parent / "iotests-filters"


def main(argv: list[str]) -> int:
    tests = [t for m in MODULES for t in m.all_tests()]
    if argv:
        tests = [t for t in tests if any(t.name.startswith(f"iotest_{n}") for n in argv)]
    names = write_cases(tests, OUT)
    print(f"{len(names)} case files written to {OUT}")
    filters = [t for m in FILTER_MODULES for t in m.all_tests()]
    if argv:
        filters = [t for t in filters if any(t.name.startswith(f"iotest_{n}") for n in argv)]
    names = write_cases(filters, FILTER_OUT)
    print(f"{len(names)} case files written to {FILTER_OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""qcow2 against real qemu-io: minimised divergences found by the fuzzer, and a seeded slice.

``tests/qcow2_cases/*.case`` are cases the fuzzer (``tests/qcow2_fuzz.py``) found and that
were minimised and fixed; each must keep matching qemu-io in output, exit status, ``qemu-img
info``/``check``/``map`` and guest contents (and in the image bytes when the case says
``# strict-bytes``).  A few fixed seeds of freshly generated cases run as well; ``QIO_SOAK=1``
runs hundreds.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.qcow2_fuzz import compare_case, generate_case, parse_case

pytestmark = [
    pytest.mark.oracle,
    pytest.mark.skipif(
        shutil.which("qemu-io") is None,
        reason="qemu-io (apt-get install -y qemu-utils) is not installed",
    ),
]

CASES = sorted((Path(__file__).parent / "qcow2_cases").glob("*.case"))
SOAK = bool(os.environ.get("QIO_SOAK"))
SEEDS = range(1000, 1400) if SOAK else [3, 11, 27]


def _check(result) -> None:  # type: ignore[no-untyped-def]
    if result.skipped:
        pytest.skip(result.skipped)
    assert not result.hard, "\n".join(result.hard)


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_minimised_case_matches_qemu_io(tmp_path, path: Path) -> None:
    _check(compare_case(parse_case(path.read_text()), str(tmp_path), repeat_oracle=False))


@pytest.mark.parametrize("seed", SEEDS)
def test_generated_case_matches_qemu_io(tmp_path, seed: int) -> None:
    _check(compare_case(generate_case(seed, None if SOAK else 12), str(tmp_path)))

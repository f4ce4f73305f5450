"""Every case file under tests/cases/ run through qemu-io and qio, compared differentially.

``tests/cases/*.case`` use exactly the shared conformance runner's format (so they also run
with ``run.py --cases tests/cases``); ``tests/cases/piped/*.case`` add ``< TEXT`` stdin lines.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.casefile import parse_case, to_scenario
from tests.conftest import SCENARIO_BUILDERS, ScenarioPool

CASES = Path(__file__).parent / "cases"
SHARED_FORMAT = sorted(CASES.glob("*.case"))
PIPED = sorted((CASES / "piped").glob("*.case"))


def _register(path: Path, piped: bool) -> str:
    key = f"case:{path.relative_to(CASES)}"
    SCENARIO_BUILDERS[key] = lambda: to_scenario(parse_case(path, allow_stdin=piped))
    return key


CASE_KEYS = [_register(p, False) for p in SHARED_FORMAT] + [_register(p, True) for p in PIPED]


def test_case_files_parse() -> None:
    """Malformed case files fail here, not as mysterious differential failures."""
    assert SHARED_FORMAT, "no case files found"
    for path in SHARED_FORMAT:
        case = parse_case(path)
        assert case.desc, f"{path.name}: every case needs a desc line"
    for path in PIPED:
        case = parse_case(path, allow_stdin=True)
        assert any(run.stdin is not None for run in case.runs), f"{path.name}: no stdin"


def missing_drivers(path: Path) -> list[str]:
    """Drivers a case requires that this qio installation does not have."""
    from qio.block import registry
    from qio.errors import OpenError

    missing = []
    for name in parse_case(path, allow_stdin=True).requires:
        try:
            registry.lookup(name)
        except OpenError:
            missing.append(name)
    return missing


@pytest.mark.oracle
@pytest.mark.parametrize("scenario_key", CASE_KEYS, ids=[k[5:] for k in CASE_KEYS])
def test_case(scenario_key: str, scenario_pool: ScenarioPool) -> None:
    missing = missing_drivers(CASES / scenario_key[5:])
    if missing:
        pytest.skip(f"qio has no {', '.join(missing)} driver yet")
    outcome = scenario_pool.outcome(scenario_key)
    assert outcome.ok, outcome.explain()

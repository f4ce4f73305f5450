"""Shared pytest wiring: the ``oracle`` marker and the parallel case runner.

Tests marked ``oracle`` compare qio with the real qemu-io; they are skipped, with the reason
printed, when qemu-io or qemu-img is not installed.  Differential scenarios are slow one by one
(two processes each), so the selected ones run in a thread pool once per session and every
test just looks up its outcome.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.differential import Outcome, Scenario, oracle_missing_reason, run_scenario

ORACLE_MISSING = oracle_missing_reason()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ORACLE_MISSING is not None:
        skip = pytest.mark.skip(reason=f"needs the real qemu-io: {ORACLE_MISSING}")
        for item in items:
            if item.get_closest_marker("oracle") is not None:
                item.add_marker(skip)
    # Remember which scenarios were selected, so the pool runs only those.
    selected: list[Any] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "scenario_key" in callspec.params:
            if not any(m.name == "skip" for m in item.iter_markers()):
                selected.append(callspec.params["scenario_key"])
    config.stash[SELECTED] = selected


def pytest_report_header(config: pytest.Config) -> str:
    if ORACLE_MISSING is not None:
        return f"differential tests skipped: {ORACLE_MISSING}"
    return "differential tests: qemu-io found"


SELECTED = pytest.StashKey[list[Any]]()


class ScenarioPool:
    """Runs registered scenarios in parallel the first time any outcome is asked for."""

    def __init__(self, selected: Iterable[Any]) -> None:
        self.selected = list(dict.fromkeys(selected))
        self.outcomes: dict[Any, Outcome | BaseException] = {}

    def outcome(self, key: Any) -> Outcome:
        if key not in self.outcomes:
            self._run_all(key)
        result = self.outcomes[key]
        if isinstance(result, BaseException):
            raise result
        return result

    def _run_all(self, first: Any) -> None:
        keys = [first] + [k for k in self.selected if k not in self.outcomes and k != first]

        def one(key: Any) -> tuple[Any, Outcome | BaseException]:
            try:
                return key, run_scenario(SCENARIO_BUILDERS[key]())
            except Exception as exc:  # reported by the test that owns the scenario
                return key, exc

        workers = int(os.environ.get("QIO_TEST_JOBS", "0")) or max(2, (os.cpu_count() or 1) * 2)
        with ThreadPoolExecutor(workers) as pool:
            for key, result in pool.map(one, keys):
                self.outcomes[key] = result


# key -> scenario builder, filled by test modules at import time
SCENARIO_BUILDERS: dict[Any, Callable[[], Scenario]] = {}


@pytest.fixture(scope="session")
def scenario_pool(request: pytest.FixtureRequest) -> ScenarioPool:
    selected = request.config.stash.get(SELECTED, [])
    return ScenarioPool([k for k in selected if k in SCENARIO_BUILDERS])

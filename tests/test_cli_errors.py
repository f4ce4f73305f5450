"""Errors that need more than a case file: permissions (root gives up overriding them), files
the case format cannot describe, trace events files."""

from __future__ import annotations

import pytest

from tests.conftest import SCENARIO_BUILDERS, ScenarioPool
from tests.differential import Invocation, Scenario, SetupStep, create_image, write_file


def chmod(name: str, mode: int) -> SetupStep:
    def step(d):  # type: ignore[no-untyped-def]
        (d / name).chmod(mode)

    return step


def restricted(args: list[str], label: str = "") -> Invocation:
    return Invocation(args, None, label, obey_permissions=True)


SCENARIOS: dict[str, Scenario] = {
    "no_permission": Scenario(
        "err_no_permission",
        [create_image("r.img", "1M"), chmod("r.img", 0o000)],
        [
            restricted(["-f", "raw", "-c", "read 0 1", "r.img"], "read-write"),
            restricted(["-r", "-f", "raw", "-c", "read 0 1", "r.img"], "read-only"),
            restricted(["-c", "open -r -o driver=raw r.img", "-c", "length"], "open command"),
        ],
    ),
    "read_only_file": Scenario(
        "err_read_only_file",
        [create_image("r.img", "1M"), chmod("r.img", 0o444)],
        [
            restricted(["-f", "raw", "-c", "read -q 0 1", "r.img"], "read-write open"),
            restricted(["-r", "-f", "raw", "-c", "read -q 0 1", "-c", "write 0 1", "r.img"], "-r"),
            restricted(
                ["-f", "raw", "-r", "-c", "reopen -w", "-c", "write 0 1", "r.img"], "reopen"
            ),
            restricted(["-c", "read -q 0 1", "r.img"], "probed"),
        ],
    ),
    "unreadable_source_file": Scenario(
        "err_unreadable_source",
        [create_image("r.img", "1M"), write_file("src.bin", b"abc", 0o000), chmod("r.img", 0o666)],
        [restricted(["-f", "raw", "-c", "write -s src.bin 0 3", "-c", "length", "r.img"])],
    ),
    "closed_directory": Scenario(
        "err_closed_directory",
        [write_file("sub/r.img", bytes(4096)), chmod("sub", 0o000)],
        [restricted(["-f", "raw", "-c", "length", "sub/r.img"])],
    ),
    "events_file": Scenario(
        "trace_events_file",
        [create_image("r.img", "1M"), write_file("ev", b"bogus1\n\n#c\n-bogus2\nx*\nlastX")],
        [Invocation(["-f", "raw", "-T", "events=ev", "-c", "length", "r.img"])],
    ),
}

KEYS = []
for _name, _scenario in SCENARIOS.items():
    SCENARIO_BUILDERS[f"cli:{_name}"] = lambda s=_scenario: s
    KEYS.append(f"cli:{_name}")


@pytest.mark.oracle
@pytest.mark.parametrize("scenario_key", KEYS, ids=[k.split(":", 1)[1] for k in KEYS])
def test_cli_error(scenario_key: str, scenario_pool: ScenarioPool) -> None:
    outcome = scenario_pool.outcome(scenario_key)
    assert outcome.ok, outcome.explain()

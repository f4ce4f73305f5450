"""QEMU's qemu-iotests, translated into conformance cases, run against qemu-io.

The cases live in ``tests/cases/iotests/`` (written by ``tests/cases/iotests_gen``; see
``docs/iotests.md``).  They are run through the shared differential runner
(``../shared/conformance/run.py`` beside the repository), which executes each case with the
real qemu-io and with qio and compares output, exit status and final images.  Where that
runner is not beside the checkout, the suite's own differential engine runs the same files.

The default run takes a representative subset that finishes in well under a minute;
``QIO_SOAK=1`` runs every case.  Cases that diverge for a known reason that another branch
fixes are expected failures (strict: once they pass, the entry must go).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.casefile import parse_case, to_scenario
from tests.conftest import SCENARIO_BUILDERS, ScenarioPool

REPO = Path(__file__).resolve().parent.parent
CASES = REPO / "tests" / "cases" / "iotests"
RUNNER_CANDIDATES = [
    Path(os.environ["QIO_CONFORMANCE_RUNNER"])
    if os.environ.get("QIO_CONFORMANCE_RUNNER")
    else None,
    REPO.parent / "shared" / "conformance" / "run.py",
    REPO.parent.parent / "shared" / "conformance" / "run.py",
]
RUNNER = next((p for p in RUNNER_CANDIDATES if p is not None and p.is_file()), None)
SOAK = os.environ.get("QIO_SOAK") == "1"

# A quick, representative slice (one or two cases per kind of iotest); QIO_SOAK=1 runs all.
DEFAULT_SUBSET = {
    "iotest_002_pread_pwrite_raw",
    "iotest_005_large_image_qcow2",
    "iotest_009_free_clusters",
    "iotest_010_used_cluster",
    "iotest_021_invalid_patterns_raw",
    "iotest_027_subcluster_zeroing",
    "iotest_029_huge_vmstate_part2",
    "iotest_031_header_rewrite_compat11_part2",
    "iotest_033_write_zeroes_qcow2_aio_write",
    "iotest_034_zero_write_backing_part2",
    "iotest_042_zero_size",
    "iotest_053_single_sector_compressed_part2",
    "iotest_054_huge_size",
    "iotest_060_l2_into_l1",
    "iotest_060_data_into_inactive_l2_part3",
    "iotest_066_discard_zero_clusters",
    "iotest_069_missing_backing",
    "iotest_072_nested_formats_part2",
    "iotest_080_bad_l1",
    "iotest_080_snapshot_l1_size",
    "iotest_089_json_nested_part2",
    "iotest_090_discard_compressed",
    "iotest_103_cache_sizes_part1",
    "iotest_114_bad_backing_format",
    "iotest_153_force_share",
    "iotest_187_ro_rw_switch",
    "iotest_221_unaligned_raw",
    "iotest_244_data_file_raw_on",
    "iotest_290_discard_v2_v3",
}

# case -> why it still diverges (fixed on another branch; remove the entry after the merge)
KNOWN_DIVERGENCES: dict[str, str] = {}


def _all_cases() -> list[str]:
    return sorted(p.stem for p in CASES.glob("*.case"))


def _selected() -> list[str]:
    names = _all_cases()
    return names if SOAK else [n for n in names if n in DEFAULT_SUBSET]


def _exact(name: str) -> str:
    # the runner's -k is a substring match unless the pattern is a glob: make it exact
    return name[:-1] + "[" + name[-1] + "]"


@pytest.fixture(scope="session")
def runner_results() -> dict[str, str]:
    """Run every selected case once (in parallel); case name -> '' or its failure line."""
    if RUNNER is None:
        pytest.skip("the shared conformance runner (../shared/conformance/run.py) is not present")
    for tool in ("qemu-io", "qemu-img"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} (apt-get install -y qemu-utils) is not installed")
    names = _selected()
    argv = [sys.executable, str(RUNNER), "--cases", str(CASES), "-j", "2", "--pass-lines"]
    for name in names:
        argv += ["-k", _exact(name)]
    env = dict(os.environ, QIO=f"{sys.executable} -m qio", PYTHONPATH=str(REPO))
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600)
    results: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^(ok  |FAIL) (\S+?)(?: \([\d.]+s\))?(?:: (.*))?$", line)
        if m:
            results[m.group(2)] = "" if m.group(1).startswith("ok") else (m.group(3) or "failed")
    if not results:
        pytest.fail(f"the runner printed no results:\n{proc.stdout}\n{proc.stderr}")
    return results


def _judge(case: str, failure: str) -> None:
    if case in KNOWN_DIVERGENCES:
        if failure:
            pytest.xfail(KNOWN_DIVERGENCES[case])
        pytest.fail(f"{case} passes now: remove it from KNOWN_DIVERGENCES")
    assert failure == "", failure


if RUNNER is not None:

    @pytest.mark.oracle
    @pytest.mark.parametrize("case", _selected())
    def test_iotest_case(case: str, runner_results: dict[str, str]) -> None:
        failure = runner_results.get(case)
        assert failure is not None, f"{case}: no result from the runner"
        _judge(case, failure)

else:
    # Without the shared runner beside the checkout (a bare clone in CI), the same case
    # files run through the suite's own differential engine (tests/casefile.py), which
    # compares the same things: output, exit status and the final images.
    def _builder(path: Path):  # type: ignore[no-untyped-def]
        return lambda: to_scenario(parse_case(path))

    IN_REPO_KEYS = []
    for _name in _selected():
        SCENARIO_BUILDERS[f"iotest:{_name}"] = _builder(CASES / f"{_name}.case")
        IN_REPO_KEYS.append(f"iotest:{_name}")

    @pytest.mark.oracle
    @pytest.mark.parametrize("scenario_key", IN_REPO_KEYS, ids=[k[7:] for k in IN_REPO_KEYS])
    def test_iotest_case_in_repo(scenario_key: str, scenario_pool: ScenarioPool) -> None:
        outcome = scenario_pool.outcome(scenario_key)
        _judge(scenario_key[7:], "" if outcome.ok else outcome.explain())


def test_case_files_are_well_formed() -> None:
    """Every translated case names its iotest and has at least one qemu-io run."""
    names = _all_cases()
    assert len(names) >= 100
    for name in names:
        text = (CASES / f"{name}.case").read_text()
        assert text.startswith("desc iotest "), name
        assert "\nrun" in text, name

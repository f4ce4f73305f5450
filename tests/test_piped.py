"""Piped standard input, byte for byte: qemu-io reads each line with fgets() into a 1024-byte
buffer, so long lines are cut into several commands, a NUL ends a line early, a carriage
return stays part of the last word, and input without a final newline still runs."""

from __future__ import annotations

import pytest

from tests.conftest import SCENARIO_BUILDERS, ScenarioPool
from tests.differential import Invocation, Scenario, create_image

STDIN_CASES: dict[str, bytes] = {
    "crlf": b"read 0 512\r\nlength\r\n",
    "nul_ends_line": b"length\0read 0 1\nlength\n",
    "no_final_newline": b"read -q 0 512\nlength",
    "line_of_1023": b"read -q 0 512" + b" " * 1010 + b"\nlength\n",
    "line_of_1024_splits": b"read -q 0 512" + b" " * 1010 + b"length\n",
    "long_word_splits": b"x" * 1023 + b"length\n",
    "very_long_line": b"read 0 1 " + b"9" * 3000 + b"\nlength\n",
    "only_newlines": b"\n\n\n",
    "empty": b"",
    "quit_then_more": b"length\nquit\nread 0 1\n",
    "binary_garbage": bytes(range(1, 256)) + b"\nlength\n",
    "utf8_command": "l\u00e9ngth\n".encode() + b"\xff\xfe\n",
    "tabs": b"length\t\n\tlength\n",
    "many_commands": b"".join(b"read -q %d 512\n" % (i * 512) for i in range(200)) + b"length\n",
}


def _scenario(name: str, data: bytes) -> Scenario:
    return Scenario(
        f"piped_{name}",
        [create_image("r.img", "1M")],
        [Invocation(["-f", "raw", "r.img"], data, name)],
    )


KEYS = []
for _name, _data in STDIN_CASES.items():
    _key = f"piped:{_name}"
    SCENARIO_BUILDERS[_key] = lambda n=_name, d=_data: _scenario(n, d)
    KEYS.append(_key)


@pytest.mark.oracle
@pytest.mark.parametrize("scenario_key", KEYS, ids=[k.split(":", 1)[1] for k in KEYS])
def test_piped_stdin(scenario_key: str, scenario_pool: ScenarioPool) -> None:
    outcome = scenario_pool.outcome(scenario_key)
    assert outcome.ok, outcome.explain()

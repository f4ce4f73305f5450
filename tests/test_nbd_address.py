"""NBD filename parsing without a server (the differential tests check the texts against
qemu-io; these pin the options each spelling becomes, and run without QEMU installed)."""

from __future__ import annotations

import pytest

from qio.block.options import Options
from qio.errors import OpenError
from qio.nbd.address import parse_filename, pseudo_filename, socket_address
from qio.nbd.client import SocketAddress


def _parse(name: str) -> dict[str, object]:
    options = Options()
    parse_filename(name, options)
    return options.as_dict()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("nbd://h", {"server.type": "inet", "server.host": "h", "server.port": "10809"}),
        ("nbd+tcp://h:12/e%20x", {"export": "e x", "server.type": "inet", "server.host": "h",
                                  "server.port": "12"}),
        ("nbd://[::1]:5//x", {"export": "/x", "server.type": "inet", "server.host": "::1",
                              "server.port": "5"}),
        ("nbd+unix:///e?socket=/s", {"export": "e", "server.type": "unix", "server.path": "/s"}),
        ("nbd+unix://?socket=s&", {"server.type": "unix", "server.path": "s"}),
        ("nbd:h:7", {"server.type": "inet", "server.host": "h", "server.port": "7"}),
        ("nbd:[::1]:7,ipv6", {"server.type": "inet", "server.host": "::1", "server.port": "7"}),
        ("nbd:unix:a:b:exportname=x:y", {"export": "x:y", "server.type": "unix",
                                          "server.path": "a:b"}),
        ("nbd:h:7:exportname=", {}),
        ("nbd:", {}),
    ],
)  # fmt: skip
def test_filenames(name: str, expected: dict[str, object]) -> None:
    assert _parse(name) == expected


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nbd://", "No valid URL specified"),
        ("nbd://h:65536", "No valid URL specified"),
        ("nbd://h/a b", "No valid URL specified"),
        ("nbd+unix:///e", "No valid URL specified"),
        ("nbd+unix://h/e?socket=s", "No valid URL specified"),
        ("nbd://h?socket=s", "No valid URL specified"),
        ("nbd:h", "error parsing address 'h'"),
        ("nbd:[::1", "error parsing IPv6 address '[::1'"),
        ("nbd::", "error parsing port in address ':'"),
        ("nbd+unix:e?socket=s", "File name string for NBD must start with 'nbd:'"),
    ],
)
def test_filename_errors(name: str, message: str) -> None:
    with pytest.raises(OpenError) as info:
        _parse(name)
    assert info.value.message == message


def test_conflicting_options() -> None:
    options = Options({"server.host": "x"})
    with pytest.raises(OpenError, match="Option 'server.host' cannot be used with a file name"):
        parse_filename("nbd://h", options)


def test_socket_address_checks_like_qapi() -> None:
    assert socket_address(Options({"server.type": "unix", "server.path": "p"})) == SocketAddress(
        "unix", path="p"
    )
    for opts, message in (
        ({}, "NBD server address missing"),
        ({"server.host": "h"}, "Parameter 'type' is missing"),
        ({"server.type": "tcp"}, "Parameter 'type' does not accept value 'tcp'"),
        ({"server.type": "inet", "server.host": "h"}, "Parameter 'port' is missing"),
        (
            {"server.type": "unix", "server.path": "p", "server.x": "1"},
            "Parameter 'x' is unexpected",
        ),
    ):
        with pytest.raises(OpenError) as info:
            socket_address(Options(opts))
        assert info.value.message == message


def test_pseudo_filenames() -> None:
    inet = SocketAddress("inet", host="h", port="1")
    unix = SocketAddress("unix", path="/s")
    assert pseudo_filename(inet, None) == "nbd://h:1"
    assert pseudo_filename(inet, "e") == "nbd://h:1/e"
    assert pseudo_filename(unix, None) == "nbd+unix://?socket=/s"
    assert pseudo_filename(unix, "e") == "nbd+unix:///e?socket=/s"

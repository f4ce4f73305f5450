"""glibc getopt semantics for commands and the program's own options."""

from qio.getopt import Getopt, GetoptError, LongOption


def run(args: list[str], spec: str, longopts: tuple[LongOption, ...] = ()):
    g = Getopt(args, spec, longopts)
    items = list(g)
    return items, g.operands


def test_permutation_and_clusters() -> None:
    items, operands = run(["read", "-q", "0", "512", "-P", "0"], "bCl:pP:qs:v")
    assert items == [("q", None), ("P", "0")]
    assert operands == ["0", "512"]


def test_option_cluster_with_argument() -> None:
    items, _ = run(["read", "-vP0x11", "0", "1"], "bCl:pP:qs:v")
    assert items == [("v", None), ("P", "0x11")]


def test_negative_number_is_an_option_cluster() -> None:
    items, _ = run(["read", "0", "-512"], "bCl:pP:qs:v")
    assert isinstance(items[-1], GetoptError)
    assert items[-1].message == "invalid option -- '5'"


def test_double_dash_ends_options() -> None:
    items, operands = run(["read", "--", "-1", "512"], "bCl:pP:qs:v")
    assert items == []
    assert operands == ["-1", "512"]


def test_missing_argument() -> None:
    items, _ = run(["read", "0", "512", "-P"], "bCl:pP:qs:v")
    assert items[-1] == GetoptError("option requires an argument -- 'P'")


LONG = (
    LongOption("cmd", True, "c"),
    LongOption("copy-on-read", False, "C"),
    LongOption("cache", True, "t"),
    LongOption("help", False, "h"),
)


def test_long_options() -> None:
    assert run(["p", "--cmd=x", "--cache", "none"], "c:t:C", LONG)[0] == [("c", "x"), ("t", "none")]
    assert run(["p", "--cm", "x"], "c:", LONG)[0] == [("c", "x")]
    assert run(["p", "--c"], "c:", LONG)[0] == [
        GetoptError("option '--c' is ambiguous; possibilities: '--cmd' '--copy-on-read' '--cache'")
    ]
    assert run(["p", "--bogus"], "c:", LONG)[0] == [GetoptError("unrecognized option '--bogus'")]
    assert run(["p", "--help=x"], "c:", LONG)[0] == [
        GetoptError("option '--help' doesn't allow an argument")
    ]
    assert run(["p", "--cmd"], "c:", LONG)[0] == [
        GetoptError("option '--cmd' requires an argument")
    ]


EXTENDED = (
    LongOption("cmd", True, "c"),
    LongOption("copy-on-read", False, "C"),
    LongOption("cache", True, "t"),
    LongOption("color", True, "color", extension=True),
)


def test_extension_options_do_not_change_qemu_io_abbreviations() -> None:
    # "--co" is "--copy-on-read" for qemu-io; qio's "--color" must not make it ambiguous.
    assert run(["p", "--co"], "c:Ct:", EXTENDED)[0] == [("C", None)]
    assert run(["p", "--c"], "c:Ct:", EXTENDED)[0] == [
        GetoptError("option '--c' is ambiguous; possibilities: '--cmd' '--copy-on-read' '--cache'")
    ]


def test_extension_options_still_work_spelled_out_or_unambiguous() -> None:
    assert run(["p", "--color=never"], "c:Ct:", EXTENDED)[0] == [("color", "never")]
    assert run(["p", "--col", "always"], "c:Ct:", EXTENDED)[0] == [("color", "always")]

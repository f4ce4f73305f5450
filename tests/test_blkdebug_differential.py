"""blkdebug through qemu-io and qio: rules, config errors, limits, breakpoints."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.qemu_oracle import assert_same, needs_qemu, qemu_img, qemu_io, raw_image, run_both

pytestmark = needs_qemu

CONFIGS = {
    # rules
    "read.conf": '[inject-error]\nevent = "read_aio"\nerrno = "5"\n',
    "none.conf": '[inject-error]\nevent = "none"\n',
    "rnone.conf": '[inject-error]\nevent = "none"\niotype = "read"\n',
    "once.conf": '[inject-error]\nevent = "none"\niotype = "read"\nonce = "on"\n',
    "sector8.conf": '[inject-error]\nevent = "none"\niotype = "read"\nsector = "8"\n',
    "flush.conf": '[inject-error]\nevent = "none"\niotype = "flush"\n',
    "wz.conf": '[inject-error]\nevent = "none"\niotype = "write-zeroes"\n',
    "disc.conf": '[inject-error]\nevent = "none"\niotype = "discard"\nerrno = "1"\n',
    "bs.conf": '[inject-error]\nevent = "none"\niotype = "block-status"\n',
    "state.conf": (
        '[set-state]\nevent = "read_aio"\nstate = "1"\nnew_state = "2"\n\n'
        '[inject-error]\nevent = "read_aio"\nstate = "2"\nerrno = "28"\n'
    ),
    "two.conf": (
        '[inject-error]\nevent = "none"\niotype = "read"\nsector = "0"\nerrno = "5"\n'
        '[inject-error]\nevent = "none"\niotype = "read"\nsector = "1"\nerrno = "28"\n'
    ),
    "twoi.conf": (
        '[inject-error]\nevent = "none"\niotype = "read"\nsector = "0"\nimmediately = "on"\n'
        '[inject-error]\nevent = "none"\niotype = "read"\nsector = "1"\nerrno = "28"\n'
        'immediately = "on"\n'
    ),
    "errno0.conf": '[inject-error]\nevent = "none"\nerrno = "0"\n[inject-error]\nevent = "none"\n',
    "quirks.conf": (
        '# comment\n[inject-error "rule-1"]\n\tevent = "none" trailing text\nerrno = "0x1c"\n'
        'iotype = "read"\n'
    ),
    # errors
    "nogroup.conf": 'event = "read_aio"\n',
    "ws.conf": '[inject-error]\n   \nevent = "read_aio"\n',
    "bad-unquoted.conf": "[inject-error]\nevent = read_aio\n",
    "bad-open-quote.conf": '[inject-error]\nevent = "read_aio\n',
    "bad-number.conf": '[inject-error]\nevent = "read_aio"\nerrno = "abc"\n',
    "bad-bool.conf": '[inject-error]\nevent = "read_aio"\nonce = "maybe"\n',
    "bad-iotype.conf": '[inject-error]\nevent = "read_aio"\niotype = "bogus"\n',
    "bad-brackets.conf": '[]\nevent = "read_aio"\n',
    "bad-keys.conf": '[inject-error]\nevent = "read_aio"\nbogus = "1"\nzzz = "2"\n',
    "bad-id.conf": '[inject-error "1abc"]\nevent = "read_aio"\n',
    "dup-id.conf": '[inject-error "x"]\nevent = "read_aio"\n[inject-error "x"]\nevent = "read_aio"\n',
    "too-large.conf": '[inject-error]\nevent = "read_aio"\nerrno = "99999999999999999999999"\n',
    "bad-group.conf": '[inject-error]\nevent = "read_aio"\n[bogus]\n[set-state]\n',
    "iotype-set-state.conf": '[set-state]\nevent = "read_aio"\niotype = "read"\n',
    "indented-comment.conf": '[inject-error]\n  # indented comment\nevent = "read_aio"\n',
    "no-event.conf": "[inject-error]\n[set-state]\n",
    "space-group.conf": '[ inject-error]\nevent = "read_aio"\n',
    "no-spaces.conf": '[inject-error]\nevent = "read_aio"\nsector = "-1"\nstate="2"\n',
    "bad-event.conf": '[inject-error]\nevent = "bogus_event"\n',
}


def setup(directory: Path) -> None:
    raw_image(directory / "r.img", 1 << 20, [(0x11, 0, 64 << 10)])
    for name, text in CONFIGS.items():
        (directory / name).write_text(text)
    (directory / "dir.conf").mkdir()


def bd(conf: str) -> str:
    return f"blkdebug:{conf}:r.img"


def opts(extra: str) -> str:
    return f"driver=raw,file.driver=blkdebug,file.image.filename=r.img,{extra}"


def c(*commands: str) -> list[str]:
    out: list[str] = []
    for command in commands:
        out += ["-c", command]
    return out


ALIGN = opts("file.align=4096")

CASES: dict[str, list[str]] = {
    # rules from config files
    "read-aio": ["-f", "raw", *c("read 0 4k", "read -q 128k 4k", "write -q 0 4k"), bd("read.conf")],
    "none-all": [
        "-f",
        "raw",
        *c("read 0 512", "write 0 512", "aio_read 0 512", "aio_flush"),
        bd("none.conf"),
    ],
    "none-probe-fails": [*c("read 0 512"), bd("rnone.conf")],
    "once": [
        "-f",
        "raw",
        *c("read 0 512", "read 0 512", "aio_read 0 512", "aio_flush"),
        bd("once.conf"),
    ],
    "sector": [
        "-f",
        "raw",
        *c("read 0 4k", "read 4k 512", "read 0 4096", "read 4095 2"),
        bd("sector8.conf"),
    ],
    "state-machine": ["-f", "raw", *c("read -q 0 4k", "read 0 4k", "read 0 4k"), bd("state.conf")],
    "flush-writethrough": ["-f", "raw", *c("write 0 512"), bd("flush.conf")],
    "flush-writeback": [
        "-f",
        "raw",
        "-t",
        "writeback",
        *c("write -q 0 512", "flush", "flush"),
        bd("flush.conf"),
    ],
    "write-zeroes": [
        "-f",
        "raw",
        *c("write -z 0 4k", "write -z 100 4k", "aio_write -z 8k 4k", "aio_flush", "write 0 512"),
        bd("wz.conf"),
    ],
    "discard": [
        "-f",
        "raw",
        *c("discard 0 4k", "discard 100 4k", "discard 0 100"),
        bd("disc.conf"),
    ],
    "block-status": ["-f", "raw", *c("map", "alloc 0", "read 0 512"), bd("bs.conf")],
    "errno-0-stops-search": ["-f", "raw", *c("read 0 512", "write 0 512"), bd("errno0.conf")],
    "quirks": ["-f", "raw", *c("read 0 512", "write 0 512"), bd("quirks.conf")],
    "empty-config": ["-f", "raw", *c("read -P 0x11 0 4k", "info", "map"), "blkdebug::r.img"],
    "probed-raw": [*c("read -P 0x11 0 4k", "write -q 0 512"), "blkdebug::r.img"],
    # completion order of failed asynchronous requests
    "aio-order-rescheduled": [
        "-f",
        "raw",
        *c("aio_read 0 512", "aio_read 512 512", "aio_flush"),
        bd("two.conf"),
    ],
    "aio-order-immediate": [
        "-f",
        "raw",
        *c("aio_read 0 512", "aio_read 512 512", "aio_flush"),
        bd("twoi.conf"),
    ],
    # config errors
    **{
        f"error-{name.removesuffix('.conf')}": ["-f", "raw", *c("read 0 512"), bd(name)]
        for name in CONFIGS
        if not name.startswith(("read", "none", "rnone", "once", "sector", "flush", "wz", "disc"))
        and name
        not in ("bs.conf", "state.conf", "two.conf", "twoi.conf", "errno0.conf", "quirks.conf")
    },
    "error-dir": ["-f", "raw", *c("read 0 512"), bd("dir.conf")],
    "error-nothere": ["-f", "raw", *c("read 0 512"), bd("nothere.conf")],
    "error-one-path": [*c("read 0 512"), "blkdebug:r.img"],
    # inline rules and limits
    "inline-single": ["--image-opts", *c("read 0 512"), opts("file.inject-error.event=read_aio")],
    "inline-json": [
        *c("read 0 512", "write 0 512"),
        'json:{"driver":"raw","file":{"driver":"blkdebug","inject-error":[{"event":"none",'
        '"iotype":"write","errno":28,"once":true}],"image":{"driver":"file","filename":"r.img"}}}',
    ],
    "inline-set-state": [
        "--image-opts",
        *c("read 0 512"),
        opts(
            "file.set-state.0.event=none,file.set-state.0.new_state=2,"
            "file.inject-error.0.event=none,file.inject-error.0.state=2"
        ),
    ],
    "inline-bad-event": [
        "--image-opts",
        *c("read 0 512"),
        opts("file.inject-error.0.event=read_aio,file.inject-error.1.event=bogus"),
    ],
    "inline-mixed": [
        "--image-opts",
        *c("read 0 512"),
        opts("file.inject-error.event=read_aio,file.inject-error.0.event=read_aio"),
    ],
    "inline-unused": ["--image-opts", *c("read 0 512"), opts("file.inject-error.bogus=1")],
    "inline-unsupported": ["--image-opts", *c("read 0 512"), opts("file.inject-error.0.bogus=1")],
    "inline-not-keys": ["--image-opts", *c("read 0 512"), opts("file.inject-error.0=1")],
    "inline-gap": [
        "--image-opts",
        *c("read 0 512"),
        opts("file.inject-error.0.event=read_aio,file.inject-error.2.event=read_aio"),
    ],
    "inline-bad-number": ["--image-opts", *c("read 0 512"), opts("file.inject-error.0.errno=x")],
    "limit-align": ["--image-opts", *c("read 0 512"), opts("file.align=3")],
    "limit-transfer": [
        "--image-opts",
        *c("read 0 512"),
        opts("file.align=4096,file.max-transfer=1000"),
    ],
    "limit-write-zero": [
        "--image-opts",
        *c("read 0 512"),
        opts("file.max-write-zero=512,file.opt-write-zero=1024"),
    ],
    "limit-size-syntax": ["--image-opts", *c("read 0 512"), opts("file.align=x")],
    "limit-too-large": ["--image-opts", *c("read 0 512"), opts("file.align=2G")],
    "bad-permission": ["--image-opts", *c("read 0 512"), opts("file.take-child-perms.0=bogus")],
    "unknown-option": ["--image-opts", *c("read 0 512"), opts("file.bogus=1")],
    "unknown-image-option": ["--image-opts", *c("read 0 512"), opts("file.image.bogus=1")],
    "limits-at-work": [
        "--image-opts",
        *c(
            "write -z 0 64k",
            "read -P 0 0 64k",
            "write -P 3 100 10000",
            "read -P 3 100 10000",
            "discard 0 64k",
            "read -v 0 32",
        ),
        opts(
            "file.opt-write-zero=4096,file.max-write-zero=8192,file.align=512,"
            "file.opt-discard=4096,file.max-discard=8192,file.max-transfer=4096"
        ),
    ],
    "limits-with-rules": [
        "--image-opts",
        *c("write -z 0 64k", "write -z 1k 2k", "write -z -u 4k 8k", "write -z -n 100 200"),
        opts("file.opt-write-zero=4096,file.max-write-zero=8192,file.config=wz.conf"),
    ],
    # breakpoints
    "break-read": [
        "-f",
        "raw",
        *c("break read_aio A", "aio_read 0 4k", "wait_break A", "resume A", "aio_flush"),
        "blkdebug::r.img",
    ],
    "break-remove-suspended": [
        "-f",
        "raw",
        *c(
            "break write_aio W",
            "aio_write -q -P 7 0 4k",
            "wait_break W",
            "remove_break W",
            "aio_flush",
            "read -q -P 7 0 4k",
        ),
        "blkdebug::r.img",
    ],
    "break-errors": [
        "-f",
        "raw",
        *c("break bogus T", "resume nosuch", "remove_break nosuch"),
        "blkdebug::r.img",
    ],
    "break-without-blkdebug": [
        "-f",
        "raw",
        *c("break read_aio A", "resume A", "remove_break A"),
        "r.img",
    ],
    "break-removed-before-hit": [
        "-f",
        "raw",
        *c("break read_aio A", "remove_break A", "aio_read 0 512", "aio_flush"),
        "blkdebug::r.img",
    ],
    "break-two-tags": [
        "-f",
        "raw",
        *c(
            "break read_aio A",
            "break read_aio B",
            "aio_read 0 512",
            "resume A",
            "resume B",
            "aio_flush",
        ),
        "blkdebug::r.img",
    ],
    "break-two-requests": [
        "-f",
        "raw",
        *c(
            "break write_aio A",
            "aio_write -q -P 1 0 512",
            "break write_aio B",
            "aio_write -q -P 2 4k 512",
            "resume B",
            "resume A",
            "aio_flush",
            "read -P 1 0 512",
            "read -P 2 4k 512",
        ),
        "blkdebug::r.img",
    ],
    "break-rmw-head": [
        "--image-opts",
        *c(
            "break pwritev_rmw_head A",
            "break pwritev_rmw_after_head B",
            "aio_write -P 7 512 512",
            "wait_break A",
            "resume A",
            "wait_break B",
            "resume B",
            "aio_flush",
        ),
        ALIGN,
    ],
    "break-rmw-merged-tail": [
        "--image-opts",
        *c(
            "break pwritev_rmw_tail A",
            "aio_write -P 7 512 512",
            "wait_break A",
            "resume A",
            "aio_flush",
        ),
        ALIGN,
    ],
    "break-rmw-head-and-tail": [
        "--image-opts",
        *c(
            "break pwritev_rmw_tail A",
            "break pwritev_rmw_head B",
            "aio_write -P 7 512 4096",
            "wait_break B",
            "resume B",
            "wait_break A",
            "resume A",
            "aio_flush",
        ),
        ALIGN,
    ],
    "serialised-overlap": [
        "--image-opts",
        *c(
            "break pwritev_rmw_after_head A",
            "aio_write -P 10 0x200 0x200",
            "wait_break A",
            "aio_write -P 11 0x400 0x200",
            "sleep 100",
            "resume A",
            "aio_flush",
            "read -P 10 0x200 0x200",
            "read -P 11 0x400 0x200",
        ),
        ALIGN,
    ],
    "not-serialised-elsewhere": [
        "--image-opts",
        *c(
            "break pwritev_rmw_after_head A",
            "aio_write -P 10 0x200 0x200",
            "wait_break A",
            "aio_write -P 11 0x1200 0x200",
            "sleep 100",
            "resume A",
            "aio_flush",
        ),
        ALIGN,
    ],
    # A read overlapping a read-modify-write in progress waits for it (it sees the new data).
    "read-waits-for-rmw": [
        "--image-opts",
        *c(
            "break pwritev_rmw_after_tail A",
            "aio_write -q -P 10 0 0x200",
            "wait_break A",
            "aio_read -q -P 10 0 0x200",
            "sleep 50",
            "resume A",
            "aio_flush",
            "read -q -P 10 0 0x200",
        ),
        ALIGN,
    ],
    "break-pwritev-done": [
        "--image-opts",
        *c(
            "break pwritev_done A",
            "aio_write -q -P 10 0 4k",
            "wait_break A",
            "aio_read -q -P 10 0 4k",
            "sleep 20",
            "resume A",
            "aio_flush",
        ),
        ALIGN,
    ],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_blkdebug_matches_qemu_io(tmp_path: Path, name: str) -> None:
    oracle, candidate = run_both(tmp_path, setup, CASES[name])
    assert_same(oracle, candidate)


def test_synchronous_request_at_a_breakpoint_does_not_hang(tmp_path: Path) -> None:
    """qemu-io waits forever; qio says why and goes on (documented difference)."""
    from tests.qemu_oracle import qio_run

    setup(tmp_path)
    result = qio_run(
        [
            "-f",
            "raw",
            "-c",
            "break read_aio A",
            "-c",
            "read 0 512",
            "-c",
            "read -q 0 512",
            "blkdebug::r.img",
        ],
        tmp_path,
        timeout=10,
    )
    assert result.stdout == "blkdebug: Suspended request 'A'\n"
    assert "suspended at a breakpoint" in result.stderr
    assert result.status == 1


QCOW2 = importlib.util.find_spec("qio.block.qcow2") is not None


def qcow2_setup(directory: Path) -> None:
    setup(directory)
    qemu_img(directory, "create", "-q", "-f", "qcow2", "bd.qcow2", "1M")
    qemu_io(directory, "-c", "write -q -P 0x11 0 128k", "bd.qcow2")
    (directory / "l2.conf").write_text('[inject-error]\nevent = "l2_load"\n')
    qemu_img(directory, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "e.qcow2", "1M")
    (directory / "errors.conf").write_text(
        '[inject-error]\nevent = "l2_load"\nerrno = "12"\nstate = "1"\n\n'
        '[set-state]\nevent = "l2_update"\nnew_state = "2"\n\n'
        '[inject-error]\nevent = "refblock_alloc"\nerrno = "28"\nonce = "on"\n\n'
        '[inject-error]\nevent = "flush_to_disk"\nerrno = "5"\niotype = "flush"\n'
    )


QCOW2_CASES: dict[str, list[str]] = {
    "qcow2-read-aio": [
        *c("read 0 4k", "read -q 128k 4k", "write -q 0 4k"),
        "blkdebug:read.conf:bd.qcow2",
    ],
    "qcow2-l2": [*c("read 0 4k", "read 64k 4k"), "blkdebug:l2.conf:bd.qcow2"],
    "qcow2-break": [
        *c("break read_aio A", "aio_read 0 4k", "wait_break A", "resume A", "aio_flush"),
        "blkdebug::bd.qcow2",
    ],
    # A failed L2 allocation frees its cluster; a failed dependency flush keeps the
    # dependency, so the L2 table written later never reaches the disk (image byte-identical).
    "qcow2-alloc-errors": [
        *c(
            "read 0 4k",
            "write -P 1 0 4k",
            "write -P 2 64k 4k",
            "flush",
            "read -P 1 0 4k",
            "write -P 3 128k 4k",
        ),
        "blkdebug:errors.conf:e.qcow2",
    ],
    "qcow2-image-opts": [
        *c(
            "open -o driver=qcow2,file.driver=blkdebug,file.inject-error.event=l2_load,file.image.filename=bd.qcow2",
            "read 0 512",
        ),
    ],
}


@pytest.mark.skipif(not QCOW2, reason="qio.block.qcow2 is not importable yet")
@pytest.mark.parametrize("name", sorted(QCOW2_CASES))
def test_blkdebug_qcow2_matches_qemu_io(tmp_path: Path, name: str) -> None:
    oracle, candidate = run_both(tmp_path, qcow2_setup, QCOW2_CASES[name])
    assert_same(oracle, candidate)

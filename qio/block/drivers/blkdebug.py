"""The ``blkdebug`` filter: error injection, a state machine and breakpoints.

Format drivers announce internal *events* to the node below them (``read_aio``, ``l2_load``,
``cluster_alloc``, ...; the generic layer adds ``pwritev``, ``flush_to_disk``, ...).  When an
event reaches a blkdebug node its rules for that event are examined against the current state
(a number, 1 at open):

* matching ``inject-error`` rules become the *active* rules (the first of them replaces the
  previously active set); from then on every request of a matching type through this node
  whose range covers the rule's sector (or any request, without a sector) fails with the rule's
  errno, until the set is replaced, or once when the rule says ``once``;
* ``set-state`` rules change the state once all rules of the event were examined;
* a breakpoint (``break EVENT TAG``) suspends the request that raised the event until
  ``resume TAG`` (one shot).

Event ``none`` is raised once at open, which makes its rules active from the start.  Without
``immediately`` a failing request first gives way to the event loop (QEMU reschedules the
coroutine), which decides when an asynchronous request's failure is reported.

Rules, their options and their error messages: qio/block/drivers/blkdebug_config.py.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from qio.block.coroutine import Future, scheduler
from qio.block.drivers.blkdebug_config import (
    EVENTS,
    Rule,
    SectionList,
    build_rules,
    parse_config_file,
    parse_inline,
)
from qio.block.node import BlockNode, BlockStatus, ReqFlags
from qio.block.open import open_child
from qio.block.options import Options, qdict_order, to_size
from qio.block.payload import WriteData
from qio.errors import BlockError, OpenError

INT_MAX = (1 << 31) - 1
LIMIT_OPTIONS = (
    "align",
    "max-transfer",
    "opt-write-zero",
    "max-write-zero",
    "opt-discard",
    "max-discard",
)
PERMISSIONS = ("consistent-read", "write", "write-unchanged", "resize", "graph-mod")


class _Parked:
    """A request suspended at one event, possibly by several breakpoints at once."""

    __slots__ = ("future", "wakes")

    def __init__(self) -> None:
        self.future: Future | None = None
        self.wakes = 0

    def wake(self) -> None:
        if self.future is not None and not self.future.done:
            self.future.set_result()
        else:
            self.wakes += 1


@dataclass(eq=False)
class _Suspended:
    tag: str
    parked: _Parked


class BlkdebugNode(BlockNode):
    format_name = "blkdebug"
    protocol_name = "blkdebug"
    is_filter = True
    has_debug_events = True

    @classmethod
    def parse_filename(cls, filename: str, options: Options) -> None:
        prefix = "blkdebug:"
        if not filename.startswith(prefix):
            # Without the prefix the filename names the image; the rest are options.
            options.set("x-image", filename)
            return
        config, colon, image = filename[len(prefix) :].partition(":")
        if not colon:
            raise OpenError("blkdebug requires both config file and image path")
        if config:
            options.set("config", config)
        options.set("x-image", image)

    async def open(self, options: Options) -> None:
        self.state = 1
        self.rules: dict[str, list[Rule]] = {}  # per event, the newest rule first
        self.active_rules: list[Rule] = []
        self.suspended: list[_Suspended] = []  # the newest first
        self.config_file: str | None = None
        limits = self._absorb_runtime_options(options)
        sections = SectionList()
        if self.config_file is not None:
            parse_config_file(self.config_file, sections)
        parse_inline(options, sections)
        for rule in build_rules(sections):
            self.rules.setdefault(rule.event, []).insert(0, rule)
        for prefix in ("take-child-perms", "unshare-child-perms"):
            _check_permissions(options.extract(prefix))
        image = await open_child(self.context, self.image_name, options, "image", self.flags)
        assert image is not None
        self.attach("file", image)
        # QEMU names the node after its config and image (options beyond those make QEMU
        # fall back to a json: name, which qio does not build).
        self.filename = f"blkdebug:{self.config_file or ''}:{image.filename}"
        self.supports_fua = image.supports_fua
        self._apply_limits(limits, image)
        await self.on_debug_event("none")

    def _absorb_runtime_options(self, options: Options) -> dict[str, int]:
        """blkdebug's own options, checked in QEMU's order (sizes must parse)."""
        limits: dict[str, int] = {}
        known = ("config", "x-image", *LIMIT_OPTIONS)
        self.image_name: str | None = None
        for key in qdict_order([k for k in options if k in known]):
            value = options.pop(key)
            if key == "config":
                self.config_file = None if value is None else str(value)
            elif key == "x-image":
                self.image_name = None if value is None else str(value)
            else:
                limits[key] = to_size(key, value)
        return limits

    def _apply_limits(self, limits: dict[str, int], image: BlockNode) -> None:
        """The I/O limit overrides, validated as QEMU validates them."""
        align_opt = limits.get("align", 0)
        if align_opt and (align_opt >= INT_MAX or align_opt & (align_opt - 1)):
            raise OpenError(f"Cannot meet constraints with align {align_opt}")
        align = max(align_opt, image.request_alignment)
        checks = (
            ("max-transfer", align),
            ("opt-write-zero", align),
            ("max-write-zero", max(limits.get("opt-write-zero", 0), align)),
            ("opt-discard", align),
            ("max-discard", max(limits.get("opt-discard", 0), align)),
        )
        for key, multiple in checks:
            value = limits.get(key, 0)
            if value and (value >= INT_MAX or value % multiple):
                raise OpenError(f"Cannot meet constraints with {key} {value}")
        if align_opt:
            self.request_alignment = align_opt
        self.max_transfer = limits.get("max-transfer") or image.max_transfer
        self.pwrite_zeroes_alignment = limits.get("opt-write-zero") or 1
        self.max_pwrite_zeroes = limits.get("max-write-zero", 0)
        self.pdiscard_alignment = limits.get("opt-discard") or image.pdiscard_alignment
        self.max_pdiscard = limits.get("max-discard", 0)
        for key, value in limits.items():
            self.options[key] = value

    def drv_getlength(self) -> int:
        assert self.file is not None
        return self.file.getlength()

    # -- requests ---------------------------------------------------------------------------
    async def _rule_check(self, offset: int, length: int, iotype: str) -> bool:
        """Fail the request if an active rule says so; False: the request does nothing."""
        for rule in self.active_rules:
            covers = rule.offset == -1 or (length > 0 and offset <= rule.offset < offset + length)
            if covers and iotype in rule.iotypes:
                break
        else:
            return True
        if not rule.errno:
            return True
        if rule.once:
            self.active_rules.remove(rule)
            self._remove_rule(rule)
        if not rule.immediately:
            await scheduler.reschedule()
        if rule.errno < 0:
            # QEMU returns the positive number, which its callers take for success: the
            # request reports success without having been done.
            return False
        raise BlockError(rule.errno)

    async def drv_preadv(self, offset: int, buf: memoryview, flags: ReqFlags) -> None:
        assert self.file is not None
        if await self._rule_check(offset, len(buf), "read"):
            await self.file.preadv(offset, buf, flags)

    async def drv_pwritev(self, offset: int, data: WriteData, flags: ReqFlags) -> None:
        assert self.file is not None
        if await self._rule_check(offset, len(data), "write"):
            await self.file.pwritev(offset, data, flags)

    async def drv_pwrite_zeroes(self, offset: int, length: int, flags: ReqFlags) -> None:
        assert self.file is not None
        if length < max(self.request_alignment, self.pwrite_zeroes_alignment):
            # Small pieces take the generic layer's fallback (what blkdebug is there to test).
            raise BlockError(errno.ENOTSUP)
        if await self._rule_check(offset, length, "write-zeroes"):
            await self.file.pwrite_zeroes(offset, length, flags)

    async def drv_pdiscard(self, offset: int, length: int) -> None:
        assert self.file is not None
        if length < self.request_alignment:
            raise BlockError(errno.ENOTSUP)
        if await self._rule_check(offset, length, "discard"):
            await self.file.pdiscard(offset, length)

    async def drv_flush_to_disk(self) -> None:
        assert self.file is not None
        if await self._rule_check(0, 0, "flush"):
            await self.file.flush()

    async def drv_block_status(
        self, offset: int, length: int, want_zero: bool
    ) -> BlockStatus | None:
        await self._rule_check(offset, length, "block-status")
        return BlockStatus(length, offset=offset, node=self.file, raw=True)

    # -- events and breakpoints ---------------------------------------------------------------
    async def on_debug_event(self, event: str) -> None:
        new_state = self.state
        injected = False
        parked: _Parked | None = None
        suspends = 0
        for rule in list(self.rules.get(event, ())):
            if rule.state and rule.state != self.state:
                continue
            if rule.action == "inject-error":
                if not injected:
                    self.active_rules = []
                    injected = True
                self.active_rules.insert(0, rule)
            elif rule.action == "set-state":
                new_state = rule.new_state
            else:
                parked = parked or _Parked()
                suspends += 1
                self._remove_rule(rule)
                self.suspended.insert(0, _Suspended(rule.tag, parked))
                self.context.out(f"blkdebug: Suspended request '{rule.tag}'\n")
        self.state = new_state
        if parked is None:
            return
        try:
            for _ in range(suspends):
                if parked.wakes:
                    parked.wakes -= 1
                    continue
                parked.future = Future()
                await parked.future
                parked.future = None
        finally:
            # A request abandoned while suspended (a synchronous one nothing can resume).
            self.suspended = [s for s in self.suspended if s.parked is not parked]

    def _remove_rule(self, rule: Rule) -> None:
        rules = self.rules.get(rule.event, [])
        if rule in rules:
            rules.remove(rule)

    def set_breakpoint(self, event: str, tag: str) -> int:
        if event not in EVENTS:
            return -errno.ENOENT
        self.rules.setdefault(event, []).insert(0, Rule("suspend", event, tag=tag))
        return 0

    def remove_breakpoint(self, tag: str) -> int:
        ret = -errno.ENOENT
        for rules in self.rules.values():
            for rule in [r for r in rules if r.action == "suspend" and r.tag == tag]:
                rules.remove(rule)
                ret = 0
        # Requests already suspended are resumed, yet (as in QEMU 7.2) that alone does not
        # count as having removed a breakpoint.
        while self._resume_one(tag):
            pass
        return ret

    def resume(self, tag: str) -> int:
        return 0 if self._resume_one(tag) else -errno.ENOENT

    def _resume_one(self, tag: str) -> bool:
        for entry in self.suspended:
            if entry.tag == tag:
                self.context.out(f"blkdebug: Resuming request '{tag}'\n")
                self.suspended.remove(entry)
                entry.parked.wake()
                # QEMU enters the coroutine right away: it runs until it waits again.
                scheduler.run_ready()
                return True
        return False

    def is_suspended(self, tag: str) -> bool:
        return any(entry.tag == tag for entry in self.suspended)


def _check_permissions(perms: Options) -> None:
    """take-child-perms / unshare-child-perms: lists of permission names (accepted, and
    without effect here: qio does not model permissions)."""
    for key in qdict_order(list(perms)):
        value = perms.get(key)
        if not key.isdigit() or str(value) not in PERMISSIONS:
            raise OpenError(f"Parameter 'null' does not accept value '{value}'")

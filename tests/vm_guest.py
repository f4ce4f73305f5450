"""A tiny Linux guest for the seed scenario, built from Debian packages only.

The guest is a Debian kernel (``linux-image-cloud-amd64``, else ``linux-image-amd64``, else the
host's ``/boot/vmlinuz-*``) and an initramfs holding ``busybox-static``, the virtio block
modules the kernel needs, and ``/init`` (``INIT`` below).  The packages are fetched with
``apt-get download`` and unpacked with ``dpkg-deb -x`` into a cache directory, once; nothing
else is downloaded.  ``/init`` reads ``qio.mode=`` from the kernel command line:

* ``write``: make an ext2 filesystem on ``/dev/vda``, write files (random data, text, a
  marker file whose first line the host can find on the disk), record their md5 sums, sync,
  unmount, drop the caches, mount read-only and check every file against the sums;
* ``verify``: mount read-only and check every file against the sums written before;
* ``probe``: nothing (the test boots it once to see whether KVM works here).

It prints ``QIO-VM-...`` markers on the serial console and powers off, whatever happened (a
kernel panic reboots, which ``-no-reboot`` turns into an exit).

``python -m tests.vm_guest DIR`` builds the guest into DIR and prints the kernel and initramfs
paths (docs/vm-scenario.md uses it).
"""

from __future__ import annotations

import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# What the guest writes: the first line of the marker file, which the host looks for on the
# disk to find a sector that belongs to a file.
MARKER = b"qio seed marker line 1\n"

# Modules for a virtio disk, in the order they must be loaded when they are not built in
# (dependencies are also read from each module, so the order here is only the starting one).
DISK_MODULES = ("virtio_blk", "virtio_pci")

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /mnt
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
say() { echo "QIO-VM-$*"; }
finish() { umount /mnt 2>/dev/null; sync; say "DONE"; poweroff -f; }
fail() { say "FAILED: $*"; finish; }
for m in $(cat /modules.order); do insmod "/lib/modules/$m.ko" || say "insmod $m failed"; done
mode=$(sed -n 's/.*qio\.mode=\([a-z]*\).*/\1/p' /proc/cmdline)
say "BOOTED mode=$mode"
[ "$mode" = probe ] && finish
i=0
while [ ! -b /dev/vda ]; do
  i=$((i + 1)); [ $i -gt 200 ] && fail "no /dev/vda"; sleep 0.1
done
check() {
  mount -t ext2 -o ro /dev/vda /mnt || fail "mount"
  if (cd /mnt && md5sum -c MD5SUMS); then say "VERIFIED"; else say "CHECK-FAILED"; fi
}
case "$mode" in
write)
  mke2fs -q /dev/vda >/dev/null || fail "mke2fs"
  mount -t ext2 /dev/vda /mnt || fail "mount"
  dd if=/dev/urandom of=/mnt/random.bin bs=64k count=16 2>/dev/null || fail "dd"
  seq 1 3000 | sed 's/^/qio seed marker line /' > /mnt/marker.txt
  mkdir /mnt/etc && cp /init /proc/cmdline /mnt/etc/ || fail "cp"
  (cd /mnt && md5sum random.bin marker.txt etc/init etc/cmdline > MD5SUMS) || fail "md5sum"
  sync; umount /mnt || fail "umount"
  echo 3 > /proc/sys/vm/drop_caches
  say "WRITTEN"
  check ;;
verify) check ;;
*) fail "unknown mode '$mode'" ;;
esac
finish
"""


class GuestUnavailable(Exception):
    """Why the guest cannot be built here (the test skips with this reason)."""


@dataclass(frozen=True)
class Guest:
    kernel: Path
    initramfs: Path
    origin: str  # which packages (or host files) it was built from


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)


def _apt_download(package: str, cache: Path) -> Path:
    """``apt-get download PACKAGE`` into the cache (once); the .deb file."""
    found = sorted(cache.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    if shutil.which("apt-get") is None:
        raise GuestUnavailable("apt-get is not available to download Debian packages")
    r = _run(["apt-get", "download", package], cache)
    found = sorted(cache.glob(f"{package}_*.deb"))
    if r.returncode != 0 or not found:
        raise GuestUnavailable(f"apt-get download {package} failed: {r.stderr.strip()[-300:]}")
    return found[-1]


def _unpack(deb: Path, cache: Path) -> Path:
    target = cache / deb.name.removesuffix(".deb")
    if not (target / ".done").exists():
        if shutil.which("dpkg-deb") is None:
            raise GuestUnavailable("dpkg-deb is not available to unpack Debian packages")
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        r = _run(["dpkg-deb", "-x", str(deb), str(target)], cache)
        if r.returncode != 0:
            raise GuestUnavailable(f"dpkg-deb -x {deb.name} failed: {r.stderr.strip()}")
        (target / ".done").touch()
    return target


def _kernel_package() -> str | None:
    """The versioned image package a Debian kernel meta-package points at."""
    if shutil.which("apt-cache") is None:
        return None
    for meta in ("linux-image-cloud-amd64", "linux-image-amd64"):
        r = subprocess.run(
            ["apt-cache", "depends", meta], capture_output=True, text=True, timeout=60
        )
        m = re.search(r"Depends: (linux-image-\S+)", r.stdout)
        if r.returncode == 0 and m:
            return m.group(1)
    return None


def _kernel_tree(cache: Path) -> tuple[Path, Path, str]:
    """(vmlinuz, modules directory, origin): a Debian kernel package, else the host's."""
    package = _kernel_package()
    problem = "no Debian kernel package is known to apt (apt-get update?)"
    if package is not None:
        try:
            tree = _unpack(_apt_download(package, cache), cache)
            kernels = sorted((tree / "boot").glob("vmlinuz-*"))
            if kernels:
                version = kernels[-1].name.removeprefix("vmlinuz-")
                return kernels[-1], tree / "lib" / "modules" / version, package
            problem = f"{package} holds no /boot/vmlinuz-*"
        except GuestUnavailable as exc:
            problem = str(exc)
    for kernel in sorted(Path("/boot").glob("vmlinuz-*")):
        version = kernel.name.removeprefix("vmlinuz-")
        modules = Path("/lib/modules") / version
        if os.access(kernel, os.R_OK) and modules.is_dir():
            return kernel, modules, f"host kernel {version}"
    raise GuestUnavailable(f"no kernel: {problem}, and no readable /boot/vmlinuz-* on the host")


def _module_file(modules: Path, name: str) -> Path | None:
    for suffix in (".ko", ".ko.xz"):
        found = list((modules / "kernel").rglob(name + suffix))
        if not found:
            found = list((modules / "kernel").rglob(name.replace("_", "-") + suffix))
        if found:
            return found[0]
    if list((modules / "kernel").rglob(name + ".ko.*")):
        raise GuestUnavailable(f"module {name} is compressed in a form busybox cannot load")
    return None


def _built_in(modules: Path, name: str) -> bool:
    builtin = modules / "modules.builtin"
    if not builtin.exists():
        return False
    names = {Path(line.strip()).name.split(".")[0].replace("-", "_") for line in builtin.open()}
    return name in names


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data


def _modules_in_order(modules: Path) -> list[tuple[str, bytes]]:
    """The disk modules and what they depend on, dependencies first ([] when built in)."""
    ordered: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def add(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        path = _module_file(modules, name)
        if path is None:
            if _built_in(modules, name) or not (modules / "kernel").is_dir():
                return
            raise GuestUnavailable(f"kernel module {name} not found under {modules}")
        data = _module_bytes(path)
        m = re.search(rb"depends=([\w,-]*)\x00", data)
        for dep in m.group(1).decode().split(",") if m else []:
            if dep:
                add(dep.replace("-", "_"))
        ordered.append((name, data))

    for name in DISK_MODULES:
        add(name)
    return ordered


def _cpio_entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> bytes:
    """One entry of a "newc" cpio archive (what the kernel unpacks as an initramfs)."""
    encoded = name.encode() + b"\x00"
    fields = [0, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0]
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out = header + encoded
    out += b"\x00" * (-len(out) % 4)
    out += data + b"\x00" * (-len(data) % 4)
    return out


def _initramfs(busybox: bytes, modules: list[tuple[str, bytes]]) -> bytes:
    entries = [
        _cpio_entry("bin", stat.S_IFDIR | 0o755),
        _cpio_entry("dev", stat.S_IFDIR | 0o755),
        _cpio_entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        _cpio_entry("lib", stat.S_IFDIR | 0o755),
        _cpio_entry("lib/modules", stat.S_IFDIR | 0o755),
        _cpio_entry("bin/busybox", stat.S_IFREG | 0o755, busybox),
        _cpio_entry("init", stat.S_IFREG | 0o755, INIT.encode()),
        _cpio_entry(
            "modules.order",
            stat.S_IFREG | 0o644,
            "".join(f"{name}\n" for name, _ in modules).encode(),
        ),
    ]
    entries += [
        _cpio_entry(f"lib/modules/{name}.ko", stat.S_IFREG | 0o644, data) for name, data in modules
    ]
    entries.append(_cpio_entry("TRAILER!!!", 0))
    archive = b"".join(entries)
    return archive + b"\x00" * (-len(archive) % 512)


def build_guest(cache: Path) -> Guest:
    """Kernel and initramfs in ``cache`` (downloaded and built the first time)."""
    cache.mkdir(parents=True, exist_ok=True)
    kernel, modules, origin = _kernel_tree(cache)
    busybox_tree = _unpack(_apt_download("busybox-static", cache), cache)
    busybox = busybox_tree / "bin" / "busybox"
    if not busybox.exists():
        raise GuestUnavailable("busybox-static holds no /bin/busybox")
    r = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, timeout=30)
    missing = {"mke2fs", "md5sum", "insmod", "poweroff", "mount", "seq"} - set(r.stdout.split())
    if missing:
        raise GuestUnavailable(f"busybox-static lacks {', '.join(sorted(missing))}")
    initramfs = cache / "initramfs.cpio"
    initramfs.write_bytes(_initramfs(busybox.read_bytes(), _modules_in_order(modules)))
    return Guest(kernel, initramfs, f"{origin} + busybox-static")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.vm_guest CACHE_DIR")
    try:
        guest = build_guest(Path(sys.argv[1]).resolve())
    except GuestUnavailable as exc:
        sys.exit(f"cannot build the guest: {exc}")
    print(f"kernel:    {guest.kernel}\ninitramfs: {guest.initramfs}\nfrom:      {guest.origin}")

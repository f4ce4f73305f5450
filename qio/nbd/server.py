"""``qio-nbd``: serve any qio block graph over NBD (qemu-nbd's command line where it applies).

    qio-nbd [-f FMT | --image-opts] [-r] [-x NAME] [-D TEXT] [-p PORT] [-b ADDR | -k PATH]
            [-e NUM] [-t] [--cache MODE] [--discard MODE] [--pid-file PATH]
            [--mismatch-log FILE] [--on-mismatch raw|error] FILE

One process, one export, one thread: a ``selectors`` loop accepts clients, feeds their bytes
to ``Connection`` state machines and sends what they produce.  Each command runs to completion
on the block stack before the next one, whichever client sent it.  SIGTERM, SIGINT and SIGHUP
stop the loop; the graph is then drained, flushed and closed before the process exits 0.
Without ``-t`` the server exits when its last client has gone, as qemu-nbd does.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from qio import __version__
from qio.block.node import OpenFlags
from qio.block.open import CACHE_MODES, DISCARD_MODES, Notice, OpenContext
from qio.block.options import Options, parse_option_string
from qio.errors import OpenError
from qio.getopt import Getopt, GetoptError, LongOption
from qio.nbd import protocol as p
from qio.nbd.connection import Connection, ServerContext, State
from qio.nbd.export import Export
from qio.nbd.mismatch import ACTIONS, MismatchRecorder, RequestContext

PROGRAM = "qio-nbd"
HANDSHAKE_LIMIT = 10.0  # seconds a client may take to reach transmission
RECV_SIZE = 1 << 20
OUTPUT_LIMIT = 64 << 20  # stop reading from a client whose replies pile up beyond this
INPUT_LIMIT = p.MAX_BUFFER_SIZE + (1 << 20)

SHORT_OPTS = "hVp:b:k:e:tx:D:f:rnvsc:dl:o:"
LONG_OPTS = (
    LongOption("help", False, "h"),
    LongOption("version", False, "V"),
    LongOption("port", True, "p"),
    LongOption("bind", True, "b"),
    LongOption("socket", True, "k"),
    LongOption("shared", True, "e"),
    LongOption("persistent", False, "t"),
    LongOption("export-name", True, "x"),
    LongOption("description", True, "D"),
    LongOption("format", True, "f"),
    LongOption("read-only", False, "r"),
    LongOption("nocache", False, "n"),
    LongOption("verbose", False, "v"),
    LongOption("snapshot", False, "s"),
    LongOption("connect", True, "c"),
    LongOption("disconnect", False, "d"),
    LongOption("load-snapshot", True, "l"),
    LongOption("offset", True, "o"),
    LongOption("cache", True, "cache"),
    LongOption("aio", True, "aio"),
    LongOption("discard", True, "discard"),
    LongOption("detect-zeroes", True, "detect-zeroes"),
    LongOption("image-opts", False, "image-opts"),
    LongOption("pid-file", True, "pid-file"),
    LongOption("object", True, "object"),
    LongOption("fork", False, "fork"),
    LongOption("mismatch-log", True, "mismatch-log"),
    LongOption("on-mismatch", True, "on-mismatch"),
)

USAGE = f"""Usage: {PROGRAM} [OPTIONS] FILE
Serve a qio block graph (any image qio opens) over NBD.

  -h, --help                display this help and exit
  -V, --version             output version information and exit

Connection properties:
  -p, --port=PORT           port to listen on (default `10809')
  -b, --bind=IFACE          interface to bind to (default `127.0.0.1')
  -k, --socket=PATH         path to the unix socket (absolute)
  -e, --shared=NUM          device can be shared by NUM clients (default '1')
  -t, --persistent          don't exit on the last connection
  -v, --verbose             log connections and protocol errors on stderr
  -x, --export-name=NAME    expose export by name (default is empty string)
  -D, --description=TEXT    export a human-readable description
      --pid-file=PATH       store the server's process ID in the given file

Block device options:
  -f, --format=FORMAT       set image format (raw, qcow2, ...)
  -r, --read-only           export read-only
  -n, --nocache             disable host cache
      --cache=MODE          set cache mode used to access the disk image, the
                            valid options are: 'none', 'writeback' (default),
                            'writethrough', 'directsync' and 'unsafe'
      --aio=MODE            set AIO mode (native, io_uring or threads)
      --discard=MODE        set discard mode (ignore, unmap)
      --detect-zeroes=MODE  set detect-zeroes mode (off, on, unmap)
      --image-opts          treat FILE as a full set of image options

blkverify exports:
      --mismatch-log=FILE   append one JSON record per mismatch to FILE
                            (read it back with qio's 'mismatches' command)
      --on-mismatch=ACTION  what the client gets for a mismatching read:
                            'raw' (the trusted copy's data, default) or 'error'

qio-nbd is part of qio, a Python re-implementation of QEMU's qemu-io; see docs/nbd.md.
"""


class UsageError(Exception):
    pass


@dataclass
class Settings:
    filename: str = ""
    fmt: str | None = None
    image_opts: bool = False
    read_only: bool = False
    port: str = str(p.DEFAULT_PORT)
    bind: str = "127.0.0.1"
    socket_path: str | None = None
    shared: int = 1
    persistent: bool = False
    export_name: str = ""
    description: str = ""
    cache: str = "writeback"
    aio: str = "threads"
    discard: str = "ignore"
    detect_zeroes: str = "off"
    pid_file: str | None = None
    verbose: bool = False
    mismatch_log: str | None = None
    on_mismatch: str = "raw"


def parse_args(argv: list[str]) -> Settings | int:
    """The settings, or an exit status after printing help, version or an error."""
    s = Settings()
    getopt = Getopt([PROGRAM, *argv], SHORT_OPTS, LONG_OPTS)
    for item in getopt:
        if isinstance(item, GetoptError):
            _err(item.message)
            _err(f"Try `{PROGRAM} --help' for more information.")
            return 1
        opt, arg = item
        value = arg or ""
        if opt == "h":
            sys.stdout.write(USAGE)
            return 0
        if opt == "V":
            sys.stdout.write(f"{PROGRAM} {__version__} (qio, modelled on qemu-nbd 7.2)\n")
            return 0
        if opt == "p":
            s.port = value
        elif opt == "b":
            s.bind = value
        elif opt == "k":
            if not value.startswith("/"):
                raise UsageError("socket path must be absolute")
            s.socket_path = value
        elif opt == "e":
            if not value.isdigit() or not 1 <= int(value) <= 1 << 30:
                raise UsageError(f"Invalid shared device number '{value}'")
            s.shared = int(value)
        elif opt == "t":
            s.persistent = True
        elif opt == "x":
            if len(value.encode()) > p.MAX_STRING_SIZE:
                raise UsageError(f"export name '{value}' too long")
            s.export_name = value
        elif opt == "D":
            if len(value.encode()) > p.MAX_STRING_SIZE:
                raise UsageError(f"description '{value}' too long")
            s.description = value
        elif opt == "f":
            s.fmt = value
        elif opt == "r":
            s.read_only = True
        elif opt == "n":
            s.cache = "none"
        elif opt == "v":
            s.verbose = True
        elif opt == "cache":
            if value not in CACHE_MODES:
                raise UsageError(f"Invalid cache mode `{value}'")
            s.cache = value
        elif opt == "aio":
            if value not in ("threads", "native", "io_uring"):
                raise UsageError(f"Invalid aio mode '{value}'")
            s.aio = value
        elif opt == "discard":
            if value not in DISCARD_MODES:
                raise UsageError(f"Invalid discard mode `{value}'")
            s.discard = value
        elif opt == "detect-zeroes":
            if value not in ("off", "on", "unmap"):
                raise UsageError(f"Invalid detect-zeroes mode `{value}'")
            s.detect_zeroes = value
        elif opt == "image-opts":
            s.image_opts = True
        elif opt == "pid-file":
            s.pid_file = value
        elif opt == "object":
            pass  # secrets only matter for encrypted formats, which qio refuses anyway
        elif opt == "mismatch-log":
            s.mismatch_log = value
        elif opt == "on-mismatch":
            if value not in ACTIONS:
                raise UsageError(f"Invalid mismatch action `{value}' (use 'raw' or 'error')")
            s.on_mismatch = value
        else:
            names = {
                "s": "-s/--snapshot",
                "c": "-c/--connect",
                "d": "-d/--disconnect",
                "l": "-l/--load-snapshot",
                "o": "-o/--offset",
                "fork": "--fork",
            }
            raise UsageError(f"{names.get(opt, opt)} is not supported by {PROGRAM}")
    if len(getopt.operands) != 1:
        _err("Invalid number of arguments")
        sys.stderr.write(f"Try `{PROGRAM} --help' for more information.\n")
        return 1
    if s.image_opts and s.fmt is not None:
        raise UsageError("--image-opts and --format are mutually exclusive")
    s.filename = getopt.operands[0]
    return s


def _err(text: str) -> None:
    sys.stderr.write(f"{PROGRAM}: {text}\n")
    sys.stderr.flush()


def open_export(s: Settings, recorder: MismatchRecorder) -> Export:
    """Open the graph as qemu-nbd would: writeback cache, discard=ignore unless told."""
    from qio.session import OpenRequest, open_backend

    def notify(notice: Notice) -> None:
        stream = sys.stderr if notice.stream == "err" else sys.stdout
        stream.write(notice.text)
        stream.flush()

    ctx = OpenContext(notify, PROGRAM)
    ctx.mismatch_handler = recorder.handle
    flags = OpenFlags()
    flags.read_write = not s.read_only
    flags.direct, flags.no_flush, writethrough = CACHE_MODES[s.cache]
    flags.unmap = DISCARD_MODES[s.discard]
    flags.aio = s.aio
    if s.image_opts:
        warnings: list[str] = []
        options = parse_option_string(s.filename, warnings)
        for w in warnings:
            _err(f"warning: {w}")
        name = None
    else:
        options = Options()
        if s.fmt is not None:
            options.set("driver", s.fmt)
        name = s.filename
    if s.detect_zeroes != "off":
        options.setdefault("detect-zeroes", s.detect_zeroes)
    blk = open_backend(ctx, OpenRequest(name, options, flags, writethrough))
    return Export(
        s.export_name,
        blk,
        description=s.description,
        read_only=s.read_only,
        multi_conn=s.shared > 1,
        recorder=recorder,
    )


def listen(s: Settings) -> socket.socket:
    if s.socket_path is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if os.path.exists(s.socket_path):
                os.unlink(s.socket_path)
            sock.bind(s.socket_path)
        except OSError as exc:
            sock.close()
            raise UsageError(
                f"Failed to bind socket to {s.socket_path}: {os.strerror(exc.errno or errno.EIO)}"
            ) from None
        sock.listen(16)
        return sock
    try:
        infos = socket.getaddrinfo(s.bind, s.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(
            f"address resolution failed for {s.bind}:{s.port}: {exc.strerror}"
        ) from None
    last: OSError | None = None
    for family, kind, proto, _, addr in infos:
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        sock.listen(16)
        return sock
    detail = os.strerror(last.errno or errno.EIO) if last else "no address"
    raise UsageError(f"Failed to find an available port: {detail}")


@dataclass
class Client:
    sock: socket.socket
    conn: Connection
    accepted: float
    pending: memoryview = field(default_factory=lambda: memoryview(b""))


class Server:
    def __init__(
        self, listener: socket.socket, export: Export, settings: Settings, log: bool
    ) -> None:
        self.listener = listener
        self.export = export
        self.settings = settings
        self.verbose = log
        self.clients: dict[int, Client] = {}
        self.selector = selectors.DefaultSelector()
        self.stopping = False
        self.served_any = False
        self.context = ServerContext(
            {export.name: export}, log=self.log, on_command=self._on_command
        )
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def log(self, text: str) -> None:
        if self.verbose:
            sys.stderr.write(f"{PROGRAM}: {text}\n")
            sys.stderr.flush()

    def _on_command(self, export: Export, peer: str, command: str, offset: int, n: int) -> None:
        export.recorder.current = RequestContext(export.name, peer, command, offset, n)

    # -- signals -------------------------------------------------------------------------
    def install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    # -- the loop ------------------------------------------------------------------------
    def serve(self) -> None:
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, "listen")
        self.selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        while not self.stopping:
            events = self.selector.select(timeout=1.0)
            for key, mask in events:
                if key.data == "listen":
                    self._accept()
                elif key.data == "wake":
                    try:
                        self._wake_r.recv(4096)
                    except OSError:
                        pass
                else:
                    self._service(key.fd, mask)
            self._expire_handshakes()
            self._update_listener()
            if not self.settings.persistent and self.served_any and not self.clients:
                break
        for fd in list(self.clients):
            self._close_client(fd)
        self.selector.close()
        self.listener.close()

    def _update_listener(self) -> None:
        want = len(self.clients) < self.settings.shared
        registered = self.listener.fileno() in self.selector.get_map()
        if want and not registered:
            self.selector.register(self.listener, selectors.EVENT_READ, "listen")
        elif not want and registered:
            self.selector.unregister(self.listener)

    def _accept(self) -> None:
        try:
            sock, addr = self.listener.accept()
        except OSError:
            return
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = f"{addr[0]}:{addr[1]}"
        else:
            peer = "unix"
        conn = Connection(self.context, peer)
        client = Client(sock, conn, time.monotonic())
        self.clients[sock.fileno()] = client
        self.served_any = True
        self.log(f"client {peer} connected")
        conn.greeting()
        self.selector.register(sock, selectors.EVENT_READ, "client")
        self._flush(client)

    def _service(self, fd: int, mask: int) -> None:
        client = self.clients.get(fd)
        if client is None:
            return
        if mask & selectors.EVENT_READ:
            try:
                data = client.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":
                self._close_client(fd)
                return
            if data:
                client.conn.feed(data)
        if fd in self.clients:
            self._flush(client)

    def _flush(self, client: Client) -> None:
        """Send what is pending, resume a paused connection, then set the interest mask."""
        fd = client.sock.fileno()
        while True:
            if not client.pending and client.conn.output_size:
                client.pending = memoryview(client.conn.take_output())
            if client.pending:
                try:
                    sent = client.sock.send(client.pending)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    self._close_client(fd)
                    return
                client.pending = client.pending[sent:]
                if client.pending:
                    break
                continue
            # Everything sent: a connection paused on its backlog may go on.
            if client.conn.input_size and client.conn.state is not State.CLOSED:
                before = client.conn.input_size
                client.conn.process(OUTPUT_LIMIT)
                if client.conn.output_size or client.conn.input_size != before:
                    continue
            break
        if client.conn.closing and not client.pending and not client.conn.output_size:
            self._close_client(fd)
            return
        events = 0
        backlog = len(client.pending) + client.conn.output_size
        if backlog < OUTPUT_LIMIT and client.conn.input_size < INPUT_LIMIT:
            if not client.conn.closing:
                events |= selectors.EVENT_READ
        if client.pending:
            events |= selectors.EVENT_WRITE
        if not events:
            events = selectors.EVENT_WRITE  # cannot happen without a backlog; keep registered
        self.selector.modify(client.sock, events, "client")

    def _expire_handshakes(self) -> None:
        now = time.monotonic()
        for fd, client in list(self.clients.items()):
            if (
                client.conn.state in (State.CLIENT_FLAGS, State.OPTIONS)
                and now - client.accepted > HANDSHAKE_LIMIT
            ):
                self.log(f"client {client.conn.peer}: handshake took too long")
                self._close_client(fd)

    def _close_client(self, fd: int) -> None:
        client = self.clients.pop(fd, None)
        if client is None:
            return
        try:
            self.selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.conn.close()
        try:
            client.sock.close()
        except OSError:
            pass
        self.log(f"client {client.conn.peer} disconnected")
        if client.conn.export is not None and not client.conn.export.read_only:
            # Whatever the client wrote is on its way to disk once it has gone.
            try:
                client.conn.export.flush()
            except Exception as exc:  # noqa: BLE001 - a failed flush must not end the server
                _err(f"flush after disconnect failed: {exc}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        parsed = parse_args(args)
    except UsageError as exc:
        _err(str(exc))
        return 1
    if isinstance(parsed, int):
        return parsed
    settings = parsed
    recorder = MismatchRecorder(action=settings.on_mismatch, log_path=settings.mismatch_log)
    try:
        export = open_export(settings, recorder)
    except OpenError as exc:
        _err(f"Failed to blk_new_open '{settings.filename}': {exc.message}")
        return 1
    except ImportError as exc:
        # A driver named in the registry whose module is not installed in this build.
        _err(f"Failed to blk_new_open '{settings.filename}': driver unavailable ({exc.name})")
        return 1
    try:
        listener = listen(settings)
    except UsageError as exc:
        _err(str(exc))
        export.close()
        return 1
    server = Server(listener, export, settings, settings.verbose)
    server.install_signals()
    status = 0
    try:
        if settings.pid_file is not None:
            try:
                with open(settings.pid_file, "w") as f:
                    f.write(f"{os.getpid()}\n")
            except OSError as exc:
                _err(f"Could not create '{settings.pid_file}': {exc.strerror}")
                return 1
        server.serve()
    finally:
        try:
            export.close()
        except Exception as exc:  # noqa: BLE001 - report, and still clean up
            _err(f"closing the image failed: {exc}")
            status = 1
        if settings.socket_path is not None:
            try:
                os.unlink(settings.socket_path)
            except OSError:
                pass
        if settings.pid_file is not None:
            try:
                os.unlink(settings.pid_file)
            except OSError:
                pass
    return status


if __name__ == "__main__":
    sys.exit(main())

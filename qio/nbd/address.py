"""NBD filenames and server addresses, parsed as QEMU 7.2 parses them.

Filenames (``bdrv_parse_filename`` of the nbd driver):

* URLs: ``nbd://HOST[:PORT][/EXPORT]``, ``nbd+tcp://...`` (the same) and
  ``nbd+unix:///EXPORT?socket=PATH``;
* legacy: ``nbd:HOST:PORT[:exportname=NAME]`` and ``nbd:unix:PATH[:exportname=NAME]``.

Both become options (``server.type``, ``server.host``, ``server.port``, ``server.path``,
``export``); ``socket_address`` then turns the ``server.*`` options into a ``SocketAddress``
with the messages of QEMU's QAPI visitor (``Parameter 'host' is missing`` ...).
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from qio.block.options import Options
from qio.errors import OpenError
from qio.nbd.client import SocketAddress
from qio.nbd.protocol import DEFAULT_PORT

EXPORTNAME_MARK = ":exportname="

# RFC 3986 character classes (what QEMU's URI parser accepts).
_UNRESERVED = r"A-Za-z0-9\-._~"
_SUB_DELIMS = r"!$&'()*+,;="
_PCT = r"%[0-9A-Fa-f]{2}"
_PCHAR = rf"(?:[{_UNRESERVED}{re.escape(_SUB_DELIMS)}:@]|{_PCT})"
_URI = re.compile(
    rf"""
    ^(?P<scheme>[A-Za-z][A-Za-z0-9+\-.]*)://
    (?:(?P<userinfo>(?:[{_UNRESERVED}{re.escape(_SUB_DELIMS)}:]|{_PCT})*)@)?
    (?P<host>\[[0-9A-Fa-f:.]+\]|(?:[{_UNRESERVED}{re.escape(_SUB_DELIMS)}]|{_PCT})*)
    (?::(?P<port>[0-9]+))?
    (?P<path>(?:/{_PCHAR}*)*)
    (?:\?(?P<query>(?:{_PCHAR}|[/?])*))?
    (?:\#(?P<fragment>(?:{_PCHAR}|[/?])*))?$
    """,
    re.VERBOSE,
)

_SERVER_KEYS = {
    "inet": ("host", "port", "numeric", "to", "ipv4", "ipv6", "keep-alive", "mptcp"),
    "unix": ("path", "abstract", "tight"),
    "vsock": ("cid", "port"),
    "fd": ("str",),
}
_REQUIRED = {"inet": ("host", "port"), "unix": ("path",), "vsock": ("cid", "port"), "fd": ("str",)}


def _decode(text: str) -> str:
    return unquote_to_bytes(text).decode("utf-8", errors="surrogateescape")


def parse_filename(filename: str, options: Options) -> None:
    """Fill ``options`` from an NBD filename, or raise QEMU's error."""
    for key in options:
        if key in ("host", "port", "path", "export") or key.startswith("server."):
            raise OpenError(f"Option '{key}' cannot be used with a file name")
    if "://" in filename:
        if not parse_uri(filename, options):
            raise OpenError("No valid URL specified")
        return
    rest = filename
    mark = rest.find(EXPORTNAME_MARK)
    if mark >= 0:
        export = rest[mark + len(EXPORTNAME_MARK) :]
        if not export:
            # QEMU stops parsing here, so the open fails for want of an address.
            return
        rest = rest[:mark]
        options.set("export", export)
    if not rest.startswith("nbd:"):
        raise OpenError("File name string for NBD must start with 'nbd:'")
    host_spec = rest[len("nbd:") :]
    if not host_spec:
        return
    if host_spec.startswith("unix:"):
        options.set("server.type", "unix")
        options.set("server.path", host_spec[len("unix:") :])
        return
    host, port = parse_inet(host_spec)
    options.set("server.type", "inet")
    options.set("server.host", host)
    options.set("server.port", port)


def parse_uri(filename: str, options: Options) -> bool:
    """``nbd[+tcp|+unix]://`` URLs; False when QEMU would say "No valid URL specified"."""
    m = _URI.match(filename)
    if m is None:
        return False
    scheme = m.group("scheme")
    if scheme not in ("nbd", "nbd+tcp", "nbd+unix"):
        return False
    is_unix = scheme == "nbd+unix"
    port_text = m.group("port")
    if port_text is not None and int(port_text) > 65535:
        return False
    path = m.group("path")
    if path.startswith("/"):
        path = path[1:]
    if path:
        options.set("export", _decode(path))
    params: list[tuple[str, str | None]] = []
    query = m.group("query")
    if query:
        for item in re.split(r"[&;]", query):
            if not item:
                continue
            name, eq, value = item.partition("=")
            params.append((_decode(name), _decode(value) if eq else None))
    if len(params) > 1 or (is_unix and not params) or (not is_unix and params):
        return False
    host = m.group("host")
    if host.startswith("["):
        host = host[1:-1]
    else:
        host = _decode(host)
    port = int(port_text) if port_text else 0
    if is_unix:
        name, value = params[0]
        if name != "socket" or host or port or value is None:
            return False
        options.set("server.type", "unix")
        options.set("server.path", value)
        return True
    if not host:
        return False
    options.set("server.type", "inet")
    options.set("server.host", host)
    options.set("server.port", str(port or DEFAULT_PORT))
    return True


def parse_inet(text: str) -> tuple[str, str]:
    """QEMU's inet_parse: ``HOST:PORT``, ``[IPV6]:PORT`` or ``:PORT`` (``,opts`` ignored)."""
    if text.startswith(":"):
        m = re.match(r":([^,]{1,32})", text)
        if m is None:
            raise OpenError(f"error parsing port in address '{text}'")
        return "", m.group(1)
    if text.startswith("["):
        m = re.match(r"\[([^\]]{1,64})\]:([^,]{1,32})", text)
        if m is None:
            raise OpenError(f"error parsing IPv6 address '{text}'")
        return m.group(1), m.group(2)
    m = re.match(r"([^:]{1,64}):([^,]{1,32})", text)
    if m is None:
        raise OpenError(f"error parsing address '{text}'")
    return m.group(1), m.group(2)


def apply_legacy_options(options: Options) -> None:
    """``host``/``port``/``path`` (old option names) become ``server.*``."""
    path = options.pop_str("path")
    host = options.pop_str("host")
    port = options.pop_str("port")
    if path is None and host is None and port is None:
        return
    if options.has_prefix("server"):
        raise OpenError("Cannot use 'server' and path/host/port at the same time")
    if path is not None and host is not None:
        raise OpenError("path and host may not be used at the same time")
    if path is not None:
        if port is not None:
            raise OpenError("port may not be used without host")
        options.set("server.type", "unix")
        options.set("server.path", path)
    elif host is not None:
        options.set("server.type", "inet")
        options.set("server.host", host)
        options.set("server.port", port if port is not None else str(DEFAULT_PORT))


def socket_address(options: Options) -> SocketAddress:
    """The ``server.*`` options as a SocketAddress (QEMU's nbd_config and QAPI checks)."""
    server = options.extract("server")
    if not len(server):
        raise OpenError("NBD server address missing")
    kind = server.pop_str("type")
    if kind is None:
        raise OpenError("Parameter 'type' is missing")
    if kind not in _SERVER_KEYS:
        raise OpenError(f"Parameter 'type' does not accept value '{kind}'")
    values: dict[str, str] = {}
    for key in _SERVER_KEYS[kind]:
        value = server.pop(key, None) if key in server else None
        if value is None:
            if key in _REQUIRED[kind]:
                raise OpenError(f"Parameter '{key}' is missing")
            continue
        if isinstance(value, bool):
            value = "on" if value else "off"
        values[key] = str(value)
    leftover = server.first_key()
    if leftover is not None:
        raise OpenError(f"Parameter '{leftover}' is unexpected")
    if kind == "inet":
        return SocketAddress("inet", host=values["host"], port=values["port"])
    if kind == "unix":
        if values.get("abstract") in ("on", "true"):
            return SocketAddress("unix", path="\0" + values["path"])
        return SocketAddress("unix", path=values["path"])
    raise OpenError(f"NBD over '{kind}' sockets is not supported by qio")


def pseudo_filename(address: SocketAddress, export: str | None) -> str:
    """The name QEMU gives an NBD node (nbd_refresh_filename), shown in the raw warning."""
    if address.type == "unix":
        path = address.path
        if export is not None:
            return f"nbd+unix:///{export}?socket={path}"
        return f"nbd+unix://?socket={path}"
    if export is not None:
        return f"nbd://{address.host}:{address.port}/{export}"
    return f"nbd://{address.host}:{address.port}"

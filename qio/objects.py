"""``--object``: the user-creatable objects of qemu-io 7.2, checked as QEMU checks them.

qio's formats need no object (encrypted images are refused), so an object is only parsed,
validated and remembered: what stays observable is qemu-io's answer to the option itself,
``help`` lists, parse and parameter errors, and the checks a ``secret`` makes when it is
created (data or file, a readable file, a known ``keyid``, no duplicate id).
"""

from __future__ import annotations

import base64
import os
import re

OBJECT_TYPES = (
    "authz-list",
    "authz-list-file",
    "authz-simple",
    "main-loop",
    "pr-manager-helper",
    "secret",
    "secret_keyring",
    "thread-context",
    "throttle-group",
    "tls-cipher-suites",
    "tls-creds-anon",
    "tls-creds-psk",
    "tls-creds-x509",
)
SECRET_PROPERTIES = {
    "data": "<string>",
    "file": "<string>",
    "format": "<QCryptoSecretFormat>",
    "iv": "<string>",
    "keyid": "<string>",
}
_ID = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*\Z")
_KEY = re.compile(r"[A-Za-z0-9_.-]+\Z")


class ObjectError(Exception):
    """qemu-io prints ``PROG: message`` and exits with status 1."""


class ObjectHelp(Exception):
    """qemu-io prints the text on stdout and exits with status 0."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def _keyval(text: str) -> dict[str, str]:
    """keyval_parse with the implied key ``qom-type``: ``key=value,...``, ``,,`` escapes."""
    params: dict[str, str] = {}
    i, n, first = 0, len(text), True
    while i < n:
        j = i
        while j < n and text[j] not in "=,":
            j += 1
        key = text[i:j]
        if j < n and text[j] == "=":
            i = j + 1
        elif first:
            key, i = "qom-type", i
        elif key in ("help", "?"):
            params["help"] = "on"
            i = j + 1
            continue
        else:
            if not key or not _KEY.match(key):
                raise ObjectError(f"Invalid parameter '{key}'")
            raise ObjectError(f"Expected '=' after parameter '{key}'")
        if not key or not _KEY.match(key):
            raise ObjectError(f"Invalid parameter '{key}'")
        value: list[str] = []
        while i < n:
            if text[i] == ",":
                if i + 1 < n and text[i + 1] == ",":
                    value.append(",")
                    i += 2
                    continue
                break
            value.append(text[i])
            i += 1
        i += 1
        params[key] = "".join(value)
        first = False
    return params


class ObjectRegistry:
    """The objects created so far (their ids must be unique; a secret may name another)."""

    def __init__(self) -> None:
        self.objects: dict[str, str] = {}  # id -> type
        self.secrets: dict[str, bytes] = {}  # id -> the secret's bytes (data or file)

    def add(self, text: str) -> None:
        params = _keyval(text)
        qom_type = params.get("qom-type")
        if qom_type in ("help", "?"):
            raise ObjectHelp(
                "List of user creatable objects:\n" + "".join(f"  {t}\n" for t in OBJECT_TYPES)
            )
        if "help" in params and qom_type == "secret":
            raise ObjectHelp(
                "secret options:\n"
                + "".join(f"  {k}={v}\n" for k, v in SECRET_PROPERTIES.items())
            )
        if qom_type is None:
            raise ObjectError("Parameter 'qom-type' is missing")
        if qom_type not in OBJECT_TYPES:
            raise ObjectError(f"Parameter 'qom-type' does not accept value '{qom_type}'")
        obj_id = params.get("id")
        if obj_id is None:
            raise ObjectError("Parameter 'id' is missing")
        if not _ID.match(obj_id):
            raise ObjectError(
                "Parameter 'id' expects an identifier\n"
                "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter."
            )
        if qom_type == "secret":
            fmt = params.get("format")
            if fmt is not None and fmt not in ("raw", "base64"):
                raise ObjectError(f"Parameter 'format' does not accept value '{fmt}'")
            for key in params:
                if key not in ("qom-type", "id", *SECRET_PROPERTIES):
                    raise ObjectError(f"Parameter '{key}' is unexpected")
        if obj_id in self.objects:
            raise ObjectError(
                f"attempt to add duplicate property '{obj_id}' to object (type 'container')"
            )
        if qom_type == "secret":
            self.secrets[obj_id] = self._complete_secret(params)
        self.objects[obj_id] = qom_type

    def _complete_secret(self, params: dict[str, str]) -> bytes:
        """qcrypto_secret_load_data and the checks of qcrypto_secret_decrypt (the decryption
        itself is not done: nothing in qio reads a secret)."""
        data, path = params.get("data"), params.get("file")
        if data is not None and path is not None:
            raise ObjectError("'file' and 'data' are mutually exclusive")
        if data is None and path is None:
            raise ObjectError("Either 'file' or 'data' must be provided")
        if path is not None:
            try:
                with open(path, "rb") as f:
                    raw = f.read()
            except OSError as exc:
                raise ObjectError(
                    f"Unable to read {path}: Failed to open file \u201c{path}\u201d: "
                    f"{os.strerror(exc.errno or 0)}"
                ) from None
        else:
            raw = (data or "").encode()
        if params.get("format") == "base64":
            try:
                raw = base64.b64decode(raw, validate=True)
            except ValueError:
                pass
        keyid = params.get("keyid")
        if keyid is not None:
            key = self.secrets.get(keyid)
            if keyid not in self.objects:
                raise ObjectError(f"No secret with id '{keyid}'")
            if key is None:
                raise ObjectError(f"Object with id '{keyid}' is not a secret")
            if len(key) != 32:
                raise ObjectError("Key should be 32 bytes in length")
            if params.get("iv") is None:
                raise ObjectError("IV is required to decrypt secret")
        return raw

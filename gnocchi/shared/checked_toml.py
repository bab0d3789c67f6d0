"""A TOML file read strictly, for the server's config (gnocchi.server.config) and the
client's profiles (gnocchi.client.profile): one way to read it and one error format,
"FILE: key.path: problem", on both sides.

Trusts the file's author, not the file's spelling: a file that cannot be
read, is not UTF-8 or is not TOML is one error naming the file; every key is
checked by the caller through Where, which refuses unknown keys (a typo must
not silently drop a setting) and wrong types, naming the key path. Each side
raises its own exception class (ConfigError, ProfileError) with that text.
"""

from __future__ import annotations

import os
from collections.abc import Collection


class Where:
    """Reads one file and builds errors that name it and a key path."""

    def __init__(self, path: str | os.PathLike[str], error: type[Exception]) -> None:
        self.path = str(path)
        self.exception = error

    def error(self, key: str, problem: str) -> Exception:
        return self.exception(
            f"{self.path}: {key}: {problem}" if key else f"{self.path}: {problem}"
        )

    def read(self, missing: str = "no such file") -> dict[str, object]:
        """The file as a TOML document, or the error saying why not (one line)."""
        return self.parse(self.read_bytes(missing))

    def read_bytes(self, missing: str = "no such file") -> bytes:
        """The file's bytes, or the error saying why not."""
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise self.error("", missing) from None
        except OSError as e:
            raise self.error("", f"cannot read: {e.strerror}") from None

    def parse(self, data: bytes) -> dict[str, object]:
        """data, this file's bytes, as a TOML document, or the error saying why not."""
        import tomllib  # only where there is a file to read: a client with flags alone skips it

        try:
            return tomllib.loads(data.decode("utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise self.error("", f"not valid TOML: {e}") from None
        except UnicodeDecodeError:
            raise self.error("", "not valid UTF-8") from None

    def table(
        self,
        value: object,
        key: str,
        allowed: Collection[str],
        required: Collection[str] = frozenset(),
    ) -> dict[str, object]:
        if not isinstance(value, dict):
            raise self.error(key, f"must be a table, not {kind(value)}")
        for k in value:
            if k not in allowed:
                known = ", ".join(sorted(allowed))
                raise self.error(join(key, k), f"unknown key (known here: {known})")
        for k in sorted(required):
            if k not in value:
                raise self.error(join(key, k), "missing (required)")
        return value

    def entries(self, value: object, key: str) -> list[tuple[str, object]]:
        """The (name, table) pairs of a table of named tables, such as [clients.NAME]."""
        if not isinstance(value, dict):
            raise self.error(key, f"must be a table of named tables, not {kind(value)}")
        return list(value.items())

    def string(self, value: object, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(
                key,
                "must be a non-empty string, not "
                + (kind(value) if value != "" else "an empty one"),
            )
        return value

    def path_string(self, value: object, key: str) -> str:
        text = self.string(value, key)
        if not os.path.isabs(text):
            raise self.error(key, f"{text!r} is not an absolute path")
        return text

    def string_list(self, value: object, key: str) -> list[str]:
        if not isinstance(value, list):
            raise self.error(key, f"must be a list of strings, not {kind(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{key}[{i}]", f"must be a string, not {kind(item)}")
        return value


def kind(value: object) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def join(key: str, sub: str) -> str:
    return f"{key}.{sub}" if key else sub

"""gnocchi.requests: only the canonical forms of a knock's DATA parse, and show() makes any DATA safe to log."""
import pytest

from gnocchi import requests


@pytest.mark.parametrize("data, parsed", [
    (b"open 22", requests.Open(22, "tcp")),
    (b"open 22/tcp", requests.Open(22, "tcp")),
    (b"open 65535/udp", requests.Open(65535, "udp")),
    (b"run motd", requests.Run("motd")),
    (b"run motd\nhello\nworld\xff", requests.Run("motd", b"hello\nworld\xff")),
    (b"run motd\n", requests.Run("motd", b"")),
    (b"open 0", None), (b"open 65536", None), (b"open 022", None), (b"open 22/sctp", None),
    (b"open  22", None), (b"open 22 ", None), (b"open 22\n", None), (b"OPEN 22", None),
    (b"open", None), (b"run", None), (b"run ../x", None), (b"run a b", None),
    (b"run " + b"a" * 65, None), (b"\xffopen 22", None), (b"open 2\x002", None),
])
def test_request_parsing_accepts_only_canonical_forms(data, parsed):
    result = requests.parse(data)
    if parsed is None:
        assert isinstance(result, requests.Bad) and result.why
    else:
        assert result == parsed


def test_show_escapes_and_bounds_attacker_text():
    assert requests.show(b"open 22") == "open 22"
    assert requests.show(b"a\nb\x1b[31m\xff") == "a\\nb\\x1b[31m\\xff"
    long = requests.show(b"\xff" * 864)
    assert len(long) <= requests.SHOW_LIMIT + 3 and long.isprintable() and long.endswith("...")

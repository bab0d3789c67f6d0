"""gnocchi.shared.knock_request: only the canonical forms of a knock's DATA
parse, and show() makes any DATA safe to log."""

import pytest

from gnocchi.shared import knock_request


@pytest.mark.parametrize(
    "data, parsed",
    [
        (b"open 22", knock_request.Open(22, "tcp")),
        (b"open 22/tcp", knock_request.Open(22, "tcp")),
        (b"open 65535/udp", knock_request.Open(65535, "udp")),
        (b"run motd", knock_request.Run("motd")),
        (b"run motd\nhello\nworld\xff", knock_request.Run("motd", b"hello\nworld\xff")),
        (b"run motd\n", knock_request.Run("motd", b"")),
        (b"open 0", None),
        (b"open 65536", None),
        (b"open 022", None),
        (b"open 22/sctp", None),
        (b"open  22", None),
        (b"open 22 ", None),
        (b"open 22\n", None),
        (b"OPEN 22", None),
        (b"open", None),
        (b"run", None),
        (b"run ../x", None),
        (b"run a b", None),
        (b"run " + b"a" * 65, None),
        (b"\xffopen 22", None),
        (b"open 2\x002", None),
        # several ports: single spaces, each once, at most MAX_PORTS
        (
            b"open 22 60001/udp",
            knock_request.OpenPorts(
                (knock_request.Open(22, "tcp"), knock_request.Open(60001, "udp"))
            ),
        ),
        (
            b"open 53/udp 53/tcp",
            knock_request.OpenPorts((knock_request.Open(53, "udp"), knock_request.Open(53, "tcp"))),
        ),
        (b"open 22 22/tcp", None),
        (b"open 22  60001/udp", None),
        (b"open 22 60001/udp ", None),
        (b"open 22 0", None),
        (b"open 22 ssh", None),
        (b"open 22 60001/udp\n", None),
        (b"open " + b" ".join(b"%d" % p for p in range(1, 10)), None),
    ],
)
def test_request_parsing_accepts_only_canonical_forms(data, parsed):
    result = knock_request.parse(data)
    if parsed is None:
        assert isinstance(result, knock_request.Bad) and result.why
    else:
        assert result == parsed


def test_show_escapes_and_bounds_attacker_text():
    assert knock_request.show(b"open 22") == "open 22"
    assert knock_request.show(b"a\nb\x1b[31m\xff") == "a\\nb\\x1b[31m\\xff"
    long = knock_request.show(b"\xff" * 864)
    assert len(long) <= knock_request.SHOW_LIMIT + 3 and long.isprintable() and long.endswith("...")


def test_several_ports_read_back_in_canonical_form():
    eight = knock_request.parse(b"open " + b" ".join(b"%d" % p for p in range(1, 9)))
    assert len(eight.opens) == knock_request.MAX_PORTS == 8
    request = knock_request.parse(b"open 22 60001/udp")
    assert str(request) == "open 22/tcp 60001/udp"
    assert knock_request.parse(str(request).encode()) == request
    assert str(knock_request.parse(b"open 22")) == "open 22/tcp"  # one port: as before
    assert knock_request.parse(b"open 22").opens == (knock_request.Open(22, "tcp"),)


def test_a_refusal_names_what_is_wrong_never_the_data():
    assert knock_request.parse(b"open 22 22/tcp").why == "22/tcp named twice"
    assert "more than 8 ports" in knock_request.parse(b"open " + b"1 " * 9 + b"1").why
    assert "\x1b" not in knock_request.parse(b"open 22 \x1b[31m").why

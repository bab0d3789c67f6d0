"""Properties of gnocchi.shared.knock_request, the grammar both sides use
(hypothesis): any DATA parses to a request or a Bad without raising; a Bad never
quotes DATA; what parses has ports 1..65535 over tcp/udp, 1 to MAX_PORTS of them,
each once; the canonical form the client writes reads back as the same request;
show() makes any DATA short printable ASCII."""

import re

from hypothesis import given, settings, strategies as st

from gnocchi.shared import knock_request as kr

moderate = settings(max_examples=300, deadline=None)
# Bytes near the grammar as well as any bytes: mutations of real requests find more.
near = st.lists(
    st.sampled_from(
        [
            b"open",
            b"run",
            b" ",
            b"  ",
            b"/",
            b"tcp",
            b"udp",
            b"\n",
            b"0",
            b"22",
            b"65535",
            b"65536",
            b"99999",
            b"1",
            b"x",
            b"-",
            b".",
            b"\x00",
            b"\xff",
            b"\xc3\xa9",
            b"\t",
        ]
    ),
    max_size=24,
).map(b"".join)
tokens = st.tuples(
    st.one_of(st.integers(0, 99999).map(str), st.sampled_from(["0", "00", "022", "", "+1", " "])),
    st.sampled_from(["", "/tcp", "/udp", "/TCP", "/", "/sctp", "/tcp/udp"]),
).map("".join)
open_like = st.lists(tokens, max_size=kr.MAX_PORTS + 2).map(
    lambda t: f"open {' '.join(t)}".encode()
)
data = st.one_of(st.binary(max_size=200), near, open_like)
opens = st.builds(kr.Open, st.integers(1, 65535), st.sampled_from(["tcp", "udp"]))
requests = st.one_of(
    opens,
    st.lists(opens, min_size=2, max_size=kr.MAX_PORTS, unique=True).map(
        lambda o: kr.OpenPorts(tuple(o))
    ),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True).map(kr.Run),
)
# Every reason a Bad gives; none carries DATA but the port it names twice.
WHY = re.compile(
    r"not an ASCII request line|more than \d ports|not open PORT.*|not run NAME.*"
    r"|unknown request \(known: open, run\)|\d{1,5}/(tcp|udp) named twice"
)


@moderate
@given(data)
def test_any_data_parses_to_a_request_or_a_bad_that_quotes_nothing(raw):
    result = kr.parse(raw)
    assert isinstance(result, kr.Open | kr.OpenPorts | kr.Run | kr.Bad)
    if isinstance(result, kr.Bad):
        assert WHY.fullmatch(result.why), result.why
    for o in getattr(result, "opens", ()):
        assert 1 <= o.port <= 65535 and o.proto in ("tcp", "udp")
    if isinstance(result, kr.Open | kr.OpenPorts):
        assert 1 <= len(result.opens) <= kr.MAX_PORTS
        assert len(set(result.opens)) == len(result.opens)


@moderate
@given(requests)
def test_the_canonical_form_reads_back_as_the_same_request(request):
    assert kr.parse(str(request).encode()) == request


@moderate
@given(data)
def test_a_request_that_parses_reads_back_the_same_from_its_canonical_form(raw):
    result = kr.parse(raw)
    if isinstance(result, kr.Open | kr.OpenPorts):
        assert kr.parse(str(result).encode()) == result


@moderate
@given(data, st.integers(1, 200))
def test_show_makes_any_data_short_printable_ascii(raw, limit):
    shown = kr.show(raw, limit)
    assert shown.isascii() and shown.isprintable()
    assert len(shown) <= limit + 3

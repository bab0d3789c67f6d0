"""Properties of gnocchi.server.counters, the counter store's parser
(hypothesis): whatever bytes the store file holds, loading it gives a state
or a StoreError naming the file, never another exception; and what a commit
writes loads back as it was, text or slots.
"""

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gnocchi.server import counters

moderate = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
keys = st.binary(min_size=32, max_size=32)
values = st.integers(min_value=0, max_value=counters.MAX_COUNTER)
states = st.dictionaries(keys, values, max_size=20)
floors = st.integers(min_value=0, max_value=counters.MAX_COUNTER)


def lines_of(state: dict[bytes, int]) -> list[bytes]:
    return [f"{k.hex()} {v}\n".encode() for k, v in state.items()]


# Near misses of the text format as well as noise: a header, then lines that
# may or may not be counters.
texts = st.one_of(
    st.binary(max_size=300),
    st.tuples(
        st.sampled_from([counters.HEADER.encode(), b"# gnocchi counters v2\n", b""]),
        st.lists(
            st.one_of(
                st.binary(max_size=80),
                states.map(lines_of).map(b"".join),
                st.sampled_from([b"floor 5\n", b"floor 01\n", b"\n"]),
            ),
            max_size=5,
        ),
    ).map(lambda t: t[0] + b"".join(t[1])),
)


@moderate
@given(texts)
def test_any_text_parses_or_is_a_store_error_naming_the_file(raw):
    try:
        floor, state = counters.parse(raw, "/x/counters")
    except counters.StoreError as e:
        assert str(e).startswith("/x/counters: corrupt counter store (")
        return
    assert 0 <= floor <= counters.MAX_COUNTER
    assert all(len(k) == 32 and 0 <= v <= counters.MAX_COUNTER for k, v in state.items())


@moderate
@given(states, floors)
def test_rendered_text_parses_back(state, floor):
    # render() keeps only counters above the floor: the floor answers for the rest.
    kept = {k: v for k, v in state.items() if v > floor}
    assert counters.parse(counters.render(state, floor).encode(), "x") == (floor, kept)


@moderate
@given(
    st.integers(min_value=0, max_value=2**64 - 1),
    st.binary(max_size=200),
    st.integers(min_value=0, max_value=199),
    st.integers(min_value=1, max_value=255),
)
def test_a_slot_reads_back_whole_and_any_changed_byte_makes_it_no_slot(sequence, text, at, flip):
    slot = counters.pack_slot(sequence, text)
    assert counters.unpack_slot(slot + bytes(64)) == (sequence, text)
    at %= len(slot)
    bad = slot[:at] + bytes([slot[at] ^ flip]) + slot[at + 1 :]
    assert counters.unpack_slot(bad) is None


def two_slots(state: dict[bytes, int], changes: list[tuple[int, int]]) -> bytes:
    """A store file of two slots (sequences 1 and 2), with some bytes changed."""
    text = counters.render(state).encode()
    raw = bytearray(
        b"".join(counters.pack_slot(seq, text).ljust(counters.BLOCK, b"\0") for seq in (1, 2))
    )
    for at, flip in changes:
        raw[at % len(raw)] ^= flip
    return bytes(raw)


@moderate
@given(
    st.one_of(
        st.binary(max_size=2 * counters.BLOCK + 1),
        st.binary(max_size=300).map(
            lambda b: (b + bytes(2 * counters.BLOCK))[: 2 * counters.BLOCK]
        ),
        st.builds(
            two_slots,
            states,
            st.lists(
                st.tuples(st.integers(0, 2 * counters.BLOCK - 1), st.integers(1, 255)), max_size=3
            ),
        ),
    )
)
def test_any_store_file_loads_or_is_a_store_error(tmp_path_factory, raw):
    directory = tmp_path_factory.mktemp("store")
    (directory / counters.FILE_NAME).write_bytes(raw)
    try:
        store = counters.Store(str(directory)).load()
    except counters.StoreError as e:
        assert str(e).startswith(str(directory / counters.FILE_NAME))
        return
    assert all(store.last(k) >= store.floor for k in store.counters)


@pytest.mark.parametrize("start", ["text", "slots"])
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(commits=st.lists(st.tuples(keys, values), min_size=1, max_size=8))
def test_what_is_committed_loads_back(tmp_path_factory, start, commits):
    directory = str(tmp_path_factory.mktemp("store"))
    counters.create(directory)
    store = counters.Store(directory).load()
    if start == "slots":
        store.commit(bytes(32), 1)
    expected = dict(store.counters)
    for key, value in commits:
        store.commit(key, value)
        expected[key] = value
    again = counters.Store(directory).load()
    assert {k: again.last(k) for k in expected} == expected

"""Properties of the action socket's two parsers (hypothesis): the runner's
parse_request (gnocchi.server.action_runner) turns any bytes into a Request or
the words that refuse them, never an exception, and reads back exactly what
the verifier's encode_request wrote; the verifier's parse_reply
(gnocchi.server.action_client) turns any reply into an Outcome, bounded.
"""

import ipaddress

from hypothesis import given, settings, strategies as st

from gnocchi.server import action_client, action_runner, actions

moderate = settings(max_examples=300, deadline=None)
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True)
addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))
payloads = st.binary(max_size=action_runner.protocol.MAX_BODY)


@moderate
@given(names, names, addresses, payloads)
def test_a_request_reads_back_as_the_verifier_wrote_it(action, client, source, payload):
    message = action_client.encode_request(action, client, source, payload)
    assert action_runner.parse_request(message) == action_runner.Request(
        action, client, source, payload
    )


@moderate
@given(
    st.one_of(
        st.binary(max_size=action_runner.MAX_REQUEST + 2),
        # a good header, then anything: the checks past the lengths see bytes too
        st.tuples(
            st.integers(0, 255),
            st.integers(0, 70),
            st.integers(0, 70),
            st.binary(min_size=16, max_size=16),
            st.binary(max_size=200),
        ).map(
            lambda t: (
                action_runner.REQUEST.pack(1, 4 + 2 * (t[0] % 2), t[1], t[2], len(t[4]) % 900, t[3])
                + t[4]
            )
        ),
    )
)
def test_any_bytes_give_a_request_or_why_not(message):
    out = action_runner.parse_request(message)
    if isinstance(out, str):
        return
    assert action_runner.config.NAME.fullmatch(out.action)
    assert action_runner.config.NAME.fullmatch(out.client)
    assert isinstance(out.source, (ipaddress.IPv4Address, ipaddress.IPv6Address))
    assert len(out.payload) <= action_runner.protocol.MAX_BODY
    assert action_client.encode_request(out.action, out.client, out.source, out.payload) == message


@moderate
@given(
    st.binary(max_size=action_client.REPLY.size + actions.OUTPUT_LIMIT + 10),
    st.floats(min_value=0.1, max_value=600),
)
def test_any_reply_is_an_outcome_and_bounded(reply, timeout):
    outcome = action_client.parse_reply(reply, timeout)
    assert isinstance(outcome, actions.Outcome)
    assert len(outcome.output) <= actions.OUTPUT_LIMIT
    assert outcome.ok == (outcome.problem == "")

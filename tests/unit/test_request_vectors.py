"""gnocchi.shared.knock_request against tests/vectors/requests-v1.json: the request
grammar, several ports in one `open` included, as another implementation of
PROTOCOL.md ("Request") would check it; and v1 packets that carry such a
request, opened by gnocchi.shared.protocol unchanged."""

import json
from pathlib import Path

import pytest

from gnocchi.server import helper_client
from gnocchi.shared import knock_request, protocol

VECTORS_DIR = Path(__file__).parent.parent / "vectors"
REQUESTS = json.loads((VECTORS_DIR / "requests-v1.json").read_text())
KNOCK = json.loads((VECTORS_DIR / "knock-v1.json").read_text())  # keys, address, clients
BY_NAME = {r["name"]: r for r in REQUESTS["requests"]}


def test_the_limit_is_the_grammars_and_the_helpers():
    assert REQUESTS["max_ports"] == knock_request.MAX_PORTS == helper_client.MAX_PORTS


@pytest.mark.parametrize("vector", REQUESTS["requests"], ids=lambda v: v["name"])
def test_request_vector(vector):
    result = knock_request.parse(bytes.fromhex(vector["data"]))
    if vector["expect"] == "bad":
        assert isinstance(result, knock_request.Bad) and result.why
    elif vector["expect"] == "run":
        assert isinstance(result, knock_request.Run)
    else:
        assert [f"{o.port}/{o.proto}" for o in result.opens] == vector["opens"]
        assert str(result) == vector["canonical"]
        # The canonical text is a request too, and means the same ports.
        assert knock_request.parse(vector["canonical"].encode()).opens == result.opens


@pytest.mark.parametrize("vector", REQUESTS["packets"], ids=lambda v: v["name"])
def test_packet_vector_is_a_v1_knock(vector):
    server_ip = bytes(int(x) for x in KNOCK["server_ip"].split("."))
    client = bytes.fromhex(KNOCK["clients"][vector["client"]]["public_key"])
    result = protocol.open_packet(
        bytes.fromhex(vector["packet"]),
        bytes.fromhex(KNOCK["server_key"]),
        lambda key: 0,
        [server_ip],
    )
    assert result == protocol.Accepted(client, vector["counter"], bytes.fromhex(vector["data"]))
    request = knock_request.parse(result.data)
    assert [f"{o.port}/{o.proto}" for o in request.opens] == BY_NAME[vector["name"]]["opens"]

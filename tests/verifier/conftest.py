"""Fixtures for the verifier's tests: keys, a recording helper socket, a Net,
the real helper on the real table in its server namespace, and daemons that
are stopped after each test (tests/support/verifier.py)."""

import pytest

from support import Daemon, Helper, HelperRecorder, Keys, Net, load_table


@pytest.fixture
def k(tmp_path) -> Keys:
    return Keys(tmp_path)


@pytest.fixture
def helper(tmp_path):
    recorder = HelperRecorder(tmp_path / "helper.sock")
    yield recorder
    recorder.close()


@pytest.fixture
def net():
    with Net("v") as n:
        yield n


@pytest.fixture
def real_helper(net, tmp_path):
    """The real root helper's socket path; it serves root here (the verifier's user)."""
    load_table(net.server, tmp_path)  # protects tcp 22
    helper = Helper(net.server, peer_user="root")
    yield helper.path
    helper.close()


@pytest.fixture
def daemons():
    started: list[Daemon] = []

    def start(*args, **kw) -> Daemon:
        d = Daemon(*args, **kw)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()

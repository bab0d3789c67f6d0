"""Fixtures for the verifier's tests: keys, a recording helper socket, a Net,
and daemons that are stopped after each test (tests/support/verifier.py)."""
import pytest

from support import Daemon, HelperRecorder, Keys, Net


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
def daemons():
    started: list[Daemon] = []

    def start(*args, **kw) -> Daemon:
        d = Daemon(*args, **kw)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()

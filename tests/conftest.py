"""The one setup for every test under tests/.

sys.path gets, here and nowhere else: the checkout (the gnocchi package),
helper/ (the root helper's modules, by the names the helper imports them:
`request`, `nft`) and tests/ (the shared library, `support`). Tests are
marked by directory, not by file name: integration/ and verifier/ create
network namespaces, so they are `netns` tests and need root.
"""
import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
for path in (TESTS.parent, TESTS.parent / "helper", TESTS):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

NETNS_DIRS = {"integration", "verifier"}

if not os.access(TESTS.parent, os.W_OK):
    # A checkout this user may not write (tests/run as an ordinary user): hypothesis
    # keeps no example database rather than warning that it cannot.
    from hypothesis import settings
    settings.register_profile("read-only checkout", database=None)
    settings.load_profile("read-only checkout")


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(str(item.fspath)).relative_to(TESTS).parts[0] in NETNS_DIRS:
            item.add_marker(pytest.mark.netns)
            if os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason="needs root for network namespaces"))

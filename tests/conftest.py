"""The one setup for every test under tests/.

sys.path gets, here and nowhere else: the checkout (the gnocchi package),
helper/ (the root helper's modules, by the names the helper imports them:
`request`, `nft`) and tests/ (the shared library, `support`). Tests are
marked by directory, not by file name: integration/ and verifier/ create
network namespaces, so they are `netns` tests, and system/ boots a systemd
container (`system`); all three need root and skip, saying so, without it.
"""

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
for path in (TESTS.parent, TESTS.parent / "helper", TESTS):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# The folders whose every test needs root, with the marker they get and why.
ROOT_DIRS = {
    "integration": ("netns", "network namespaces"),
    "verifier": ("netns", "network namespaces"),
    "system": ("system", "a systemd container booted from this machine's root"),
}

if not os.access(TESTS.parent, os.W_OK):
    # A checkout this user may not write (tests/run as an ordinary user): hypothesis
    # keeps no example database rather than warning that it cannot.
    from hypothesis import settings

    settings.register_profile("read-only checkout", database=None)
    settings.load_profile("read-only checkout")


def pytest_collection_modifyitems(items):
    for item in items:
        folder = Path(str(item.fspath)).relative_to(TESTS).parts[0]
        if folder in ROOT_DIRS:
            marker, why = ROOT_DIRS[folder]
            item.add_marker(getattr(pytest.mark, marker))
            if os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason=f"needs root: {why}"))

"""The changelogs are kept with the version: CHANGELOG.md's newest released
section, packaging/debian/changelog's newest entry (which packaging/build-deb
also checks) and gnocchi.__version__ name the same release, and work not yet
released is under one "unreleased" section for a later version, at the top."""

import re
import subprocess

import pytest

from gnocchi import __version__
from support import REPO

HEADING = re.compile(r"^## (\d+\.\d+\.\d+) \((unreleased|\d{4}-\d\d-\d\d)\)$", re.MULTILINE)


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_the_debian_changelog_names_the_version():
    first = (REPO / "packaging" / "debian" / "changelog").read_text().splitlines()[0]
    assert first.startswith(f"gnocchi-knock ({__version__}) "), (
        f"packaging/debian/changelog starts {first!r}, gnocchi.__version__ is {__version__}: "
        f"add an entry (dch -v {__version__})"
    )


def test_changelog_md_has_the_version_released_and_unreleased_work_above_it():
    sections = HEADING.findall((REPO / "CHANGELOG.md").read_text())
    released = [v for v, when in sections if when != "unreleased"]
    unreleased = [v for v, when in sections if when == "unreleased"]
    assert released and released[0] == __version__, (
        f"CHANGELOG.md's newest release is {released[:1]}, gnocchi.__version__ is {__version__}"
    )
    if unreleased:
        assert len(unreleased) == 1 and sections[0][1] == "unreleased", "one, at the top"
    assert all(version(v) > version(__version__) for v in unreleased), unreleased
    assert [version(v) for v, _ in sections] == sorted(
        (version(v) for v, _ in sections), reverse=True
    ), "newest first"


# The commit from which subjects are held to CONTRIBUTING.md's 72 characters
# (older ones, merges included, ran longer; history is not rewritten).
SHORT_SUBJECTS_FROM = "698543f"


def test_commit_subjects_fit_in_72_characters():
    log = subprocess.run(
        ["git", "-C", str(REPO), "log", "--format=%h %s", f"{SHORT_SUBJECTS_FROM}..HEAD"],
        capture_output=True,
        text=True,
    )
    if log.returncode != 0:
        pytest.skip(f"needs the git history from {SHORT_SUBJECTS_FROM}: {log.stderr.strip()}")
    long = [line for line in log.stdout.splitlines() if len(line.split(" ", 1)[1]) > 72]
    assert long == [], "subjects over 72 characters (the reasons go in the body): " + str(long)

"""The units' hardening, as `systemd-analyze security --offline=true` scores it.

gnocchi.service must score <= 1.0 and gnocchi-helper.service <= 2.0
(Debian's fwknop-server scores 9.6). test_system.py checks the installed
units again, with `systemd-analyze verify`, on a booted systemd.
"""

import re
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "units"
LIMITS = {
    "gnocchi.service": 1.0,
    "gnocchi-helper.service": 2.0,
    "gnocchi-action@.service": 1.0,  # each action runs there
    "gnocchi-metrics.service": 2.0,
}


def exposure(unit_file: Path) -> float:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert m, f"no score for {unit_file}:\n{proc.stdout}\n{proc.stderr}"
    return float(m.group(1))


@pytest.mark.parametrize("unit", sorted(LIMITS))
def test_hardening_score(unit):
    score = exposure(UNITS / unit)
    assert score <= LIMITS[unit], f"{unit} scores {score}, the limit is {LIMITS[unit]}"

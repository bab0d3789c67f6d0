"""The .deb as a Debian admin and lintian see it, without installing it.

test_system.py installs the same package on a booted systemd.
"""
import shutil
import subprocess

import pytest


def dpkg_deb(*args) -> str:
    return subprocess.run(["dpkg-deb", *map(str, args)], check=True, capture_output=True,
                          text=True, timeout=60).stdout


def test_lintian_finds_no_errors_or_warnings(deb):
    if shutil.which("lintian") is None:
        pytest.skip("needs lintian")
    proc = subprocess.run(["lintian", "--no-tag-display-limit", str(deb)],
                          capture_output=True, text=True, timeout=300)
    bad = [line for line in proc.stdout.splitlines() if line[:2] in ("E:", "W:")]
    assert not bad, "\n".join(bad)


def test_modules_stay_private_and_do_not_meet_openstack_gnocchi(deb):
    files = {line.split()[-1].lstrip(".") for line in dpkg_deb("-c", deb).splitlines()}
    assert "/usr/lib/gnocchi/gnocchi/protocol.py" in files
    assert "/usr/lib/gnocchi/helper/__main__.py" in files
    assert not [f for f in files if "dist-packages" in f or "site-packages" in f]
    assert {"/usr/bin/gnocchi", "/usr/bin/gnocchi-knock"} <= files
    assert dpkg_deb("-f", deb, "Package").strip() == "gnocchi-knock"  # not OpenStack's


def test_config_and_table_are_conffiles_and_the_deps_are_debians(deb):
    conffiles = subprocess.run(f"dpkg-deb --ctrl-tarfile {deb} | tar -xO ./conffiles",
                               shell=True, check=True, capture_output=True, text=True).stdout
    assert conffiles.split() == ["/etc/gnocchi/gnocchi.nft", "/etc/gnocchi/gnocchi.toml"]
    depends = dpkg_deb("-f", deb, "Depends")
    for package in ("python3-nacl", "python3-nftables", "python3-systemd", "nftables"):
        assert package in depends

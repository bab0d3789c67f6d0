"""The gnocchi.knock collection's server role (ansible/): the client drop-in its
template writes, rendered by Ansible's own templating (the booted-hosts side is
tests/system/test_fleet.py), loaded by the verifier's own config loader."""

import pytest

from gnocchi.server import config
from support import REPO

templar = pytest.importorskip("ansible.template", reason="needs ansible-core")
dataloader = pytest.importorskip("ansible.parsing.dataloader", reason="needs ansible-core")

TEMPLATE = (
    REPO
    / "ansible"
    / "ansible_collections"
    / "gnocchi"
    / "knock"
    / "roles"
    / "server"
    / "templates"
    / "client.toml.j2"
)
KEY = "1bcd" * 16
CONFIG = 'state_dir = "/var/lib/gnocchi"\n[actions.reboot]\nargv = ["/usr/sbin/reboot"]\n'


def rendered(name: str, client: dict) -> str:
    variables = {"item": {"key": name, "value": client}}
    return templar.Templar(loader=dataloader.DataLoader(), variables=variables).template(
        TEMPLATE.read_text()
    )


def load(tmp_path, name: str, client: dict) -> config.Config:
    (tmp_path / "clients.d").mkdir()
    (tmp_path / "clients.d" / f"{name}.toml").write_text(rendered(name, client))
    (tmp_path / "gnocchi.toml").write_text(CONFIG)
    return config.load(str(tmp_path / "gnocchi.toml"))


def test_a_client_drop_in_loads_as_its_variables_say(tmp_path):
    cfg = load(
        tmp_path, "bob", {"public_key": KEY, "allow": ["2222/tcp"], "sources": ["198.51.100.0/24"]}
    )
    (bob,) = cfg.clients
    assert (bob.name, bob.public_key.hex(), bob.actions) == ("bob", KEY, ())
    assert [f"{o.port}/{o.proto}" for o in bob.allow] == ["2222/tcp"]


def test_a_public_key_with_toml_in_it_is_refused_never_read_as_more_keys(tmp_path):
    # A user sends the admin a "public key" that goes on: the closing quote, a newline
    # and `actions = ["reboot"]`. Put into the inventory as it came, it must make a
    # drop-in that fails to load (so `gnocchi check` stops the play), never a client
    # who may reboot the server.
    hostile = KEY + '"\nactions = ["reboot"]\n#'
    with pytest.raises(config.ConfigError, match="clients.mallory.public_key"):
        load(tmp_path, "mallory", {"public_key": hostile, "allow": ["22/tcp"]})

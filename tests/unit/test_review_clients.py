"""Review: `gnocchi add-client` with a name the config allows (letters,
digits, _ . -) but that holds a dot: written bare, [clients.web.01] is TOML
for a table "01" inside a table "web", so the edit was refused with
"clients.web.01: unknown key" and a legal name could not be added."""
import tomllib

from nacl.signing import SigningKey

from gnocchi.server import config
from gnocchi.shared import keys
from support import gnocchi_cli


def test_a_client_name_with_a_dot_is_added_and_removed(tmp_path):
    keys.write_secret(tmp_path / "server.key", keys.new_server_key())
    path = tmp_path / "gnocchi.toml"
    path.write_text(f'server_key_file = "{tmp_path / "server.key"}"\n')
    before = path.read_bytes()
    public = bytes(SigningKey.generate().verify_key).hex()
    added = gnocchi_cli("add-client", "--config", path, "--host", "h", "web.01", public)
    assert added.returncode == 0, added.stderr
    assert [c.name for c in config.load(str(path)).clients] == ["web.01"]
    profile = added.stdout.split("# ---- client web.01: append to ~/.ssh/config ----")[0]
    assert tomllib.loads(profile)["profiles"]["h"]["host"] == "h"
    removed = gnocchi_cli("remove-client", "--config", path, "web.01")
    assert removed.returncode == 0, removed.stderr
    assert path.read_bytes() == before

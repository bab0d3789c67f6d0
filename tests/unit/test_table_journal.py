"""Arming's journal entries (gnocchi/admin/table.py): each kind has its own MESSAGE_ID,
explained in the installed catalog, and a priority. tests/system/ shows them in
`journalctl -u gnocchi` on a booted systemd."""

from pathlib import Path

from gnocchi.admin import table
from gnocchi.server import events

REPO = Path(__file__).resolve().parents[2]


def test_every_arming_event_has_its_own_message_id_and_a_catalog_entry():
    catalog = (REPO / "gnocchi" / "gnocchi.catalog").read_text()
    ids = list(table.MESSAGE_IDS.values())
    assert len(set(ids)) == len(ids)
    assert not set(ids) & set(events.MESSAGE_IDS.values()), "not shared with the verifier's"
    for event, message_id in table.MESSAGE_IDS.items():
        assert f"-- {message_id}\n" in catalog, event
        assert event in table.PRIORITY


def test_every_arming_entry_names_the_server_key_by_its_fingerprint(tmp_path, monkeypatch):
    from systemd import journal

    from gnocchi.shared import keys

    key = keys.new_server_key()
    keys.write_secret(tmp_path / "server.key", key)
    config = tmp_path / "gnocchi.toml"
    config.write_text(f'server_key_file = "{tmp_path / "server.key"}"\n')
    sent = []
    monkeypatch.setattr(journal, "send", lambda message, **fields: sent.append(fields))
    monkeypatch.setattr(events, "stderr_is_journal", lambda: True)  # as under a unit
    monkeypatch.setattr(table, "CONFIG", [str(config)])
    table.log("armed", "armed", how="armed")
    table.log("disarmed", "disarmed")
    assert [f["GNOCCHI_SERVER_KEY"] for f in sent] == [keys.fingerprint(key)] * 2
    assert sent[0]["GNOCCHI_HOW"] == "armed" and sent[0]["GNOCCHI_EVENT"] == "armed"
    # No key to read (a config that names none that loads): the entry is written without it.
    monkeypatch.setattr(table, "CONFIG", [str(tmp_path / "missing.toml")])
    table.log("disarmed", "disarmed")
    assert "GNOCCHI_SERVER_KEY" not in sent[-1]

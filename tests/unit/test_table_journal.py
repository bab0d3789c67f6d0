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

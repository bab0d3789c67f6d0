"""gnocchi.server.events: bounded journal events under any flood, one MESSAGE_ID
per kind, each in the catalog."""

from gnocchi.server import events
from support import REPO


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_drops_and_over_budget_entries_become_one_summary_per_interval():
    sent, clock = [], Clock()
    log = events.EventLog(send=sent.append, clock=clock, interval=60, budget=3)
    for _ in range(10_000):
        log.drop("mac")
    for _ in range(10):
        log.limited("replay", "replayed", client="alice")
    log.drop("size")
    assert [e["GNOCCHI_EVENT"] for e in sent] == ["replay"] * 3  # nothing else yet
    clock.now += 60
    log.tick()
    summary = sent[-1]
    assert summary["GNOCCHI_EVENT"] == "dropped-summary"
    assert (
        summary["GNOCCHI_DROPPED"],
        summary["GNOCCHI_DROPPED_MAC"],
        summary["GNOCCHI_DROPPED_SIZE"],
        summary["GNOCCHI_SUPPRESSED_REPLAY"],
    ) == ("10001", "10000", "1", "7")
    assert summary["MESSAGE_ID"] == events.MESSAGE_IDS["dropped-summary"]
    log.limited("replay", "replayed again")  # a new interval has a new budget
    assert sent[-1]["MESSAGE"] == "replayed again"
    clock.now += 120
    log.tick()
    assert sent[-1]["MESSAGE"] == "replayed again"  # a quiet interval writes no summary


def test_every_event_has_its_own_message_id_and_a_catalog_entry():
    ids = list(events.MESSAGE_IDS.values())
    assert len(set(ids)) == len(ids)
    catalog = (REPO / "gnocchi" / "gnocchi.catalog").read_text()
    for event, message_id in events.MESSAGE_IDS.items():
        assert f"-- {message_id}\n" in catalog, event
    assert set(events.MESSAGE_IDS) == set(events.PRIORITY)

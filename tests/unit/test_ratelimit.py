"""gnocchi/server/ratelimit.py: token buckets per key, with the clock injected."""

from gnocchi.server.ratelimit import Limiter


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_burst_then_one_per_refill_and_keys_apart():
    clock = Clock()
    limit = Limiter(burst=3, refill=2.0, clock=clock)
    assert [limit.allow("a") for _ in range(5)] == [True, True, True, False, False]
    assert limit.allow("b")  # another key has its own bucket
    clock.now += 1.9
    assert not limit.allow("a")  # not yet a whole token
    clock.now += 0.1
    assert limit.allow("a") and not limit.allow("a")
    clock.now += 100
    assert [limit.allow("a") for _ in range(4)] == [True, True, True, False]  # never above burst


def test_memory_is_bounded_and_full_buckets_go_first():
    clock = Clock()
    limit = Limiter(burst=2, refill=1.0, max_keys=3, clock=clock)
    limit.allow("busy"), limit.allow("busy")  # empty
    limit.allow("x")
    clock.now += 5  # x has refilled; busy too, but...
    limit.allow("busy"), limit.allow("busy")  # ...busy is empty again
    limit.allow("y")
    limit.allow("z")  # a fourth key: a full bucket goes
    assert len(limit.buckets) == 3 and "busy" in limit.buckets and "x" not in limit.buckets
    assert not limit.allow("busy")  # forgetting never refilled it
    for i in range(1000):  # a flood of new keys
        limit.allow(i)
    assert len(limit.buckets) <= 3

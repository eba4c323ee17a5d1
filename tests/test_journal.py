"""The ban journal: counts for the ladder, live bans with remaining time, unbans that stay."""

from __future__ import annotations

from pathlib import Path

from sipops.host.monitor.journal import Journal, NewBan


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_a_ban_is_live_until_it_expires(tmp_path: Path) -> None:
    clock = Clock()
    j = Journal(tmp_path / "bans.sqlite", clock)
    (r,) = j.record([NewBan("192.0.2.1", "conn_flood", "conns=300>200 port=5060", 600)])
    assert (r.since, r.until, r.count) == (clock.t, clock.t + 600, 1)
    clock.t += 599
    assert [b.address for b in j.live()] == ["192.0.2.1"]
    assert j.live()[0].remaining(clock.t) == 1
    clock.t += 1
    assert j.live() == []


def test_repeat_offenders_count_up_and_are_forgiven_after_a_quiet_day(tmp_path: Path) -> None:
    clock = Clock()
    j = Journal(tmp_path / "bans.sqlite", clock)
    j.record([NewBan("192.0.2.1", "conn_flood", "", 600)])
    clock.t += 700
    assert j.record([NewBan("192.0.2.1", "conn_flood", "", 600)])[0].count == 2
    clock.t += 600 + 86401
    assert j.record([NewBan("192.0.2.1", "conn_flood", "", 600)])[0].count == 1


def test_unban_survives_reopening_and_is_not_live(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "bans.sqlite"
    j = Journal(path, clock)
    j.record([NewBan("192.0.2.1", "manual", "", 3600), NewBan("192.0.2.2", "manual", "", 3600)])
    assert j.unban(["192.0.2.1", "192.0.2.9"]) == ["192.0.2.1"]
    j.close()
    again = Journal(path, clock)
    assert [b.address for b in again.live()] == ["192.0.2.2"]
    rec = again.get("192.0.2.1")
    assert rec is not None and rec.unbanned


def test_a_new_ban_after_an_unban_is_live_again(tmp_path: Path) -> None:
    j = Journal(tmp_path / "bans.sqlite", Clock())
    j.record([NewBan("192.0.2.1", "manual", "", 3600)])
    j.unban(["192.0.2.1"])
    j.record([NewBan("192.0.2.1", "conn_flood", "", 600)])
    assert [b.rule for b in j.live()] == ["conn_flood"]


def test_changes_by_another_process_are_seen_through_data_version(tmp_path: Path) -> None:
    path = tmp_path / "bans.sqlite"
    watcher, cli = Journal(path, Clock()), Journal(path, Clock())
    before = watcher.version()
    watcher.record([NewBan("192.0.2.1", "manual", "", 60)])
    assert watcher.version() == before  # its own writes do not count
    cli.unban(["192.0.2.1"])
    assert watcher.version() != before


def test_hundred_thousand_bans_are_recorded_and_read_back_quickly(tmp_path: Path) -> None:
    import time

    j = Journal(tmp_path / "bans.sqlite", Clock())
    j.record([NewBan(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "conn_flood", "", 600) for i in range(100_000)])
    started = time.perf_counter()
    live = j.live()
    assert len(live) == 100_000
    assert time.perf_counter() - started < 1.0


def test_record_with_the_counts_already_read_gives_the_same_rows(tmp_path: Path) -> None:
    clock = Clock()
    a, b = Journal(tmp_path / "a.sqlite", clock), Journal(tmp_path / "b.sqlite", clock)
    for j in (a, b):
        j.record([NewBan("192.0.2.1", "conn_flood", "", 600)])
    clock.t += 700
    bans = [NewBan("192.0.2.1", "conn_flood", "again", 600), NewBan("192.0.2.2", "manual", "", 60)]
    assert a.record(bans) == b.record(bans, previous=b.counts(["192.0.2.1", "192.0.2.2"]))
    assert [r.count for r in a.all()] == [2, 1] == [r.count for r in b.all()]


class Batches:
    def __init__(self) -> None:
        self.batches: list[str] = []

    def run(self, batch: str) -> str:
        self.batches.append(batch)
        return ""


def test_elements_rendered_by_sqlite_are_what_restore_writes_from_ban_objects(tmp_path: Path) -> None:
    from sipops.host.monitor.ban import MAX_TIMEOUT, Ban, NftBackend

    clock = Clock()
    j = Journal(tmp_path / "bans.sqlite", clock)
    j.record([
        NewBan("192.0.2.1", "conn_flood", "", 600), NewBan("192.0.2.2", "conn_flood", "", 90 * 86400),
        NewBan("2001:db8::1", "manual", "", 3600), NewBan("198.51.100.0/24", 'odd "rule" here', "", 60),
        NewBan("2001:db8:1::/48", "manual", "", 7200), NewBan("192.0.2.9", "manual", "", 10),
    ])  # fmt: skip
    j.unban(["192.0.2.9"])
    clock.t += 30
    rows = j.live_rows()
    by_objects, by_sql = Batches(), Batches()
    NftBackend(by_objects).restore(
        [Ban(a, max(1, round(u - s)), rule, max(1, round(u - clock.t))) for a, rule, s, u in rows]
    )
    NftBackend(by_sql).restore_rendered(j.live_elements(NftBackend.ELEMENT_SQL, MAX_TIMEOUT), j.live_rules())

    def elements(batch: str) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for line in batch.splitlines():
            head, _, body = line.partition(" { ")
            out.setdefault(head, set()).update(body.rstrip(" }").split(", "))
        return out

    assert elements(by_sql.batches[0]) == elements(by_objects.batches[0])
    assert 'comment "odd__rule__here"' in by_sql.batches[0]
    assert "192.0.2.2 timeout 2592000s expires 2592000s" in by_sql.batches[0]
    assert j.live_until() == {a: u for a, _r, _s, u in rows}

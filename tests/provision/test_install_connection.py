"""Install opens one connection per host: the files phase (the push engine) borrows it."""

from __future__ import annotations

from sipops.provision.install import lent
from sipops.remote.runner import LocalRunner, Runner


class Closing(LocalRunner):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_the_push_engine_borrows_installs_connection_and_only_a_reconnect_opens_another() -> None:
    own, opened = Closing(), []

    def connect() -> Runner:
        opened.append(Closing())
        return opened[-1]

    factory = lent(own, connect)
    borrowed = factory()
    assert borrowed.exec("echo hi", b"", 10).stdout == b"hi\n"
    borrowed.close()  # push_host closes what it was given: install's connection stays open
    assert not own.closed and opened == []
    assert factory() is opened[0]  # after a dropped connection, the agent's result is awaited on a new one

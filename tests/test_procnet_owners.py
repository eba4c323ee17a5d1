"""socket_owners: the /proc fd walk that names a listener's processes."""

from __future__ import annotations

import os
import socket

from sipops.host.monitor.procnet import socket_owners


def test_a_listener_of_this_process_is_found_with_this_pid() -> None:
    with socket.socket() as lsn:
        lsn.bind(("127.0.0.1", 0))
        lsn.listen(1)
        inode = os.fstat(lsn.fileno()).st_ino
        assert os.getpid() in socket_owners({inode})[inode]


def test_the_walk_stops_at_its_budget_of_links() -> None:
    with socket.socket() as lsn:
        inode = os.fstat(lsn.fileno()).st_ino
        assert socket_owners({inode}, max_fds=0) == {}
        assert socket_owners(set()) == {}


def test_a_report_names_the_listeners_processes_unless_told_not_to_walk_the_fds() -> None:
    from sipops.host.monitor.report import build_report

    with socket.socket() as lsn:
        lsn.bind(("127.0.0.1", 0))
        lsn.listen(1)
        port = lsn.getsockname()[1]
        params = {"ports": [port], "states": None, "top": 5, "limits": False}
        [named] = build_report(params)["ports"][0]["listeners"]
        [skipped] = build_report({**params, "owners": False})["ports"][0]["listeners"]
    assert any(os.getpid() in p["pids"] for p in named["processes"])
    assert skipped["processes"] is None and skipped["address"] == "127.0.0.1"

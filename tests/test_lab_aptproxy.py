"""The lab's package proxy forwards to the allowed mirror only (here a mirror stand-in on loopback)."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sipops.lab.aptproxy import apt_conf, make_handler


class _Mirror(BaseHTTPRequestHandler):
    """Stand-in for the Debian mirror: serves one file."""

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_GET(self) -> None:
        body = b"Package: curl\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serve(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def proxy() -> Iterator[tuple[int, int]]:
    mirror = ThreadingHTTPServer(("127.0.0.1", 0), _Mirror)
    prox = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(frozenset({"127.0.0.1"})))
    _serve(mirror), _serve(prox)
    yield prox.server_address[1], mirror.server_address[1]
    for server in (prox, mirror):
        server.shutdown()
        server.server_close()


def _get(proxy_port: int, url: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=5)
    conn.request("GET", url)
    resp = conn.getresponse()
    return resp.status, resp.read()


def test_requests_to_the_mirror_are_forwarded(proxy: tuple[int, int]) -> None:
    proxy_port, mirror_port = proxy
    assert _get(proxy_port, f"http://127.0.0.1:{mirror_port}/debian/dists/x") == (200, b"Package: curl\n")


def test_any_other_destination_is_refused_without_connecting(proxy: tuple[int, int]) -> None:
    proxy_port, _ = proxy
    status, _ = _get(proxy_port, "http://192.0.2.1/anything")
    assert status == 403


def test_the_apt_setting_points_at_the_bridge() -> None:
    assert 'Acquire::http::Proxy "http://198.18.0.1:3142";' in apt_conf("198.18.0.1")

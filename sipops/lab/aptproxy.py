"""A package proxy for lab hosts: they have no route off the lab network (like production hosts
without internet), yet `sipops install` must install what is missing with apt. This forwards
apt's HTTP requests to this machine's own Debian mirror and to nothing else.

Run by `lab up` on the bridge address; `lab down` stops it by pid.
"""

from __future__ import annotations

import argparse
import http.client
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

PORT = 3142  # apt-cacher-ng's port, so the apt setting reads familiar
_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "transfer-encoding",
}
_CHUNK = 1 << 16


def apt_conf(address: str) -> str:
    """The apt setting a lab host needs to use the proxy."""
    return f'// Written by sipops lab: packages through this machine\'s mirror only.\nAcquire::http::Proxy "http://{address}:{PORT}";\n'


def make_handler(allowed: frozenset[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return

        def do_GET(self) -> None:
            self._forward(body=True)

        def do_HEAD(self) -> None:
            self._forward(body=False)

        def _forward(self, *, body: bool) -> None:
            url = urlsplit(self.path)
            if url.scheme != "http" or url.hostname not in allowed:
                self.send_error(403, f"sipops lab proxy: only {', '.join(sorted(allowed))}")
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            target = url.path + (f"?{url.query}" if url.query else "")
            try:
                conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=60)
                conn.request(self.command, target, headers=headers)
                resp = conn.getresponse()
            except OSError as exc:
                self.send_error(502, f"sipops lab proxy: {url.hostname}: {exc}")
                return
            try:
                self.send_response(resp.status, resp.reason)
                length = resp.getheader("Content-Length")
                for key, value in resp.getheaders():
                    if key.lower() not in _HOP:
                        self.send_header(key, value)
                if length is None:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                if body:
                    while chunk := resp.read(_CHUNK):
                        self.wfile.write(chunk)
            finally:
                conn.close()

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True, help="address to bind (the lab bridge)")
    parser.add_argument("--allow", action="append", required=True, help="mirror host name (repeatable)")
    parser.add_argument("--port", type=int, default=PORT)
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer((args.listen, args.port), make_handler(frozenset(args.allow)))
    server.daemon_threads = True
    print(f"sipops lab apt proxy on {args.listen}:{args.port} for {', '.join(args.allow)}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())

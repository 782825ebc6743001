#!/usr/bin/env python3
"""The application of bench/proxy_bench.py: a publish proxy that lets every message through.

A twisted.web server on a free loopback port answering every POST with
``{"result": {}}`` at once (docs/hooks.md); it reads and parses the request
body, as an application would.  It announces ``port=N`` on stdout once
listening, and logs nothing else.

    python bench/_proxy_app.py
"""

from __future__ import annotations

import json
import sys

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

ANSWER = b'{"result": {}}'


class Proxy(Resource):
    """Every POST: the request's JSON read, and let through."""

    isLeaf = True

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        json.loads(request.content.read())
        request.setHeader(b"Content-Type", b"application/json")
        return ANSWER


def main() -> None:
    site = Site(Proxy())
    site.noisy = False
    listening = serverFromString(reactor, "tcp:0:interface=127.0.0.1:backlog=1024").listen(site)

    def announce(port: object) -> None:
        print(f"proxy listening on port={port.getHost().port}", flush=True)  # type: ignore[attr-defined]

    listening.addCallback(announce)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())

"""A complete webhook receiver: checks each request's signature, prints its events.

    pip install standardwebhooks
    CHATSERVICE_WEBHOOK_SECRET=whsec_... python receiver.py 9000

Then run chatservice with ``--webhook http://127.0.0.1:9000/`` and the same
secret.  Only the Python standard library and ``standardwebhooks``.
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

webhook = Webhook(os.environ["CHATSERVICE_WEBHOOK_SECRET"])


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        try:
            webhook.verify(body, {k.lower(): v for k, v in self.headers.items()})
        except WebhookVerificationError:
            self.send_response(400)  # not from chatservice: ignore it
            self.end_headers()
            return
        for event in json.loads(body)["events"]:
            # Events may come twice (after a failed post): skip ids seen before.
            print(event["type"], json.dumps(event["data"]), flush=True)
        self.send_response(204)  # anything but 2xx: sent again later
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass  # quiet: only the events are printed


HTTPServer(("127.0.0.1", int(sys.argv[1])), Receiver).serve_forever()

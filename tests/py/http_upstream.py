#!/usr/bin/env python3
"""A threaded HTTP server for files, that logs the peer of every connection.

    http_upstream.py ADDR PORT DIR LOG

Serves DIR on ADDR:PORT (HTTP/1.0: a connection per request) and appends `IP:PORT` of each
connection's peer to LOG. Prints `serving` once it listens.
"""

import functools
import http.server
import sys
import threading


def main():
    addr, port, root, log = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    lock = threading.Lock()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def setup(self):
            super().setup()
            with lock, open(log, "a") as f:
                f.write(f"{self.client_address[0]}:{self.client_address[1]}\n")

        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        request_queue_size = 128

    handler = functools.partial(Handler, directory=root)
    server = Server((addr, port), handler)
    print("serving", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

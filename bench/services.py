#!/usr/bin/env python3
"""The benchmark's services: each one timestamps its own life (CLOCK_REALTIME, `time.time()`)
into a file, so that every tool is observed the same way.

    services.py ready PORT DELAY OUT MODE
        sleeps DELAY seconds (`@FILE`: the number in FILE), then becomes ready and appends `r TS` to OUT just before it tells
        anyone: MODE `http` (listens on 127.0.0.1:PORT and answers 200 to any GET/HEAD),
        `notify` (sd_notify READY=1 to $NOTIFY_SOCKET), `fd3` (s6's notification-fd: a newline
        on fd 3), `file:PATH` (creates PATH). It then serves HTTP (or sleeps) until SIGTERM,
        appending `t TS` when the signal arrives and `x TS` just before it exits.

The crash loop and the log writer are bash scripts (bench.py writes them): bash's
`$EPOCHREALTIME` needs no fork, so the timestamps cost nothing.
"""

import http.server
import os
import signal
import socket
import sys
import threading
import time


def append(path, tag):
    with open(path, "a") as f:
        f.write(f"{tag} {time.time():.6f}\n")


class Quiet(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


def ready(port, delay, out, mode):
    stop = threading.Event()

    def on_term(*_):
        append(out, "t")
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    time.sleep(delay)
    server = None
    if mode == "http":
        server = http.server.HTTPServer(("127.0.0.1", port), Quiet)
        append(out, "r")
        threading.Thread(target=server.serve_forever, daemon=True).start()
    elif mode == "notify":
        append(out, "r")
        addr = os.environ["NOTIFY_SOCKET"]
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"READY=1", addr)
    elif mode == "fd3":
        append(out, "r")
        os.write(3, b"\n")
        os.close(3)
    elif mode.startswith("file:"):
        append(out, "r")
        open(mode[5:], "w").close()
    else:
        sys.exit(f"unknown mode {mode}")
    stop.wait()
    append(out, "x")
    os._exit(0)


if __name__ == "__main__":
    if sys.argv[1] == "ready":
        delay = sys.argv[3]
        if delay.startswith("@"):  # read from a file, so that a trial can vary it without reconfiguring the tool
            delay = open(delay[1:]).read()
        ready(int(sys.argv[2]), float(delay), sys.argv[4], sys.argv[5])
    else:
        sys.exit(__doc__)

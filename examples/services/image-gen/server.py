#!/usr/bin/env python3
"""Fake image generation service: GET /health, POST /generate returns a dummy 1x1 PNG (base64)."""
import argparse, json, signal, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PNG_1X1 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")


class Handler(BaseHTTPRequestHandler):
    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self.reply(200, {"status": "ok"})
        elif self.path == "/":
            self.reply(200, {"service": "image-gen", "endpoints": ["POST /generate"]})
        else:
            self.reply(404, {"detail": "not found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            req = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self.reply(422, {"detail": "body must be JSON"})
        if self.path != "/generate":
            return self.reply(404, {"detail": "not found"})
        self.reply(200, {"prompt": req.get("prompt", ""), "format": "png", "image_base64": PNG_1X1})

    def log_message(self, fmt, *args):
        print("image-gen: %s %s" % (self.address_string(), fmt % args), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8101)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"image-gen listening on port {args.port}", flush=True)
    try:
        server.serve_forever()
    finally:
        print("image-gen: SIGTERM received, exiting", flush=True)

#!/usr/bin/env python3
"""Fake embeddings service (CPU only): GET /health, POST /embed returns deterministic vectors."""
import argparse, hashlib, json, signal, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def embed(text, dims=8):
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 255.0, 4) for b in digest[:dims]]


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
            self.reply(200, {"service": "embeddings", "endpoints": ["POST /embed"]})
        else:
            self.reply(404, {"detail": "not found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            req = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self.reply(422, {"detail": "body must be JSON"})
        if self.path != "/embed":
            return self.reply(404, {"detail": "not found"})
        texts = req.get("input") or []
        texts = [texts] if isinstance(texts, str) else texts
        self.reply(200, {"model": "fake-embed-8d", "data": [embed(str(t)) for t in texts]})

    def log_message(self, fmt, *args):
        print("embeddings: %s %s" % (self.address_string(), fmt % args), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8103)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"embeddings listening on port {args.port}", flush=True)
    try:
        server.serve_forever()
    finally:
        print("embeddings: SIGTERM received, exiting", flush=True)

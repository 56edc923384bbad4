#!/usr/bin/env python3
"""Fake LLM chat service: GET /health, POST /chat echoes the last user message back."""
import argparse, json, signal, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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
            self.reply(200, {"service": "llm-chat", "endpoints": ["POST /chat"]})
        else:
            self.reply(404, {"detail": "not found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            req = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self.reply(422, {"detail": "body must be JSON"})
        if self.path != "/chat":
            return self.reply(404, {"detail": "not found"})
        messages = req.get("messages") or [{"role": "user", "content": ""}]
        text = "You said: " + str(messages[-1].get("content", ""))
        self.reply(200, {"model": "fake-llm", "message": {"role": "assistant", "content": text}})

    def log_message(self, fmt, *args):
        print("llm-chat: %s %s" % (self.address_string(), fmt % args), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8102)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"llm-chat listening on port {args.port}", flush=True)
    try:
        server.serve_forever()
    finally:
        print("llm-chat: SIGTERM received, exiting", flush=True)

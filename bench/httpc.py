"""HTTP for the harness: plain requests, a Server-Sent Events listener, and a fixed-rate load
client that measures latency from each request's scheduled send time (so a slow server is not
hidden by the client waiting for it: no coordinated omission)."""

import asyncio
import http.client
import json
import threading
import time
import urllib.parse


def request(url, method="GET", body=None, timeout=120):
    """(status, parsed JSON or text)."""
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        c.request(method, u.path + (f"?{u.query}" if u.query else ""), body=data, headers=headers)
        r = c.getresponse()
        text = r.read().decode()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text
    finally:
        c.close()


class Sse:
    """Reads `GET url` as Server-Sent Events on a thread; `wait(pred, timeout)` returns the
    arrival time (time.time()) of the first event whose JSON satisfies `pred` since the last
    `mark()`."""

    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port)
        self.conn.request("GET", u.path + (f"?{u.query}" if u.query else ""), headers={"Accept": "text/event-stream"})
        self.resp = self.conn.getresponse()
        self.cv = threading.Condition()
        self.events = []  # (arrival, data)
        self.cursor = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            while True:
                line = self.resp.fp.readline()
                if not line:
                    return
                if line.startswith(b"data:"):
                    at = time.time()
                    try:
                        data = json.loads(line[5:])
                    except ValueError:
                        continue
                    with self.cv:
                        self.events.append((at, data))
                        self.cv.notify_all()
        except (OSError, ValueError):
            return

    def mark(self):
        with self.cv:
            self.cursor = len(self.events)

    def wait(self, pred, timeout):
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                for i in range(self.cursor, len(self.events)):
                    at, data = self.events[i]
                    if pred(data):
                        self.cursor = i + 1
                        return at
                self.cursor = len(self.events)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no matching event")
                self.cv.wait(left)

    def close(self):
        try:
            self.conn.sock.close()
        except OSError:
            pass


async def _read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


LATE_S = 30


async def _load(host, port, raw, rate, duration, connections):
    total = int(rate * duration)
    queue = asyncio.Queue()
    latencies, errors = [], []
    t0 = time.perf_counter() + 0.05

    async def worker():
        reader = writer = None
        while True:
            scheduled = await queue.get()
            if scheduled is None:
                break
            # A server this far behind is not waited for: what is still queued counts as an
            # error ("late"), so a run ends within `LATE_S` of its duration.
            if time.perf_counter() - scheduled > LATE_S:
                errors.append("late")
                continue
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(raw)
                status = await _read_response(reader)
                done = time.perf_counter()
                if 200 <= status < 300:
                    latencies.append(done - scheduled)
                else:
                    errors.append(status)
            except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                errors.append(type(e).__name__)
                writer = None
        if writer is not None:
            writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    for i in range(total):
        at = t0 + i / rate
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(at)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - t0
    return latencies, errors, elapsed


def fixed_rate(url, rate, duration, connections=32, method="GET", body=b"", content_type=None):
    """Send `rate` requests/s for `duration` s over `connections` keep-alive connections.
    Returns (latencies in s, errors, achieved requests/s)."""
    u = urllib.parse.urlsplit(url)
    path = u.path + (f"?{u.query}" if u.query else "")
    head = f"{method} {path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nContent-Length: {len(body)}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    raw = (head + "\r\n").encode() + body
    latencies, errors, elapsed = asyncio.run(_load(u.hostname, u.port, raw, rate, duration, connections))
    return latencies, errors, len(latencies) / elapsed if elapsed > 0 else 0.0

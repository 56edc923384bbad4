#!/usr/bin/env python3
"""Drives the web dashboard (`GET /`) in a real headless Chromium through Selenium, for
tests/web.rs. Reads one JSON object on stdin:

  {"scenario": "live" | "token" | "gpus" | "screenshots", "url": DAEMON_URL, "services": DIR,
   "token": TOKEN (token), "out": DIR (screenshots)}

Every wait is on a condition with a deadline. Prints what it checked; exits non-zero with the
reason (and a screenshot plus the page's console under $TMPDIR) when a check fails.
"""
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

WAIT = 30  # seconds for any one condition on a loaded machine
CHROMIUM = os.environ.get("NANNY_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("NANNY_CHROMEDRIVER", "/usr/bin/chromedriver")


def log(*args):
    print(*args, flush=True)


def browser(width=1400, height=900):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--window-size={width},{height}", "--no-proxy-server", "--hide-scrollbars"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


class Page:
    def __init__(self, driver):
        self.d = driver

    def wait(self, what, cond, timeout=WAIT):
        def safe(_):
            try:
                return cond()
            except StaleElementReferenceException:
                return False
        try:
            return WebDriverWait(self.d, timeout, poll_frequency=0.1).until(safe)
        except TimeoutException:
            raise AssertionError(f"timed out after {timeout} s waiting until {what}") from None

    def q(self, css):
        return self.d.find_elements(By.CSS_SELECTOR, css)

    def one(self, css):
        found = self.q(css)
        return found[0] if found else None

    def text(self, css):
        """The element's text, found again if the page re-rendered it in between (the GPU
        panel is rebuilt every 2 s)."""
        for _ in range(10):
            e = self.one(css)
            try:
                return e.text if e else ""
            except StaleElementReferenceException:
                continue
        raise AssertionError(f"{css} kept being re-rendered while read")

    def row(self, name):
        return f'tbody.svc[data-name="{name}"]'

    def status(self, name):
        e = self.one(self.row(name))
        return e.get_attribute("data-status") if e else None

    def wait_status(self, name, status, timeout=WAIT):
        self.wait(f"{name}'s row shows {status} (it shows {self.status(name)})",
                  lambda: self.status(name) == status and self.text(self.row(name) + " .status .word") == status,
                  timeout)

    def click(self, css):
        self.wait(f"{css} is there and enabled", lambda: self.one(css) is not None and self.one(css).is_enabled())
        self.one(css).click()

    def action(self, name, action):
        self.click(f'{self.row(name)} button[data-action="{action}"]')

    def rows(self):
        return [e.get_attribute("data-name") for e in self.q("tbody.svc")]


def api(url, path, method="GET", token=None, body=None, answer=False):
    """The answer's JSON; with `answer`, (status, JSON) whatever the status."""
    request = urllib.request.Request(url + path, method=method, data=None if body is None else json.dumps(body).encode())
    if token:
        request.add_header("Authorization", "Bearer " + token)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return (r.status, json.loads(r.read())) if answer else json.loads(r.read())
    except urllib.error.HTTPError as e:
        if not answer:
            raise
        return e.code, json.loads(e.read())


def in_background(f, *args):
    """Runs f(*args) on a thread; the returned function waits for and gives its result."""
    out = {}
    t = threading.Thread(target=lambda: out.update(value=f(*args)), daemon=True)
    t.start()
    return lambda: (t.join(WAIT), out["value"])[1]


def fmt_bytes(n):
    """Bytes as app.js's fmtBytes writes them."""
    units, i = ["B", "KiB", "MiB", "GiB", "TiB"], 0
    while n >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{n:.{1 if n < 10 and i > 0 else 0}f} {units[i]}"


class Proxy:
    """A TCP relay in front of the daemon that the test can cut and restore on the same port:
    the browser's connections drop as they do when the network or the daemon goes away."""

    def __init__(self, target_port):
        self.target = target_port
        self.conns = []
        self.lock = threading.Lock()
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.listener = None
        self.up()

    def up(self):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self.listener = s
        threading.Thread(target=self.accept, args=(s,), daemon=True).start()

    def accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pump, args=(a, b), daemon=True).start()

    @staticmethod
    def pump(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def down(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            conns, self.conns = self.conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()


def live(cfg):
    """No token: the list, actions, GPU conflict, crash and restart, logs, reconnect, invalid."""
    url, services = cfg["url"], cfg["services"]
    proxy = Proxy(int(url.rsplit(":", 1)[1]))
    page_url = f"http://127.0.0.1:{proxy.port}/"
    d = browser()
    p = Page(d)
    try:
        d.get(page_url)
        for name in ["alpha", "crasher", "gpu-a", "gpu-b", "talker", "image-gen", "llm-chat", "embeddings"]:
            p.wait(f"{name} is listed", lambda: name in p.rows())
        p.wait("the event stream is live", lambda: p.text("#conn") == "live")
        assert "image-generation" in p.text(p.row("image-gen") + " .meta"), "tags are shown"
        assert "GPU" in p.text(p.row("image-gen") + " td.gpu"), "GPU services are marked"
        d.execute_script("window.__noReload = 1")
        log("ok: the page lists the example and test services")

        # Filters: only the GPU services, then all again.
        Select(d.find_element(By.ID, "f-gpu")).select_by_value("gpu")
        shown = lambda: sorted(e.get_attribute("data-name") for e in p.q("tbody.svc") if e.is_displayed())
        p.wait(f"only the GPU services are shown ({shown()})", lambda: shown() == ["gpu-a", "gpu-b", "image-gen", "llm-chat"])
        Select(d.find_element(By.ID, "f-gpu")).select_by_value("")
        p.wait("every service is shown again", lambda: len(shown()) == 8)

        # Start by a click: its progress, then the row turns running without a reload.
        p.wait_status("alpha", "stopped")
        p.action("alpha", "start")
        p.wait("the start shows it waits for health",
               lambda: p.text(p.row("alpha") + " .message.progress .steps li.current") == "waiting for health")
        p.wait_status("alpha", "running")
        assert d.execute_script("return window.__noReload") == 1, "the page was reloaded"
        p.wait("alpha's health shows its HTTP code", lambda: p.text(p.row("alpha") + " .health .code").startswith("200"))
        log("ok: filter by GPU; start by a click with its progress, row running, health 200, no reload")

        # A start that fails says why and shows the last lines of output.
        p.action("crasher", "start")
        failure = p.row("crasher") + " .message.failure"
        p.wait("the failure is explained", lambda: "exited with code 3" in p.text(failure))
        assert "CUDA out of memory" in p.text(failure + " pre"), p.text(failure)
        p.wait_status("crasher", "failed")
        log("ok: a failed start shows the reason and the last log lines")

        # Two GPU services: the conflict in words, then the one-click force.
        p.action("gpu-a", "start")
        p.wait_status("gpu-a", "running")
        p.action("gpu-b", "start")
        conflict = p.row("gpu-b") + " .message.conflict"
        p.wait("the conflict is explained", lambda: "gpu-a holds the GPU. Stop it and start gpu-b?" in p.text(conflict))
        p.click(conflict + ' button[data-action="force"]')
        p.wait_status("gpu-b", "running")
        p.wait_status("gpu-a", "stopped")
        p.wait("the GPU panel names the holder", lambda: "gpu-b holds the GPU" in p.text("#gpu-body"))
        log("ok: GPU conflict explained, force start worked, GPU panel updated")

        # A crash: kill the process by pid; the row and the timeline show the restart.
        pid = api(url, "/services/alpha/status")["pid"]
        os.kill(pid, signal.SIGKILL)
        p.wait("alpha's row counts the restart", lambda: p.text(p.row("alpha") + " td.restarts") == "1")
        p.wait_status("alpha", "running")
        p.action("alpha", "details")
        p.click("#tab-timeline")
        p.wait("the timeline shows the crash", lambda: any("SIGKILL" in e.text or "signal" in e.text
                                                          for e in p.q("#timeline li.event.exited")))
        assert p.q("#timeline li.event.backoff"), "the timeline shows the restart delay"
        log("ok: killed by pid, restart in the row and the timeline")

        # Logs: a line the service prints shows up live, marked as stderr.
        p.action("talker", "start")
        p.wait_status("talker", "running")
        p.action("talker", "details")
        p.click("#tab-logs")
        p.wait("the log view follows", lambda: p.text("#log-state") == "following")
        with open(os.path.join(services, "talker", "say.tmp"), "w") as f:
            f.write("hello from the dashboard test\n")
        os.rename(os.path.join(services, "talker", "say.tmp"), os.path.join(services, "talker", "say"))
        p.wait("the new line is shown", lambda: any("hello from the dashboard test" in e.text
                                                    for e in p.q("#log-lines li.line.stderr")))
        d.find_element(By.ID, "log-search").send_keys("hello from")
        p.wait("the search keeps only matching lines",
               lambda: all("hello from" in e.text for e in p.q("#log-lines li.line") if e.is_displayed()))
        log("ok: log view shows a new stderr line live; search filters")

        # A dropped connection: "reconnecting", then every event it missed, by Last-Event-ID.
        p.click("#tab-timeline")
        before = api(url, "/events?limit=1")["last_id"]
        proxy.down()
        p.wait("the page says it is reconnecting", lambda: p.text("#conn") == "reconnecting…")
        api(url, "/services/talker/stop", method="POST")
        missed = [e["id"] for e in api(url, f"/events?service=talker&since={before}&limit=100")["events"]]
        assert missed, "stopping talker made events"
        proxy.up()
        p.wait("the page is live again", lambda: p.text("#conn") == "live")
        p.wait_status("talker", "stopped")
        p.wait("the timeline got every event sent while disconnected",
               lambda: all(p.one(f'#timeline li[data-id="{i}"]') for i in missed))
        assert d.execute_script("return window.__noReload") == 1, "the page was reloaded"
        # The log view resumed too: the lines written meanwhile, and none shown twice.
        said = api(url, "/services/talker/logs?tail=1")["lines"][-1]["line"]
        lines = lambda: [e.get_attribute("textContent") for e in p.q("#log-lines li.line .text")]
        p.wait(f"the log view shows {said!r}, written while disconnected", lambda: said in lines())
        assert lines().count("hello from the dashboard test") == 1, lines()
        log(f"ok: reconnected and resumed: events {missed} arrived, log lines too ({said!r}), none twice")

        # An invalid manifest dropped in and rediscovered is shown with file, line and column.
        os.makedirs(os.path.join(services, "broken"))
        with open(os.path.join(services, "broken", "service.yaml"), "w") as f:
            f.write("name: broken\ncommand: [sh, -c, 'true']\nhealth_timeout: soon\n")
        p.click("#rediscover")
        p.wait("the invalid manifest is shown", lambda: "broken/service.yaml" in p.text("#invalid"))
        text = p.text("#invalid")
        assert "line 3:" in text and "health_timeout" in text, text
        log("ok: invalid manifest shown with its file, line and field")
    except BaseException:
        evidence(d)
        raise
    finally:
        d.quit()
        proxy.down()


def gpus(cfg):
    """A `--gpu-policy vram` daemon with two declared 24 GiB GPUs and services `a`, `b` (16 GiB),
    `c`, `d` (12 GiB): the panel against `GET /gpus`, the wait queue, the 409 in words, force,
    and the wait button."""
    url = cfg["url"]
    d = browser()
    p = Page(d)
    gpu_card = lambda i: f'#gpu-body .gpu-card[data-index="{i}"]'
    queued = lambda: [e.get_attribute("data-service") for e in p.q("#gpu-body .queue tbody tr")]
    held = lambda g: sorted(h["service"] for x in g["gpus"] for h in x["holders"])

    def panel_matches(what):
        """Every GPU's holders with their declared memory, and its free memory, as /gpus says."""
        answer = api(url, "/gpus")
        for gpu in answer["gpus"]:
            card = gpu_card(gpu["index"])
            rows = {e.get_attribute("data-service"): e.text for e in p.q(card + " tbody tr")}
            if sorted(rows) != sorted(h["service"] for h in gpu["holders"]):
                return False
            if any(fmt_bytes(h["vram_bytes"]) not in rows[h["service"]] for h in gpu["holders"]):
                return False
            if f"{fmt_bytes(gpu['free_bytes'])} free" not in p.text(card + " .mem-line"):
                return False
        return what(answer) if what else True

    try:
        d.get(url + "/")
        for name in "abcd":
            p.wait(f"{name} is listed", lambda: name in p.rows())
        p.wait("the panel says the policy", lambda: "shared by declared memory" in p.text("#gpu-body"))
        assert len(p.q("#gpu-body .gpu-card")) == 2, p.text("#gpu-body")

        # Two services placed: each holds a GPU with its declared 16 GiB; 7 GiB left on each.
        for name in "ab":
            api(url, f"/services/{name}/start", method="POST")
        p.wait("the panel shows a and b holding, and free memory as /gpus counts it",
               lambda: panel_matches(lambda g: held(g) == ["a", "b"]))
        assert "16 GiB of 24 GiB used · 7.0 GiB free" in p.text(gpu_card(0)), p.text(gpu_card(0))
        p.wait("the holders' rows are marked", lambda: all("holds" in p.one(p.row(n) + " td.gpu").get_attribute("class") for n in "ab"))
        log("ok: the panel shows each GPU's holders, declared memory and free memory as /gpus counts it")

        # A start queued from elsewhere shows in the queue, and leaves it when it gives up.
        gave_up = in_background(api, url, "/services/c/start", "POST", None, {"wait": True, "timeout": 4}, True)
        p.wait("c waits in the panel's queue", lambda: queued() == ["c"])
        assert "12 GiB" in p.text("#gpu-body .queue"), p.text("#gpu-body .queue")
        code, body = gave_up()
        assert code == 503 and "waited 4 s" in body["detail"], body
        p.wait("c left the queue when it gave up", lambda: queued() == [] and p.one("#gpu-body .queue-empty"))
        # ... and when it is placed: b stops, c gets GPU 1.
        placed = in_background(api, url, "/services/c/start", "POST", None, {"wait": True, "timeout": 60}, True)
        p.wait("c waits in the panel's queue again", lambda: queued() == ["c"])
        api(url, "/services/b/stop", method="POST")
        code, body = placed()
        assert code == 200, body
        p.wait("c left the queue and holds a GPU in the panel",
               lambda: queued() == [] and panel_matches(lambda g: "c" in held(g)))
        log("ok: a queued start shows in the panel's queue and leaves it on timeout and when placed")

        # A start that does not fit: the refusal in words, naming who would have to stop.
        code, refusal = api(url, "/services/d/start", method="POST", answer=True)
        assert code == 409 and refusal["would_stop"], refusal
        p.action("d", "start")
        conflict = p.row("d") + " .message.conflict"
        p.wait("the refusal is explained", lambda: "No room on the GPUs for d: it needs 12 GiB." in p.text(conflict))
        text = p.text(conflict)
        for w in refusal["would_stop"]:
            assert f"{w['service']} (frees {fmt_bytes(w['frees_bytes'])})" in text, text
        assert p.one(conflict + ' button[data-action="wait"]'), "the conflict offers to wait"
        p.click(conflict + ' button[data-action="force"]')
        p.wait_status("d", "running")
        for w in refusal["would_stop"]:
            p.wait_status(w["service"], "stopped")
        p.wait("the panel shows d holding", lambda: panel_matches(lambda g: "d" in held(g)))
        log(f"ok: the refusal names {[w['service'] for w in refusal['would_stop']]}; the one-click force started d")

        # "Wait for the GPU": b queues from the page and starts once its room is freed.
        p.action("b", "start")
        conflict = p.row("b") + " .message.conflict"
        p.wait("b's refusal is explained", lambda: "No room on the GPUs for b" in p.text(conflict))
        p.click(conflict + ' button[data-action="wait"]')
        p.wait("b waits in the panel's queue", lambda: queued() == ["b"])
        p.wait("b's row says it waits", lambda: "Waiting for room on the GPU" in p.text(p.row("b") + " .message.progress"))
        holders = held(api(url, "/gpus"))
        for name in holders:
            api(url, f"/services/{name}/stop", method="POST")
        p.wait_status("b", "running")
        p.wait("b left the queue and its row says nothing more", lambda: queued() == [] and not p.one(p.row("b") + " .message"))
        log(f"ok: waiting from the conflict box queued b; it started once {holders} stopped")
    except BaseException:
        evidence(d)
        raise
    finally:
        d.quit()


def token(cfg):
    """With a token: the form, a wrong token refused, the right one kept; never in a URL."""
    url, secret = cfg["url"], cfg["token"]
    d = browser()
    p = Page(d)
    try:
        d.get(url + "/")
        p.wait("the page asks for the token", lambda: p.one("#login").is_displayed())
        assert not p.one("#app").is_displayed()
        field = d.find_element(By.ID, "token")
        field.send_keys("0123456789abcdef-not-the-token")
        p.click('#login button[type="submit"]')
        p.wait("a wrong token is refused", lambda: "refused" in p.text("#login-error"))
        field.clear()
        field.send_keys(secret)
        p.click('#login button[type="submit"]')
        p.wait("the services are listed", lambda: "alpha" in p.rows())
        p.wait("the event stream is live", lambda: p.text("#conn") == "live")
        # Started from elsewhere: the stream (with the token) brings it to the row.
        api(url, "/services/alpha/start", method="POST", token=secret)
        p.wait_status("alpha", "running")
        p.action("alpha", "stop")
        p.wait_status("alpha", "stopped")
        log("ok: the token form, a wrong token refused, the API and the stream with the token")

        d.refresh()
        p.wait("the kept token is used after a reload", lambda: "alpha" in p.rows())
        assert not p.one("#login").is_displayed()
        # A token that stops working brings the form back.
        d.execute_script("localStorage.setItem('nanny.token', '0123456789abcdef-old-token')")
        d.refresh()
        p.wait("a refused token brings the form back", lambda: p.one("#login").is_displayed())
        log("ok: token kept across reloads; a 401 brings the form back")

        urls, authorized = [], set()
        for entry in d.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                request = message["params"]["request"]
                urls.append(request["url"])
                if request.get("headers", {}).get("Authorization") == "Bearer " + secret:
                    authorized.add(request["url"].split("?")[0].replace(url, ""))
        assert urls, "the performance log recorded the requests"
        leaked = [u for u in urls + [d.current_url] if secret in u]
        assert not leaked, f"the token is in a URL: {leaked}"
        for path in ["/services", "/events/stream"]:
            assert path in authorized, f"{path} was not sent with the token: {sorted(authorized)}"
        log(f"ok: the token is in none of {len(urls)} URLs; sent as a header")
    except BaseException:
        evidence(d)
        raise
    finally:
        d.quit()


def screenshots(cfg):
    """docs/dashboard-*.png: wide light and dark, narrow (phone-sized), and the GPU panel."""
    out = cfg["out"]
    d = browser()
    p = Page(d)
    try:
        d.get(cfg["url"] + "/")
        p.wait("the services are listed", lambda: len(p.rows()) >= 3)
        for name in cfg.get("running", []):
            p.wait_status(name, "running", 60)
        p.wait("failures are shown", lambda: all(p.one(p.row(n) + " .message") for n in cfg.get("failed", [])))
        p.wait("health checks are shown", lambda: all("ms" in p.text(p.row(n) + " .health") for n in cfg.get("running", [])))
        p.wait("CPU and memory are measured", lambda: all(p.text(p.row(n) + " td.mem") != "—" and p.text(p.row(n) + " td.cpu") != "—"
                                                          for n in cfg.get("running", [])), 60)
        if cfg.get("conflict"):
            p.action(cfg["conflict"], "start")
            p.wait("the conflict is explained", lambda: p.one(p.row(cfg["conflict"]) + " .message.conflict"))
        shots = [("dashboard-wide.png", 1400, 900, "light"), ("dashboard-wide-dark.png", 1400, 900, "dark"),
                 ("dashboard-narrow.png", 390, 844, "light")]
        for file, width, height, scheme in shots:
            d.execute_cdp_cmd("Emulation.setEmulatedMedia",
                              {"features": [{"name": "prefers-color-scheme", "value": scheme}]})
            d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                              {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 700})
            d.execute_script("window.scrollTo(0, 0)")
            d.execute_async_script("requestAnimationFrame(() => requestAnimationFrame(arguments[0]))")
            d.save_screenshot(os.path.join(out, file))
            log(f"wrote {file}")
        # The GPU panel alone, light, wide.
        d.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "light"}]})
        d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": False})
        d.execute_script("document.getElementById('gpu').scrollIntoView()")
        d.execute_async_script("requestAnimationFrame(() => requestAnimationFrame(arguments[0]))")
        with open(os.path.join(out, "dashboard-gpu.png"), "wb") as f:
            f.write(d.find_element(By.ID, "gpu").screenshot_as_png)
        log("wrote dashboard-gpu.png")
    except BaseException:
        evidence(d)
        raise
    finally:
        d.quit()


def evidence(d):
    """What the page looked like and said, for the failure message."""
    try:
        path = os.path.join(tempfile.gettempdir(), f"nanny-web-failure-{os.getpid()}.png")
        d.save_screenshot(path)
        log(f"screenshot: {path}")
        for entry in d.get_log("browser"):
            log("console:", entry.get("level"), entry.get("message"))
        log("page text:\n" + d.find_element(By.TAG_NAME, "body").text)
    except Exception as e:  # the browser may be gone
        log(f"(no evidence: {e})")


if __name__ == "__main__":
    config = json.load(sys.stdin)
    started = time.monotonic()
    {"live": live, "token": token, "gpus": gpus, "screenshots": screenshots}[config["scenario"]](config)
    log(f"done in {time.monotonic() - started:.1f} s")

"""One adapter per supervisor. Each configures the same service the same way (where the tool
allows it) and runs it; the workloads in bench.py observe every tool alike: the services
timestamp themselves, and service processes are counted in /proc."""

import os
import re
import shutil
import subprocess
import sys
import threading
import time
import xmlrpc.client

import httpc
import procs

HERE = os.path.dirname(os.path.abspath(__file__))
SERVICES = os.path.join(HERE, "services.py")
PY = sys.executable


class Cannot(Exception):
    """The tool cannot do this workload at all (the message says why)."""


class Missed(Exception):
    """One trial where the tool never reported what it should have (the message says what it
    did): counted, and the other trials go on."""


def write(path, text, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    if mode:
        os.chmod(path, mode)


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NANNY_", "NOTIFY_SOCKET", "LISTEN_", "WATCHDOG_"))}
    env.update(extra or {})
    return env


def quote(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Tool:
    name = "?"
    comms = set()
    # How the restart delay was set for the crash loop (the table's footnote).
    restart_delay = ""

    def available(self):
        return None  # or a reason why not

    def daemon_pids(self):
        return procs.supervisor_pids(self.proc.pid, self.comms)

    def shutdown(self):
        """SIGTERM the daemon (it stops its services first), wait, then kill what is left."""
        procs.stop(self.proc, timeout=60)

    def readiness(self, mode):
        """What reports readiness for `mode` (`http`: an HTTP health check; `self`: the
        service notifies); raises Cannot."""
        raise Cannot("no such mechanism")


# --- nanny -----------------------------------------------------------------------------------


class Nanny(Tool):
    name = "nanny"
    comms = {"nanny"}
    restart_delay = "`restart_delay: 0`"

    def __init__(self, binary):
        self.binary = binary
        self._notify = None

    def available(self):
        if not os.access(self.binary, os.X_OK):
            return f"{self.binary} not built"

    def supports_notify(self, ws):
        """Whether this build's manifest validator accepts `ready: notify`."""
        if self._notify is None:
            d = os.path.join(ws, "probe-notify")
            write(os.path.join(d, "probe/service.yaml"), "name: probe\ncommand: [sleep, '1']\nready: notify\n")
            r = subprocess.run([self.binary, "validate", d], capture_output=True, env=clean_env())
            self._notify = r.returncode == 0
        return self._notify

    def start(self, ws, manifests):
        """Write `manifests` ({name: yaml}) and start the daemon on them."""
        sdir = os.path.join(ws, "services")
        for name, text in manifests.items():
            write(os.path.join(sdir, name, "service.yaml"), text)
        err = open(os.path.join(ws, "nanny.stderr"), "w")
        self.proc = procs.spawn(
            [self.binary, "serve", "--listen", "127.0.0.1:0", "--services", sdir, "--state-dir", os.path.join(ws, "state")],
            stdout=subprocess.PIPE,
            stderr=err,
            env=clean_env({"NANNY_LOG": "warn"}),
        )
        line = self.proc.stdout.readline().decode()
        if not line.startswith("nanny listening on "):
            raise RuntimeError(f"nanny did not start: {line!r} (see {err.name})")
        self.url = line.split()[-1]
        return self.proc

    def post(self, path, body=None):
        return httpc.request(self.url + path, "POST", body)

    def get(self, path):
        return httpc.request(self.url + path)

    def crash_start(self, ws, cmd):
        self.start(ws, {"crash": f"name: crash\ncommand: {yaml_list(cmd)}\nrestart: always\nrestart_delay: 0\nmax_restarts: 10000\n"})
        threading.Thread(target=self.post, args=("/services/crash/start",), daemon=True).start()

    def crash_stop(self):
        self.post("/services/crash/stop")
        self.shutdown()

    def ready_setup(self, ws, mode, port, delay_file, out):
        cmd = [PY, SERVICES, "ready", str(port), "@" + delay_file, out]
        if mode == "http":
            extra = f"health_endpoint: http://127.0.0.1:{port}/\n"
            cmd.append("http")
        else:
            if not self.supports_notify(ws):
                raise Cannot("not yet: this build's manifest has no `ready: notify`")
            extra = "ready: notify\n"
            cmd.append("notify")
        self.start(ws, {"ready": f"name: ready\ncommand: {yaml_list(cmd)}\n{extra}restart: never\n"})
        self.sse = httpc.Sse(self.url + "/events/stream?service=ready")

    def ready_trial(self):
        """Start the service; the arrival time of its `healthy` event on the event stream."""
        self.sse.mark()
        status, body = self.post("/services/ready/start")
        if status != 200:
            raise RuntimeError(f"start answered {status}: {body}")
        at = self.sse.wait(lambda e: e.get("kind") == "healthy" and e.get("service") == "ready", 30)
        self.post("/services/ready/stop")
        return at

    def ready_teardown(self):
        self.sse.close()
        self.shutdown()

    def scale_start(self, ws, n, sleep_arg):
        self.start(ws, {f"s{i:04d}": f"name: s{i:04d}\ncommand: [sleep, '{sleep_arg}']\nautostart: true\n" for i in range(n)})

    def api_target(self):
        return dict(url=self.url + "/services", what="`GET /services`")

    def logs_start(self, ws, cmd):
        self.start(ws, {"spew": f"name: spew\ncommand: {yaml_list(cmd)}\nrestart: never\n"})
        threading.Thread(target=self.post, args=("/services/spew/start",), daemon=True).start()


def yaml_list(items):
    return "[" + ", ".join(quote(i) for i in items) + "]"


# --- supervisord -----------------------------------------------------------------------------


LISTENER = r"""
import sys, time
out = open(sys.argv[1], "a", buffering=1)
while True:
    sys.stdout.write("READY\n"); sys.stdout.flush()
    header = dict(x.split(":", 1) for x in sys.stdin.readline().split())
    payload = sys.stdin.read(int(header["len"]))
    at = time.time()
    fields = dict(x.split(":", 1) for x in payload.split("\n", 1)[0].split())
    out.write(f"{at:.6f} {header['eventname']} {fields.get('processname')}\n")
    sys.stdout.write("RESULT 2\nOK"); sys.stdout.flush()
"""


class Supervisord(Tool):
    name = "supervisord"
    comms = {"supervisord"}
    restart_delay = "none configurable (`startsecs=0`, `autorestart=true`); the respawn waits for its main loop"

    def available(self):
        if not shutil.which("supervisord"):
            return "supervisord not installed (apt-get install supervisor)"

    def start(self, ws, programs, listener=False):
        port = free_port()
        conf = f"""[supervisord]
nodaemon=true
logfile={ws}/supervisord.log
pidfile={ws}/supervisord.pid
childlogdir={ws}/childlogs
loglevel=warn
minfds={max(1024, 4 * len(programs) + 256)}
minprocs={max(200, len(programs) + 100)}

[inet_http_server]
port=127.0.0.1:{port}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

"""
        for name, body in programs.items():
            conf += f"[program:{name}]\n{body}\n"
        if listener:
            write(os.path.join(ws, "listener.py"), LISTENER)
            self.events = os.path.join(ws, "events.log")
            open(self.events, "w").close()
            conf += f"[eventlistener:obs]\ncommand={PY} {ws}/listener.py {self.events}\nevents=PROCESS_STATE_RUNNING\nbuffer_size=1000\n"
        os.makedirs(os.path.join(ws, "childlogs"), exist_ok=True)
        write(os.path.join(ws, "supervisord.conf"), conf)
        self.proc = procs.spawn(["supervisord", "-n", "-c", os.path.join(ws, "supervisord.conf")], stdout=subprocess.DEVNULL, stderr=open(os.path.join(ws, "supervisord.stderr"), "w"))
        self.url = f"http://127.0.0.1:{port}/RPC2"
        self.rpc = xmlrpc.client.ServerProxy(self.url)

        def up():
            try:
                return self.rpc.supervisor.getState()["statename"] == "RUNNING"
            except (OSError, xmlrpc.client.Error):
                return False

        procs.wait_for(up, 60, 0.02, "supervisord answering")

    def crash_start(self, ws, cmd):
        self.start(ws, {"crash": f"command={' '.join(cmd)}\nautostart=false\nautorestart=true\nstartsecs=0\nstartretries=1000000\n"})
        self.rpc.supervisor.startProcess("crash", False)

    def crash_stop(self):
        self.rpc.supervisor.stopProcess("crash", True)
        self.shutdown()

    def ready_setup(self, ws, mode, port, delay_file, out):
        if mode == "http":
            raise Cannot("cannot: no health checks")
        raise Cannot("cannot: no readiness protocol")

    def running_setup(self, ws, port, delay_file, out):
        """supervisord's RUNNING is `startsecs` (default 1 s) after the spawn, whatever the
        service does; measured anyway for the record."""
        cmd = [PY, SERVICES, "ready", str(port), "@" + delay_file, out, "http"]
        self.start(ws, {"ready": f"command={' '.join(cmd)}\nautostart=false\nautorestart=false\nstartsecs=1\n"}, listener=True)
        self.pos = 0

    def ready_trial(self):
        """The receipt time of the RUNNING event by an event listener."""
        self.rpc.supervisor.startProcess("ready", False)

        def running():
            with open(self.events) as f:
                f.seek(self.pos)
                text = f.read()
            for line in text.splitlines(keepends=True):
                if not line.endswith("\n"):
                    break
                self.pos += len(line)
                at, event, name = line.split()
                if event == "PROCESS_STATE_RUNNING" and name == "ready":
                    return float(at)

        at = procs.wait_for(running, 30, 0.005, "RUNNING event")
        self.rpc.supervisor.stopProcess("ready", True)
        return at

    def ready_teardown(self):
        self.shutdown()

    def scale_start(self, ws, n, sleep_arg):
        self.start(ws, {f"s{i:04d}": f"command=sleep {sleep_arg}\nautostart=true\n" for i in range(n)})

    def api_target(self):
        body = xmlrpc.client.dumps((), "supervisor.getAllProcessInfo").encode()
        return dict(url=self.url, method="POST", body=body, content_type="text/xml", what="XML-RPC `supervisor.getAllProcessInfo`")

    def logs_start(self, ws, cmd):
        self.start(
            ws,
            {
                "spew": f"command={' '.join(cmd)}\nautostart=false\nautorestart=false\nstartsecs=0\n"
                f"stdout_logfile={ws}/spew.log\nstdout_logfile_maxbytes=10MB\nstdout_logfile_backups=3\n"
            },
        )
        self.rpc.supervisor.startProcess("spew", False)


# --- s6 --------------------------------------------------------------------------------------


class S6(Tool):
    name = "s6"
    comms = {"s6-svscan", "s6-supervise", "s6-log"}
    restart_delay = "fixed: s6-supervise waits until 1 s after the previous start"

    def available(self):
        if not shutil.which("s6-svscan"):
            return "s6 not installed (apt-get install s6)"

    def service(self, ws, name, run, down=True, notification_fd=None, log_run=None):
        d = os.path.join(ws, "scan", name)
        write(os.path.join(d, "run"), "#!/bin/sh\n" + run + "\n", 0o755)
        if down:
            write(os.path.join(d, "down"), "")
        if notification_fd:
            write(os.path.join(d, "notification-fd"), f"{notification_fd}\n")
        if log_run:
            write(os.path.join(d, "log", "run"), "#!/bin/sh\n" + log_run + "\n", 0o755)
        return d

    def start(self, ws, wait_dirs=()):
        scan = os.path.join(ws, "scan")
        os.makedirs(scan, exist_ok=True)
        self.proc = procs.spawn(["s6-svscan", "-c", "4096", scan], stdout=subprocess.DEVNULL, stderr=open(os.path.join(ws, "s6.stderr"), "w"))
        for d in wait_dirs:
            procs.wait_for(lambda: subprocess.run(["s6-svok", d]).returncode == 0, 30, 0.01, f"s6-supervise for {d}")

    def crash_start(self, ws, cmd):
        self.dir = self.service(ws, "crash", "exec " + " ".join(cmd))
        self.start(ws, [self.dir])
        subprocess.run(["s6-svc", "-u", self.dir], check=True)

    def crash_stop(self):
        subprocess.run(["s6-svc", "-wD", "-T", "20000", "-d", self.dir])
        self.shutdown()

    def ready_setup(self, ws, mode, port, delay_file, out):
        if mode == "http":
            raise Cannot("cannot: no health checks")
        cmd = [PY, SERVICES, "ready", str(port), "@" + delay_file, out, "fd3"]
        self.dir = self.service(ws, "ready", "exec " + " ".join(cmd), notification_fd=3)
        self.start(ws, [self.dir])

    def ready_trial(self):
        """`s6-svc -wU -u`: returns once s6-supervise reports the service up and ready."""
        r = subprocess.run(["s6-svc", "-wU", "-T", "30000", "-u", self.dir])
        at = time.time()
        if r.returncode != 0:
            raise RuntimeError("s6-svc -wU timed out")
        subprocess.run(["s6-svc", "-wD", "-T", "30000", "-d", self.dir], check=True)
        return at

    def ready_teardown(self):
        self.shutdown()

    def scale_start(self, ws, n, sleep_arg):
        for i in range(n):
            self.service(ws, f"s{i:04d}", f"exec sleep {sleep_arg}", down=False)
        self.start(ws)

    def api_target(self):
        raise Cannot("n/a: no daemon to ask; `s6-svstat` reads one service directory per call")

    def logs_start(self, ws, cmd):
        self.dir = self.service(ws, "spew", "exec " + " ".join(cmd), log_run=f"exec s6-log n3 s10000000 {ws}/spew-logs")
        self.start(ws, [self.dir])
        subprocess.run(["s6-svc", "-o", self.dir], check=True)  # once: no restart after it exits


# --- Horust ----------------------------------------------------------------------------------


class Horust(Tool):
    name = "horust"
    comms = {"horust"}
    restart_delay = '`backoff = "0s"`'

    def __init__(self, binary):
        self.binary = binary

    def available(self):
        if not self.binary:
            return "not installed (bench/install-horust builds it from crates.io into target/bench-tools)"

    def start(self, ws, services, log=False):
        sdir = os.path.join(ws, "horust-services")
        for name, text in services.items():
            write(os.path.join(sdir, f"{name}.toml"), text)
        self.lines = []  # (arrival, line)
        self.cv = threading.Condition()
        env = clean_env({"HORUST_LOG": "debug" if log else "warn"})
        self.proc = procs.spawn(
            [self.binary, "--services-path", sdir, "--config-path", os.path.join(ws, "horust.toml"), "--uds-folder-path", ws],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stderr:
            at = time.time()
            with self.cv:
                self.lines.append((at, raw.decode(errors="replace")))
                self.cv.notify_all()

    def crash_start(self, ws, cmd):
        self.start(ws, {"crash": f'command = {quote(" ".join(cmd))}\n[restart]\nstrategy = "always"\nbackoff = "0s"\nattempts = 0\n'})

    def crash_stop(self):
        self.shutdown()

    def ready_setup(self, ws, mode, port, delay_file, out):
        self.ws, self.mode, self.port, self.delay_file, self.out = ws, mode, port, delay_file, out

    def ready_trial(self):
        """A fresh horust per trial (it has no start command): the arrival of its log line
        saying the service became Running."""
        ws = self.ws
        if self.mode == "http":
            check = f'http-endpoint = "http://127.0.0.1:{self.port}/"'
            arg = "http"
        else:
            flag = os.path.join(ws, "ready.flag")
            check = f'file-path = "{flag}"'
            arg = "file:" + flag
        cmd = " ".join([PY, SERVICES, "ready", str(self.port), "@" + self.delay_file, self.out, arg])
        self.start(ws, {"ready": f'command = "{cmd}"\n[healthiness]\n{check}\nmax-failed = 1000\n[restart]\nstrategy = "never"\n'}, log=True)
        pattern = re.compile(r'StatusChanged\("ready(\.toml)?", Running\)')
        deadline = time.monotonic() + 30
        try:
            with self.cv:
                while True:
                    hit = next((at for at, line in self.lines if pattern.search(line)), None)
                    if hit:
                        return hit
                    left = deadline - time.monotonic()
                    if left <= 0:
                        tail = "".join(line for _, line in self.lines[-5:])
                        raise Missed(f"horust never reported the service Running within 30 s; its last lines: {tail}")
                    self.cv.wait(left)
        finally:
            procs.kill_tree(self.proc)  # a clean stop takes Horust seconds; not what is measured here

    def ready_teardown(self):
        pass

    def scale_start(self, ws, n, sleep_arg):
        self.start(ws, {f"s{i:04d}": f'command = "sleep {sleep_arg}"\n[restart]\nstrategy = "never"\n' for i in range(n)})

    def api_target(self):
        raise Cannot("n/a: no list endpoint (horustctl asks one service at a time)")

    def logs_start(self, ws, cmd):
        self.start(ws, {"spew": f'command = {quote(" ".join(cmd))}\nstdout = "{ws}/spew.log"\nstdout-rotate-size = "10MB"\n[restart]\nstrategy = "never"\n'})

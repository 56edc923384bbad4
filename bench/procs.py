"""Processes: starting them so that they can all be killed, and reading /proc (trees, memory,
CPU time, counting service processes by their command line)."""

import atexit
import os
import signal
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# Every process group the harness started, and the marker every service command line carries
# (the run's scratch directory), so that whatever survives a failure can still be found.
_groups = []
_markers = []


launched_at = 0.0  # time.monotonic() when the latest `spawn` began


def spawn(args, **kw):
    """Popen in a session of its own, remembered so that `cleanup` can kill its group."""
    global launched_at
    launched_at = time.monotonic()
    p = subprocess.Popen(args, start_new_session=True, **kw)
    _groups.append(p)
    return p


def add_marker(text):
    _markers.append(text)


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None


def pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def stat(pid):
    """(comm, ppid, utime+stime ticks, rss bytes) or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    comm = s[s.index("(") + 1 : s.rindex(")")]
    rest = s[s.rindex(")") + 2 :].split()
    return comm, int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[21]) * PAGE


def field(pid, name, key):
    """`key` of `/proc/PID/NAME` (a `Key:  N kB` file: `status`, `smaps_rollup`), in bytes; 0
    when the process is gone."""
    try:
        with open(f"/proc/{pid}/{name}") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree(root):
    """`root` and all its descendants."""
    children = {}
    for pid in pids():
        st = stat(pid)
        if st:
            children.setdefault(st[1], []).append(pid)
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def supervisor_pids(root, comms):
    """The tool's own processes under `root` (by command name), services excluded."""
    return [p for p in tree(root) if (st := stat(p)) and st[0] in comms]


def memory(pids_):
    """(sum of RSS, sum of PSS, sum of anonymous memory) in bytes. Anonymous memory (heap,
    stacks) is what the processes alone cost; the rest of RSS is their program files' pages,
    clean page cache that the kernel shares and can drop."""
    return rss(pids_), sum(field(p, "smaps_rollup", "Pss") for p in pids_), anonymous(pids_)


def rss(pids_):
    """Sum of the processes' resident memory (from `stat`: cheap to poll)."""
    return sum(st[3] for p in pids_ if (st := stat(p)))


def anonymous(pids_):
    """Sum of the processes' anonymous resident memory (`RssAnon`, a counter: cheap to poll)."""
    return sum(field(p, "status", "RssAnon") for p in pids_)


def cpu_ticks(pids_):
    return sum(st[2] for p in pids_ if (st := stat(p)))


class Counter:
    """Counts live processes whose command line is exactly `wanted`, cheaply enough to poll
    every few ms: a pid's command line is read again until it has kept a non-matching one for
    5 s (a child between fork and exec still shows its parent's, and under load exec can
    take a while); a matching one is final."""

    def __init__(self, wanted):
        self.wanted = wanted
        self.known = {}  # pid -> (is_match, first_seen)

    def count(self):
        now = time.monotonic()
        live = set(pids())
        for pid in list(self.known):
            if pid not in live:
                del self.known[pid]
        n = 0
        for pid in live:
            k = self.known.get(pid)
            if k is None or (not k[0] and now - k[1] < 5):
                line = cmdline(pid)
                if line is None:
                    continue
                k = (line == self.wanted, k[1] if k else now)
                self.known[pid] = k
            n += k[0]
        return n


def wait_for(cond, timeout, interval=0.01, what="condition"):
    """Poll `cond` until it returns a true value; raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def stop(p, sig=signal.SIGTERM, timeout=30):
    """Signal the process `p` (a Popen), wait for it, SIGKILL its group if it lingers."""
    if p.poll() is None:
        try:
            p.send_signal(sig)
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    kill_group(p)


def kill_tree(p):
    """SIGKILL the process `p` (a Popen) and all its descendants, then its group."""
    for pid in tree(p.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    kill_group(p)


def kill_group(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        pass


@atexit.register
def cleanup():
    """Kill every group the harness started and every process that carries a marker."""
    for p in _groups:
        kill_group(p)
    if not _markers:
        return
    me = os.getpid()
    for pid in pids():
        line = cmdline(pid)
        if pid != me and line and any(m in line for m in _markers):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

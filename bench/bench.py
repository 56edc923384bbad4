#!/usr/bin/env python3
"""nanny side by side with supervisord, s6 and Horust: see BENCHMARKS.md for the method.

    bench/run [--smoke] [--only W[,W...]] [--tools T[,T...]] [--nanny PATH] [--out DIR]

Workloads: crash, ready, scale, api, logs, gpu. Tools: nanny, supervisord, s6, horust.
Results go to OUT/latest.json and OUT/latest.md (default bench/results/); the table is printed.
Python 3 standard library only.
"""

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import httpc  # noqa: E402
import procs  # noqa: E402
import report  # noqa: E402
from tools import PY, SERVICES, Cannot, Horust, Missed, Nanny, S6, Supervisord, clean_env, free_port, write  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKLOADS = ["crash", "ready", "scale", "api", "logs", "gpu"]
TOOLS = ["nanny", "supervisord", "s6", "horust"]

FULL = dict(crashes=200, ready_trials=30, scale_ns=[100, 1000], idle_s={100: 20, 1000: 60}, api_n=1000, api_rate=1000, api_s=10, log_bytes=1 << 30, log_runs=5, gpu_swaps=20)
SMOKE = dict(crashes=4, ready_trials=3, scale_ns=[20], idle_s={20: 1}, api_n=20, api_rate=100, api_s=1, log_bytes=4 << 20, log_runs=1, gpu_swaps=2)

CRASH_SH = """#!/bin/bash
echo "s $EPOCHREALTIME" >> "$1"
sleep 0.05
echo "e $EPOCHREALTIME" >> "$1"
exit 3
"""

SLEEP = shutil.which("sleep") or "/bin/sleep"

# Writes SIZE bytes of 100-character lines to stdout; timestamps its start and end.
SPEW_SH = """#!/bin/bash
echo "s $EPOCHREALTIME" >> "$1"
yes 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789 | head -c "$2"
echo "e $EPOCHREALTIME" >> "$1"
"""

WRAP_SH = """#!/bin/bash
out=$1; shift
echo "b $EPOCHREALTIME" >> "$out"
exec "$@"
"""


def stamps(path, tag=None):
    """[(tag, ts)] from a service's timestamp file."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and (tag is None or parts[0] == tag):
                    out.append((parts[0], float(parts[1])))
    except FileNotFoundError:
        pass
    return out


def pct(samples, q):
    s = sorted(samples)
    return s[min(len(s) - 1, int(round((len(s) - 1) * q)))]


def dist_ms(samples_s):
    ms = [x * 1000 for x in samples_s]
    return {"n": len(ms), "p50": pct(ms, 0.5), "p90": pct(ms, 0.9), "p99": pct(ms, 0.99), "max": max(ms)}


class Run:
    def __init__(self, args):
        self.args = args
        self.p = SMOKE if args.smoke else FULL
        self.root = tempfile.mkdtemp(prefix="nanny-bench-")
        procs.add_marker(self.root)
        self.tag = f"86400.{os.getpid()}"  # the `sleep` argument of the scale services
        procs.add_marker(f"sleep {self.tag}")
        self.crash_sh = self.script("crash.sh", CRASH_SH)
        self.spew_sh = self.script("spew.sh", SPEW_SH)
        self.wrap_sh = self.script("wrap.sh", WRAP_SH)
        self.results = {}
        self.notes = {}

    def script(self, name, text):
        path = os.path.join(self.root, name)
        write(path, text, 0o755)
        return path

    def ws(self, tool, what):
        d = os.path.join(self.root, f"{tool.name}-{what}")
        os.makedirs(d, exist_ok=True)
        return d

    def record(self, workload, tool, value):
        self.results.setdefault(workload, {})[tool] = value

    def attempt(self, workload, tool, fn):
        """Run one tool's workload; a Cannot or a failure is recorded, never fatal."""
        t0 = time.monotonic()
        try:
            value = fn()
        except Cannot as e:
            value = {"cannot": str(e)}
        except Exception as e:  # noqa: BLE001 - a broken peer must not stop the others
            traceback.print_exc()
            value = {"error": f"{type(e).__name__}: {e}"}
        finally:
            try:
                if getattr(tool, "proc", None) is not None:
                    procs.stop(tool.proc, timeout=30)
                    tool.proc = None
            except Exception:  # noqa: BLE001
                pass
        log(f"  {tool.name:12} {workload:14} {time.monotonic() - t0:6.1f} s  {short(value)}")
        self.record(workload, tool.name, value)

    # --- (a) crash -> replacement spawned -----------------------------------------------------

    def crash(self, tool):
        n = self.p["crashes"]
        ws = self.ws(tool, "crash")
        out = os.path.join(ws, "stamps")
        tool.crash_start(ws, ["bash", self.crash_sh, out])
        procs.wait_for(lambda: len(stamps(out, "s")) > n, 30 + 3 * n, 0.05, f"{n} restarts")
        tool.crash_stop()
        return {**dist_ms(crash_gaps(out)[:n]), "restart_delay": tool.restart_delay}

    def crash_floor(self):
        """The same script run again by a bash loop: fork + exec + bash start-up."""
        out = os.path.join(self.root, "floor-stamps")
        n = self.p["crashes"]
        subprocess.run(["bash", "-c", f'for i in $(seq {n + 1}); do bash {self.crash_sh} {out}; done'], check=False)
        return dist_ms(crash_gaps(out)[:n])

    def scale_floor(self, n):
        """N `sleep`s started back to back by one process (`posix_spawn`, which returns once the
        child has exec'd), observed like the tools': until N exist, as counted in `/proc`."""
        counter = procs.Counter(f"sleep {self.tag}")
        t0 = time.monotonic()
        children = [os.posix_spawn(SLEEP, ["sleep", self.tag], clean_env()) for _ in range(n)]
        procs.wait_for(lambda: counter.count() >= n, 60 + n * 0.2, 0.01, f"{n} sleeps up")
        up = time.monotonic() - t0
        for pid in children:
            os.kill(pid, signal.SIGTERM)
        for pid in children:
            os.waitpid(pid, 0)
        return {"n": n, "up_s": up}

    # --- (b) ready -> reported running --------------------------------------------------------

    def ready(self, tool, mode):
        ws = self.ws(tool, f"ready-{mode}")
        port = free_port()
        delay_file = os.path.join(ws, "delay")
        out = os.path.join(ws, "stamps")
        if isinstance(tool, Supervisord) and mode == "running":
            tool.running_setup(ws, port, delay_file, out)
        else:
            tool.ready_setup(ws, mode, port, delay_file, out)
        samples, missed = [], []
        try:
            for i in range(self.p["ready_trials"]):
                write(delay_file, f"{0.05 + (i % 10) * 0.013:.3f}")
                open(out, "w").close()
                try:
                    at = tool.ready_trial()
                except Missed as e:
                    missed.append(str(e))
                    continue
                r = stamps(out, "r")
                if not r:
                    raise RuntimeError("reported before the service was ready")
                samples.append(at - r[-1][1])
        finally:
            tool.ready_teardown()
        if not samples:
            raise RuntimeError(f"every trial missed: {missed[0]}")
        return {**dist_ms(samples), **({"missed": len(missed), "missed_why": missed[0]} if missed else {})}

    # --- (c) N services: up, memory, idle CPU, (d) API, stop ----------------------------------

    def scale(self, tool, n, api):
        ws = self.ws(tool, f"scale-{n}")
        counter = procs.Counter(f"sleep {self.tag}")
        tool.scale_start(ws, n, self.tag)
        # From the supervisor's launch, after its configuration (N files) is written.
        t0 = procs.launched_at
        procs.wait_for(lambda: counter.count() >= n, 60 + n * 0.2, 0.01, f"{n} services up")
        up = time.monotonic() - t0
        time.sleep(2)  # let start-up work (first checks, logs) finish before measuring idle
        pids = tool.daemon_pids()
        rss, pss, anon = procs.memory(pids)
        idle = self.p["idle_s"][n]
        ticks0 = procs.cpu_ticks(pids)
        time.sleep(idle)
        cpu = (procs.cpu_ticks(tool.daemon_pids()) - ticks0) / procs.CLK_TCK / idle * 100
        result = {"n": n, "up_s": up, "rss_mb": rss / 2**20, "pss_mb": pss / 2**20, "anon_mb": anon / 2**20, "processes": len(pids), "idle_cpu_pct": cpu, "idle_window_s": idle}
        if api:
            try:
                value = self.api(tool)
            except Cannot as e:
                value = {"cannot": str(e)}
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                value = {"error": f"{type(e).__name__}: {e}"}
            log(f"  {tool.name:12} {'api':14}          {short(value)}")
            self.record("api", tool.name, value)
        t1 = time.monotonic()
        tool.proc.send_signal(signal.SIGTERM)
        procs.wait_for(lambda: counter.count() == 0, 120, 0.01, "every service stopped")
        result["stop_s"] = time.monotonic() - t1
        try:
            tool.proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
        procs.kill_group(tool.proc)
        return result

    def api(self, tool):
        target = tool.api_target()
        lat, errors, achieved = httpc.fixed_rate(
            target["url"], self.p["api_rate"], self.p["api_s"], method=target.get("method", "GET"), body=target.get("body", b""), content_type=target.get("content_type")
        )
        if not lat:
            raise RuntimeError(f"no successful request ({errors[:3]})")
        d = dist_ms(lat)
        return {**d, "rate": self.p["api_rate"], "achieved_rps": achieved, "errors": len(errors), "late": errors.count("late"), "services": self.p["api_n"], "what": target["what"]}

    # --- (e) 1 GB of output ---------------------------------------------------------------------

    def logs_baseline(self):
        out = os.path.join(self.root, "logs-baseline")
        if os.path.exists(out):
            os.remove(out)
        with open(os.path.join(self.root, "baseline.log"), "w") as f:
            subprocess.run(["bash", self.spew_sh, out, str(self.p["log_bytes"])], stdout=f, check=True)
        os.remove(os.path.join(self.root, "baseline.log"))
        s, e = stamps(out)[:2]
        return {"wall_s": e[1] - s[1]}

    def logs(self, tool):
        """`log_runs` pairs of runs, each the writer into a file then under the tool, so a machine
        whose speed drifts (a VM's stolen time, a neighbour's build) moves both halves alike;
        the figure is the median pair's ratio."""
        pairs = []
        for i in range(self.p["log_runs"]):
            base = self.logs_baseline()["wall_s"]
            pairs.append((base, self.logs_once(tool, i)))
        pairs.sort(key=lambda pair: pair[1]["wall_s"] / pair[0])
        base, median = pairs[len(pairs) // 2]
        return {
            **median,
            "vs_file": median["wall_s"] / base,
            "baseline_s": base,
            "peak_rss_mb": max(r["peak_rss_mb"] for _, r in pairs),
            "peak_anon_mb": max(r["peak_anon_mb"] for _, r in pairs),
            "runs": [{"baseline_s": b, "wall_s": r["wall_s"]} for b, r in pairs],
        }

    def logs_once(self, tool, i):
        ws = self.ws(tool, f"logs-{i}")
        out = os.path.join(ws, "stamps")
        tool.logs_start(ws, ["bash", self.spew_sh, out, str(self.p["log_bytes"])])
        peak, peak_anon, pids, looked = 0, 0, [], 0.0
        deadline = time.monotonic() + 600
        while not stamps(out, "e"):
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError("the writer did not finish within 600 s")
            if now - looked > 1:  # the process tree once a second, the memory every 0.1 s
                pids, looked = tool.daemon_pids(), now
            peak = max(peak, procs.rss(pids))
            peak_anon = max(peak_anon, procs.anonymous(pids))
            time.sleep(0.1)
        (_, s), (_, e) = stamps(out, "s")[0], stamps(out, "e")[0]
        tool.shutdown()
        shutil.rmtree(ws, ignore_errors=True)  # a GiB of logs: not kept for the next run
        return {"wall_s": e - s, "peak_rss_mb": peak / 2**20, "peak_anon_mb": peak_anon / 2**20, "bytes": self.p["log_bytes"]}

    # --- (f) GPU force-swap overhead (nanny only) -------------------------------------------------

    def gpu(self, tool, declared):
        """Swaps between two services; overhead = the swap's wall time minus the old service's
        own stop (SIGTERM received -> exit) and the new one's own start (exec -> listening).
        `declared`: both `gpu_required: true`, swapped by `start --force`; else neither
        declares the GPU and the swap is a stop then a start."""
        ws = self.ws(tool, "gpu" if declared else "nogpu")
        ports = {n: free_port() for n in ("a", "b")}
        outs = {n: os.path.join(ws, f"stamps-{n}") for n in ("a", "b")}
        manifests = {}
        for n in ("a", "b"):
            cmd = ["bash", self.wrap_sh, outs[n], PY, SERVICES, "ready", str(ports[n]), "0", outs[n], "http"]
            manifests[f"svc-{n}"] = (
                f"name: svc-{n}\ncommand: {json.dumps(cmd)}\ngpu_required: {str(declared).lower()}\n"
                f"health_endpoint: http://127.0.0.1:{ports[n]}/\nrestart: never\n"
            )
        tool.start(ws, manifests)
        st, body = tool.post("/services/svc-a/start")
        if st != 200:
            raise RuntimeError(f"start svc-a: {st} {body}")
        overheads, walls = [], []
        old, new = "a", "b"
        for _ in range(self.p["gpu_swaps"]):
            for n in outs.values():
                open(n, "w").close()
            t0 = time.time()
            if declared:
                st, body = tool.post(f"/services/svc-{new}/start", {"force": True})
            else:
                tool.post(f"/services/svc-{old}/stop")
                st, body = tool.post(f"/services/svc-{new}/start")
            t1 = time.time()
            if st != 200:
                raise RuntimeError(f"swap to svc-{new}: {st} {body}")
            a, b = dict(stamps(outs[old])), dict(stamps(outs[new]))
            own = (a["x"] - a["t"]) + (b["r"] - b["b"])
            overheads.append(t1 - t0 - own)
            walls.append(t1 - t0)
            old, new = new, old
        tool.shutdown()
        return {**dist_ms(overheads), "wall_p50_ms": pct(walls, 0.5) * 1000}


def provenance(old, kept):
    """The footnotes of a merge: for each earlier run, the rows still from it. A row belongs
    to the latest run that measured it: rows measured now leave every footnote, and the
    previous run's footnote lists only the kept rows no older run claims."""
    still = set(kept)
    earlier = [dict(e, kept=[r for r in e["kept"] if r in still]) for e in old.get("merged", [])]
    claimed = {r for e in earlier for r in e["kept"]}
    own = [r for r in kept if r not in claimed]
    earlier.append({"date": old["date"], "label": old.get("label", ""), "cpu": old["machine"]["cpu"], "kept": own})
    return [e for e in earlier if e["kept"]]


def crash_gaps(path):
    """Each exit to the next start, from the crash script's own timestamps."""
    gaps, last_exit = [], None
    for tag, ts in stamps(path):
        if tag == "e":
            last_exit = ts
        elif tag == "s" and last_exit is not None:
            gaps.append(ts - last_exit)
            last_exit = None
    return gaps


def short(v):
    if "cannot" in v:
        return v["cannot"]
    if "error" in v:
        return "ERROR " + v["error"][:150]
    return ", ".join(f"{k}={x:.3g}" if isinstance(x, float) else f"{k}={x}" for k, x in v.items() if k not in ("what", "restart_delay"))


def log(msg):
    print(msg, flush=True)


def horust_binary():
    local = os.path.join(ROOT, "target", "bench-tools", "bin", "horust")
    return local if os.access(local, os.X_OK) else shutil.which("horust")


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) // 1024
    versions = {}
    for cmd in (["supervisord", "--version"], ["dpkg-query", "-W", "-f=${Version}", "s6"]):
        try:
            versions[cmd[0] if cmd[0] != "dpkg-query" else "s6"] = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    h = horust_binary()
    crates = os.path.join(ROOT, "target", "bench-tools", ".crates.toml")
    if h and os.path.exists(crates):  # horust has no --version; cargo install notes it
        with open(crates) as f:
            found = [line.split()[1] for line in f if line.startswith('"horust ')]
        versions["horust"] = found[0] if found else "?"
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_mb": mem, "kernel": platform.release(), "python": platform.python_version(), "versions": versions}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="small N, few samples (CI)")
    ap.add_argument("--only", default=",".join(WORKLOADS), help="workloads, comma-separated")
    ap.add_argument("--tools", default=",".join(TOOLS), help="tools, comma-separated")
    ap.add_argument("--nanny", default=os.path.join(ROOT, "target", "release", "nanny"), help="the nanny binary")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="where latest.json and latest.md go")
    ap.add_argument("--label", default="", help="a note stored with the results (e.g. 'before the speed work')")
    ap.add_argument("--merge", action="store_true", help="keep OUT/latest.json's other results, replace only those measured now")
    args = ap.parse_args()
    only = args.only.split(",")
    wanted = args.tools.split(",")
    for w in only:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r} (known: {', '.join(WORKLOADS)})")
    for t in wanted:
        if t not in TOOLS:
            ap.error(f"unknown tool {t!r} (known: {', '.join(TOOLS)})")

    def on_signal(sig, _frame):
        sys.exit(128 + sig)  # atexit kills everything started

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    run = Run(args)
    every = {"nanny": Nanny(args.nanny), "supervisord": Supervisord(), "s6": S6(), "horust": Horust(horust_binary())}
    tools, unavailable = [], {}
    for name in wanted:
        why = every[name].available()
        if why:
            unavailable[name] = why
            log(f"{name}: unavailable: {why}")
        else:
            tools.append(every[name])
    started = time.monotonic()
    load_before = open("/proc/loadavg").read().split()[:3]
    log(f"bench: {'smoke' if args.smoke else 'full'} run of {', '.join(only)} for {', '.join(t.name for t in tools)} (scratch {run.root})")
    try:
        if "crash" in only:
            run.record("crash", "floor", run.crash_floor())
            nanny = [t for t in tools if t.name == "nanny"]
            peers = [t for t in tools if t.name != "nanny"]
            for t in nanny:
                run.attempt("crash", t, lambda t=t: run.crash(t))
            # The peers' respawns wait on their own ~1 s timers, so their crash loops run side
            # by side (each service alone under its own supervisor) to keep the run short.
            threads = [threading.Thread(target=run.attempt, args=("crash", t, lambda t=t: run.crash(t))) for t in peers]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        if "ready" in only:
            for t in tools:
                run.attempt("ready_http", t, lambda t=t: run.ready(t, "http"))
                run.attempt("ready_self", t, lambda t=t: run.ready(t, "self"))
                if t.name == "supervisord":
                    run.attempt("ready_running", t, lambda t=t: run.ready(t, "running"))
        if "scale" in only or "api" in only:
            ns = run.p["scale_ns"] if "scale" in only else [run.p["api_n"]]
            for n in ns:
                if "scale" in only:
                    run.record(f"scale_{n}", "floor", run.scale_floor(n))
                for t in tools:
                    api = "api" in only and n == run.p["api_n"]
                    run.attempt(f"scale_{n}", t, lambda t=t, n=n, api=api: run.scale(t, n, api))
        if "logs" in only:
            run.record("logs", "baseline", run.logs_baseline())
            for t in tools:
                run.attempt("logs", t, lambda t=t: run.logs(t))
        if "gpu" in only:
            for t in tools:
                if t.name == "nanny":
                    run.attempt("gpu_swap", t, lambda t=t: run.gpu(t, True))
                    run.attempt("gpu_manual", t, lambda t=t: run.gpu(t, False))
                else:
                    run.record("gpu_swap", t.name, {"cannot": "cannot: no GPU arbitration"})
    finally:
        procs.cleanup()
    took = time.monotonic() - started
    doc = {
        "mode": "smoke" if args.smoke else "full",
        "label": args.label,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": took,
        "machine": machine() | {"loadavg_before": load_before, "loadavg_after": open("/proc/loadavg").read().split()[:3]},
        "params": {k: v for k, v in run.p.items() if k != "idle_s"} | {"idle_s": {str(k): v for k, v in run.p["idle_s"].items()}},
        "unavailable": unavailable,
        "results": run.results,
    }
    os.makedirs(args.out, exist_ok=True)
    previous = os.path.join(args.out, "latest.json")
    if args.merge and os.path.exists(previous):
        with open(previous) as f:
            old = json.load(f)
        # This run's figures and metadata; an earlier run's figures are kept where this run
        # measured nothing of that tool and workload, and the footnotes say whose they are.
        merged = {w: dict(by) for w, by in run.results.items()}
        kept = []
        for w, by in old["results"].items():
            for t, v in by.items():
                if t not in merged.setdefault(w, {}):
                    merged[w][t] = v
                    kept.append(f"{w}/{t}")
        unavailable = {t: why for t, why in (old.get("unavailable", {}) | unavailable).items() if not any(t in by for by in merged.values())}
        doc |= {"results": merged, "unavailable": unavailable, "merged": provenance(old, kept)}
    with open(previous, "w") as f:
        json.dump(doc, f, indent=2)
    table = report.markdown(doc)
    with open(os.path.join(args.out, "latest.md"), "w") as f:
        f.write(table)
    print(table)
    log(f"bench: done in {took:.0f} s; {args.out}/latest.json, latest.md")
    shutil.rmtree(run.root, ignore_errors=True)
    errors = [f"{w}/{t}" for w, by in run.results.items() for t, v in by.items() if "error" in v]
    if errors:
        log(f"bench: failed: {', '.join(errors)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

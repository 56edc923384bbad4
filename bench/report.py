"""The results as a markdown table: one row per figure, one column per tool, then the ratio of
each peer's figure to nanny's (lower is better for every figure with a ratio, so a ratio above
1 means nanny does better)."""

TOOLS = ["nanny", "supervisord", "s6", "horust"]
PEERS = TOOLS[1:]


def rows(results):
    """(workload, key, label, ratio?) in table order."""
    out = []
    for q in ("p50", "p90", "p99"):
        out.append(("crash", q, f"(a) crash → next spawn, {q} (ms)", True))
    for w, what in (("ready_http", "HTTP health check"), ("ready_self", "self-notification"), ("ready_running", "supervisord RUNNING (startsecs=1)")):
        if w in results:
            for q in ("p50", "p90"):
                out.append((w, q, f"(b) ready → reported, {what}, {q} (ms)", True))
    for w in sorted((w for w in results if w.startswith("scale_")), key=lambda w: int(w[6:])):
        n = w[6:]
        out += [
            (w, "up_s", f"(c) N={n}: all up (s)", True),
            (w, "stop_s", f"(c) N={n}: all stopped (s)", True),
            (w, "pss_mb", f"(c) N={n}: supervisor PSS (MB)", True),
            (w, "rss_mb", f"(c) N={n}: supervisor RSS sum (MB)", True),
            (w, "anon_mb", f"(c) N={n}: supervisor anonymous memory (MB)", True),
            (w, "idle_cpu_pct", f"(c) N={n}: idle CPU (% of a core)", True),
        ]
    out += [
        ("api", "p50", "(d) list all services, p50 (ms)", True),
        ("api", "p99", "(d) list all services, p99 (ms)", True),
        ("api", "achieved_rps", "(d) achieved requests/s", False),
        ("logs", "wall_s", "(e) output to stdout: writer's wall time (s)", True),
        ("logs", "vs_file", "(e) … ÷ same writer into a file", True),
        ("logs", "peak_rss_mb", "(e) supervisor peak RSS while logging (MB)", True),
        ("logs", "peak_anon_mb", "(e) supervisor peak anonymous memory while logging (MB)", True),
        ("gpu_swap", "p50", "(f) forced GPU swap overhead, p50 (ms)", False),
        ("gpu_swap", "p90", "(f) forced GPU swap overhead, p90 (ms)", False),
        ("gpu_manual", "p50", "(f) stop + start by hand overhead, p50 (ms)", False),
    ]
    return [r for r in out if r[0] in results]


def fmt(x):
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def cell(v, key):
    if v is None:
        return "—"
    if "cannot" in v:
        return v["cannot"].split(":")[0]
    if "error" in v:
        return "error"
    x = v.get(key)
    return fmt(x) if isinstance(x, (int, float)) else "—"


def markdown(doc):
    results = doc["results"]
    present = [t for t in TOOLS if any(t in by for by in results.values()) or t in doc.get("unavailable", {})]
    peers = [t for t in present if t in PEERS]
    head = ["figure", *present, *(f"{p} ÷ nanny" for p in peers)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for w, key, label, ratio in rows(results):
        by = results[w]
        cells = []
        for t in present:
            cells.append("unavailable" if t in doc.get("unavailable", {}) else cell(by.get(t), key))
        ratios = []
        for p in peers:
            a, b = by.get("nanny"), by.get(p)
            ok = ratio and a and b and isinstance(a.get(key), (int, float)) and isinstance(b.get(key), (int, float)) and a[key] > 0
            ratios.append(f"{b[key] / a[key]:.1f}×" if ok else "")
        lines.append("| " + " | ".join([label, *cells, *ratios]) + " |")
    notes = []
    m = doc["machine"]
    notes.append(f"{doc['mode']} run {doc['date']}{' (' + doc['label'] + ')' if doc.get('label') else ''}, {doc['duration_s']:.0f} s; "
                 f"{m['cpu']}, {m['cores']} cores, {m['mem_mb']} MB, Linux {m['kernel']}, load average {'/'.join(m.get('loadavg_before', []))} before and {'/'.join(m.get('loadavg_after', []))} after; "
                 + ", ".join(f"{k} {v}" for k, v in m["versions"].items()))
    for e in doc.get("merged", []):
        notes.append(f"kept from the run of {e['date']} ({e.get('label') or 'no label'}; {e.get('cpu', '')}): " + ", ".join(e.get("kept", [])) + ".")
    floor = results.get("crash", {}).get("floor")
    if floor:
        notes.append(f"(a) floor: the same script respawned by a bash loop: p50 {fmt(floor['p50'])} ms, p99 {fmt(floor['p99'])} ms.")
    for w, v in sorted(results.items()):
        if w.startswith("scale_") and "floor" in v:
            notes.append(f"(c) floor: {v['floor']['n']} `sleep`s started back to back by one process (`posix_spawn`), counted the same way: all up in {fmt(v['floor']['up_s'])} s.")
    for w in ("ready_http", "ready_self"):
        for t, v in results.get(w, {}).items():
            if v.get("missed"):
                why = v["missed_why"].split(";")[0]
                notes.append(f"{w} / {t}: {v['missed']} of {v['n'] + v['missed']} trials missed ({why}); the figures are the other trials'.")
    for t, v in results.get("crash", {}).items():
        if "restart_delay" in v:
            notes.append(f"(a) {t}: restart delay {v['restart_delay']}.")
    for t, v in results.get("logs", {}).items():
        if t == "baseline":
            notes.append(f"(e) the writer into a file, no supervisor: {fmt(v['wall_s'])} s (once, before the tools).")
        elif "runs" in v:
            pairs = ", ".join(f"{fmt(r['wall_s'])} s / {fmt(r['baseline_s'])} s" for r in v["runs"])
            notes.append(f"(e) {t}: the median of {len(v['runs'])} pairs (under the tool / into a file, each pair run back to back): {pairs}.")
    api = results.get("api", {})
    for t, v in api.items():
        if "what" in v:
            notes.append(f"(d) {t}: {v['what']}, {v['services']} services, {v['rate']} requests/s offered, {v.get('errors', 0)} errors.")
    for w, by in results.items():
        for t, v in by.items():
            if "cannot" in v:
                notes.append(f"{w} / {t}: {v['cannot']}.")
            if "error" in v:
                notes.append(f"{w} / {t}: error: {v['error']}.")
    for t, why in doc.get("unavailable", {}).items():
        notes.append(f"{t}: unavailable: {why}.")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"

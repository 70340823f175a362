"""Samples RSS/threads/fds of a server process tree and its /metrics every INTERVAL s for DURATION s -> CSV."""
import csv, os, re, sys, time, urllib.request
root, url, out, duration, interval = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])

def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []

def tree(pid):
    out = [pid]
    for c in children(pid):
        out += tree(c)
    return out

def status(pid):
    d = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                d[k] = v.strip()
        d["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            d["cmd"] = f.read().replace(b"\0", b" ").decode()[:60]
    except OSError:
        return None
    return d

WANT = {"vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting", "shifttune:kv_blocks_used": "kv_used"}
def metrics():
    m = {}
    try:
        text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    except Exception as e:
        return {"metrics_err": type(e).__name__}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{")[0].split(" ")[0]
        val = float(line.rsplit(" ", 1)[1])
        if name in WANT:
            m[WANT[name]] = val
        elif name == "vllm:request_success_total":
            r = re.search(r'finished_reason="([^"]+)"', line).group(1)
            m[f"succ_{r}"] = val
        elif name in ("vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:num_preemptions_total"):
            m[name.split(":")[1]] = val
        elif name == "shifttune:steps_total":
            m["steps"] = m.get("steps", 0) + val
    return m

cols = ["t", "role", "pid", "rss_kb", "threads", "fds", "cmd"]
mcols = ["running", "waiting", "kv_used", "succ_length", "succ_stop", "succ_abort", "prompt_tokens_total",
         "generation_tokens_total", "num_preemptions_total", "steps", "metrics_err"]
t0 = time.time()
with open(out, "w", newline="") as f, open(out.replace(".csv", "_metrics.csv"), "w", newline="") as g:
    w, wm = csv.writer(f), csv.writer(g)
    w.writerow(cols); wm.writerow(["t"] + mcols)
    while time.time() - t0 < duration:
        t = round(time.time() - t0, 1)
        pids = tree(root)
        for pid in pids:
            s = status(pid)
            if s is None:
                continue
            role = "server" if pid == root else ("tracker" if "resource_tracker" in s["cmd"] else "proc")
            w.writerow([t, role, pid, int(s["VmRSS"].split()[0]), s["Threads"], s["fds"], s["cmd"]])
        m = metrics()
        wm.writerow([t] + [m.get(c, "") for c in mcols])
        f.flush(); g.flush()
        time.sleep(max(0, interval - (time.time() - t0 - t)))

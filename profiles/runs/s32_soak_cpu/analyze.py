import csv, json, collections, statistics as st, sys
D = "/tmp/review_soak/"
ROLE = {22552: "server", 22588: "engine_core", 22596: "rank1_worker", 22587: "resource_tracker"}
rows = list(csv.DictReader(open(D + "rss.csv")))
mrows = list(csv.DictReader(open(D + "rss_metrics.csv")))

def slope(xs, ys):
    mx, my = st.mean(xs), st.mean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)

print("== per-process RSS/threads/fds (t in s from sampler start; soak = 30..630 s) ==")
by = collections.defaultdict(list)
for r in rows:
    by[int(r["pid"])].append((float(r["t"]), int(r["rss_kb"]), int(r["threads"]), int(r["fds"])))
for pid, v in by.items():
    name = ROLE.get(pid, str(pid))
    pre = [x for x in v if x[0] < 30]
    warm = [x for x in v if 150 <= x[0] <= 630]   # after 2 min of load
    late = [x for x in v if x[0] > 660]
    if len(warm) > 3:
        s = slope([x[0] for x in warm], [x[1] for x in warm]) * 60
        print(f"{name:17s} pid {pid}: RSS MB before {pre[-1][1]/1024 if pre else float('nan'):.1f}, "
              f"at 150s {warm[0][1]/1024:.1f}, at end of load {warm[-1][1]/1024:.1f}, max {max(x[1] for x in v)/1024:.1f}, "
              f"idle after {late[-1][1]/1024 if late else float('nan'):.1f}; slope 150-630s {s/1024:.2f} MB/min; "
              f"threads {min(x[2] for x in v)}-{max(x[2] for x in v)} (end {v[-1][2]}); fds {min(x[3] for x in v)}-{max(x[3] for x in v)} (end {v[-1][3]})")
print("== gauges ==")
for r in mrows[:: max(1, len(mrows) // 12)] + mrows[-4:]:
    print({k: r[k] for k in ("t", "running", "waiting", "kv_used", "succ_length", "succ_stop", "succ_abort", "metrics_err")})

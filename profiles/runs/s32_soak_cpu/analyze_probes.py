import json, collections, statistics as st
D = "/tmp/review_soak/"
P = [json.loads(l) for l in open(D + "soak_probes.jsonl")]
R = [json.loads(l) for l in open(D + "soak_requests.jsonl")]
print("== probes:", len(P), "==")
ref = P[0]
texts = collections.Counter(p.get("text") for p in P)
print("distinct texts:", len(texts))
for t, n in texts.most_common():
    print(n, repr(t))
maxdiff = 0
for p in P:
    if "lps" in p and "lps" in ref:
        d = max(abs(a - b) for a, b in zip(p["lps"], ref["lps"]))
        maxdiff = max(maxdiff, d)
        p["lpdiff"] = d
print("max |logprob - idle reference| over probes:", maxdiff)
for p in P:
    if p.get("text") != ref.get("text") or p.get("exc"):
        first = next((i for i, (a, b) in enumerate(zip(p.get("text", ""), ref["text"])) if a != b), None)
        print("DIFF", p["t"], p["stream"], "first differing char", first, p.get("exc"), "lpdiff", p.get("lpdiff"))
tt = [(p["t"], p["ttft"]) for p in P if "ttft" in p]
print("stream probes TTFT (t, s):", [(round(a), round(b, 3)) for a, b in tt])
def pct(xs, q):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(q * len(xs)))]
load = [b for a, b in tt[1:-1]]
thirds = [load[i * len(load) // 3:(i + 1) * len(load) // 3] for i in range(3)]
print("TTFT under load p50 %.3f p99 %.3f (n=%d); per third p50:" % (pct(load, .5), pct(load, .99), len(load)),
      [round(pct(t, .5), 3) for t in thirds], "p max:", [round(max(t), 3) for t in thirds])
print("idle TTFT before %.3f after %.3f" % (tt[0][1], tt[-1][1]))
e2e = [(p["t"], p["e2e"]) for p in P]
print("== requests:", len(R), "==")
print(collections.Counter((r["kind"], r.get("stream"), r.get("status"), r.get("ok")) for r in R))
bad = [r for r in R if not r.get("ok")]
print("not ok:", len(bad))
for r in bad[:20]:
    print(r)
st5 = [r for r in R if (r.get("status") or 0) >= 500]
print("5xx:", len(st5))
disc = sum(1 for r in R if r.get("disconnect") and not r.get("done"))
ndc = sum(1 for r in R if r.get("nd_cancel") and r.get("exc") == "timeout")
sent = sum(1 for r in R if r["kind"] != "bad" and r.get("status") in (200, None))
print("admitted (non-bad) requests:", sent, "stream disconnects:", disc, "non-stream client timeouts:", ndc)
ttfts = [r["ttft"] for r in R if r.get("ttft")]
print("all streamed requests TTFT p50 %.3f p99 %.3f n=%d" % (pct(ttfts, .5), pct(ttfts, .99), len(ttfts)))

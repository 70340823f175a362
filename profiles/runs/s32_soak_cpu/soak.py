"""Bounded mixed-traffic soak against a shifttune server. Usage: soak.py URL DURATION_S WORKERS OUTPREFIX"""
import asyncio, json, random, sys, time
import aiohttp

URL, DURATION, WORKERS, OUT = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
MAXLEN = 2048
rng = random.Random(1234)
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()
PROBE = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 32,
         "temperature": 0, "ignore_eos": True, "logprobs": 1}
records, probes = [], []
T0 = time.monotonic()


def text_of_len(n):  # byte-level tokenizer: one token a byte (+1 BOS)
    s = ""
    while len(s) < n:
        s += rng.choice(WORDS) + " "
    return s[: max(1, n - 1)]


def bad_request():
    choices = [
        ("/v1/completions", {"prompt": "x", "n": 2}),
        ("/v1/completions", {"prompt": "x", "logprobs": 50}),
        ("/v1/completions", {"prompt": text_of_len(1500), "max_tokens": 1000}),  # over the context
        ("/v1/completions", {"prompt": "x", "model": "nope"}),
        ("/v1/completions", {"prompt": "x", "presence_penalty": 1.0}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f"}}]}),
        ("/v1/chat/completions", {"messages": []}),
        ("/v1/completions", "{not json"),
        ("/v1/completions", {"prompt": [], "max_tokens": 4}),
        ("/v1/completions", {"prompt": "x", "max_tokens": -1}),
        ("/v1/completions", {"prompt": [999999], "max_tokens": 4}),
        ("/v1/completions", {"prompt": "x", "stream": False, "stream_options": {"include_usage": True}}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}),
    ]
    return rng.choice(choices)


async def one(session, wid):
    r = rng.random()
    rec = {"t": round(time.monotonic() - T0, 2), "w": wid}
    if r < 0.07:
        path, body = bad_request()
        rec.update(kind="bad", path=path, body=str(body)[:80])
        data = body if isinstance(body, str) else json.dumps(body)
        try:
            async with session.post(URL + path, data=data, headers={"Content-Type": "application/json"},
                                    timeout=aiohttp.ClientTimeout(total=60)) as resp:
                rec["status"] = resp.status
                txt = await resp.text()
                rec["ok"] = 400 <= resp.status < 500
                if not rec["ok"]:
                    rec["body_resp"] = txt[:200]
        except Exception as e:
            rec.update(status=None, ok=False, exc=repr(e))
        records.append(rec)
        return
    chat = rng.random() < 0.4
    stream = rng.random() < 0.6
    plen = int(min(1500, rng.expovariate(1 / 300))) + 1 if rng.random() < 0.8 else rng.randint(1000, 1500)
    maxt = rng.randint(1, 64)
    ignore_eos = rng.random() < 0.7
    lp = rng.random() < 0.2
    disconnect = stream and rng.random() < 0.33
    nd_cancel = (not stream) and rng.random() < 0.1  # non-streaming client giving up early
    body = {"model": "tiny", "max_tokens": maxt, "temperature": rng.choice([0, 0.7, 1.0]), "ignore_eos": ignore_eos,
            "stream": stream}
    if stream and rng.random() < 0.5:
        body["stream_options"] = {"include_usage": True}
    if chat:
        path = "/v1/chat/completions"
        body["messages"] = [{"role": "user", "content": text_of_len(plen)}]
        if lp:
            body["logprobs"], body["top_logprobs"] = True, rng.randint(0, 5)
    else:
        path = "/v1/completions"
        if rng.random() < 0.5:
            body["prompt"] = [rng.randrange(3, 256) for _ in range(plen)]
        else:
            body["prompt"] = text_of_len(plen)
        if lp:
            body["logprobs"] = rng.randint(0, 5)
    rec.update(kind=("chat" if chat else "cmpl"), stream=stream, plen=plen, maxt=maxt, ignore_eos=ignore_eos, lp=lp,
               disconnect=disconnect, nd_cancel=nd_cancel)
    t0 = time.monotonic()
    try:
        timeout = aiohttp.ClientTimeout(total=rng.uniform(0.2, 2.0) if nd_cancel else 300)
        async with session.post(URL + path, json=body, timeout=timeout) as resp:
            rec["status"] = resp.status
            if resp.status != 200:
                rec["ok"] = False
                rec["body_resp"] = (await resp.text())[:300]
                records.append(rec)
                return
            if not stream:
                j = await resp.json()
                rec["tokens"] = j["usage"]["completion_tokens"]
                rec["finish"] = j["choices"][0]["finish_reason"]
                rec["ok"] = not ignore_eos or rec["tokens"] == maxt
            else:
                cut = rng.randint(1, 4) if disconnect else None
                nchunks, done, err, usage, finish = 0, False, None, None, None
                async for raw in resp.content:
                    line = raw.decode().strip()
                    if not line.startswith("data: "):
                        continue
                    payload = line[6:]
                    if payload == "[DONE]":
                        done = True
                        break
                    j = json.loads(payload)
                    if "error" in j:
                        err = j["error"]
                        continue
                    if j.get("usage"):
                        usage = j["usage"]
                    if j.get("choices"):
                        nchunks += 1
                        if rec.get("ttft") is None:
                            rec["ttft"] = time.monotonic() - t0
                        finish = j["choices"][0].get("finish_reason") or finish
                    if cut is not None and nchunks >= cut:
                        break  # leave mid-stream
                rec.update(chunks=nchunks, done=done, err=err, finish=finish,
                           tokens=usage["completion_tokens"] if usage else None)
                if disconnect and not done:
                    resp.close()  # drop the connection
                    rec["ok"] = True
                else:
                    rec["ok"] = done and err is None and (not ignore_eos or usage is None or usage["completion_tokens"] == maxt)
    except asyncio.TimeoutError:
        rec.update(ok=nd_cancel, exc="timeout")
    except Exception as e:
        rec.update(ok=False, exc=repr(e)[:200])
    rec["e2e"] = round(time.monotonic() - t0, 3)
    records.append(rec)


async def worker(session, wid):
    while time.monotonic() - T0 < DURATION:
        await one(session, wid)
        await asyncio.sleep(rng.uniform(0, 0.3))


async def probe(session, stream):
    t0 = time.monotonic()
    rec = {"t": round(t0 - T0, 2), "stream": stream}
    try:
        async with session.post(URL + "/v1/completions", json=PROBE | {"stream": stream},
                                timeout=aiohttp.ClientTimeout(total=300)) as resp:
            rec["status"] = resp.status
            if stream:
                text, lps = "", []
                async for raw in resp.content:
                    line = raw.decode().strip()
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    j = json.loads(line[6:])
                    if j.get("choices"):
                        if "ttft" not in rec:
                            rec["ttft"] = time.monotonic() - t0
                        text += j["choices"][0]["text"]
                        lps += (j["choices"][0].get("logprobs") or {}).get("token_logprobs") or []
                rec["text"], rec["lps"] = text, lps
            else:
                j = await resp.json()
                rec["text"] = j["choices"][0]["text"]
                rec["tokens"] = j["usage"]["completion_tokens"]
                rec["lps"] = j["choices"][0]["logprobs"]["token_logprobs"]
    except Exception as e:
        rec["exc"] = repr(e)
    rec["e2e"] = time.monotonic() - t0
    probes.append(rec)


async def prober(session, period):
    i = 0
    while time.monotonic() - T0 < DURATION:
        await probe(session, stream=(i % 2 == 0))
        i += 1
        await asyncio.sleep(period)


async def main():
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        await probe(session, True)  # idle baseline
        await probe(session, False)
        tasks = [asyncio.create_task(worker(session, w)) for w in range(WORKERS)]
        tasks.append(asyncio.create_task(prober(session, 10)))
        await asyncio.gather(*tasks)
        await asyncio.sleep(3)
        await probe(session, True)  # idle after
        await probe(session, False)
    with open(OUT + "_requests.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    with open(OUT + "_probes.jsonl", "w") as f:
        for r in probes:
            f.write(json.dumps(r) + "\n")
    print("requests", len(records), "probes", len(probes))


asyncio.run(main())

"""Many short requests (bounded: N requests or T seconds) to push the server's per-request rings past 8192."""
import asyncio, sys, time, random, aiohttp
URL, N, T, C = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
done = {"ok": 0, "err": 0}
async def w(s, q):
    t0 = time.monotonic()
    while time.monotonic() - t0 < T:
        try: q.get_nowait()
        except asyncio.QueueEmpty: return
        body = {"prompt": [random.randrange(3, 256) for _ in range(random.randint(1, 40))], "max_tokens": 2, "stream": random.random() < .5}
        try:
            async with s.post(URL + "/v1/completions", json=body) as r:
                await r.read(); done["ok" if r.status == 200 else "err"] += 1
        except Exception:
            done["err"] += 1
async def main():
    q = asyncio.Queue()
    for i in range(N): q.put_nowait(i)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)) as s:
        await asyncio.gather(*[w(s, q) for _ in range(C)])
    print(done)
asyncio.run(main())

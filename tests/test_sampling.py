"""Sampling semantics on the tiny built-in model (single rank): seeds, top-k, stops, min_tokens, text; the
sort-free top-p against a full sort; the sampler's Triton kernels (interpreted on CPU) against the reference."""

from __future__ import annotations

import pytest
import torch

from shifttune import LLM, SamplingParams
from shifttune.kernels.sampling_ref import (
    LN2,
    NUM_PASSES,
    NUM_THRESHOLDS,
    filter_ref,
    sample_ref,
    search_span,
    thresholds,
    top_p_cut_ref,
    uniform_noise,
)
from shifttune.runner.sampler import RequestSampling, Sampler


DEV = "cuda" if torch.cuda.is_available() else "cpu"  # the kernels: compiled on a GPU, interpreted on CPU


@pytest.fixture(scope="module")
def llm():
    with LLM("tiny") as llm:
        yield llm


def test_seeded_sampling_is_reproducible_and_seeds_differ(llm):
    prompt = "Hello"
    a = llm.generate([prompt], SamplingParams(temperature=1.0, seed=7, max_tokens=12, ignore_eos=True))
    b = llm.generate([prompt], SamplingParams(temperature=1.0, seed=7, max_tokens=12, ignore_eos=True))
    c = llm.generate([prompt], SamplingParams(temperature=1.0, seed=8, max_tokens=12, ignore_eos=True))
    assert a[0].outputs[0].token_ids == b[0].outputs[0].token_ids
    assert a[0].outputs[0].token_ids != c[0].outputs[0].token_ids


def test_top_k_one_is_greedy(llm):
    greedy = llm.generate(["abc"], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    topk1 = llm.generate(["abc"], SamplingParams(temperature=1.5, top_k=1, seed=3, max_tokens=10, ignore_eos=True))
    assert greedy[0].outputs[0].token_ids == topk1[0].outputs[0].token_ids


def test_stop_token_ids_min_tokens_and_stop_strings(llm):
    free = llm.generate(["xyz"], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0].outputs[0]
    stop_tok = free.token_ids[3]
    first = free.token_ids.index(stop_tok)
    out = llm.generate(
        ["xyz"], SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[stop_tok], ignore_eos=True)
    )
    c = out[0].outputs[0]
    assert c.finish_reason == "stop" and c.stop_reason == stop_tok and c.token_ids == free.token_ids[: first + 1]
    # the stop token's text is left out, as vLLM does (its id stays in token_ids)
    assert c.text == llm.llm_engine.tokenizer.decode(free.token_ids[:first], skip_special_tokens=True)
    assert c.text != llm.llm_engine.tokenizer.decode(c.token_ids, skip_special_tokens=True)
    # min_tokens masks the stop token until that many tokens exist
    out = llm.generate(
        ["xyz"],
        SamplingParams(temperature=0, max_tokens=12, min_tokens=first + 2, stop_token_ids=[stop_tok], ignore_eos=True),
    )
    assert stop_tok not in out[0].outputs[0].token_ids[: first + 2]
    # a stop string cuts the text before it
    stop_text = free.text[2:4]
    c = llm.generate(["xyz"], SamplingParams(temperature=0, max_tokens=12, stop=stop_text, ignore_eos=True))[0].outputs[
        0
    ]
    assert c.finish_reason == "stop" and c.stop_reason == stop_text
    assert c.text == free.text[: free.text.find(stop_text)]


def test_text_matches_tokenizer_decode(llm):
    out = llm.generate(["The quick brown fox"], SamplingParams(temperature=0.8, seed=1, max_tokens=24, ignore_eos=True))
    c = out[0].outputs[0]
    assert c.text == llm.llm_engine.tokenizer.decode(c.token_ids, skip_special_tokens=True)
    assert len(c.token_ids) == 24 and c.finish_reason == "length"


def _filter(logits, top_k, top_p, min_p=(0.0, 0.0)):
    """The kept set as the sampler computes it (top-k cut from the k-th largest logit, temperature 1)."""
    n = logits.shape[0]
    kth = logits.sort(dim=-1, descending=True).values
    cut_k = torch.tensor([kth[i, k - 1].item() if k > 0 else -torch.inf for i, k in enumerate(top_k)])
    return filter_ref(logits, torch.ones(n), cut_k, torch.tensor(top_p), torch.tensor(min_p[:n]))


def test_top_p_keeps_the_smallest_set_with_enough_mass():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]]))
    filtered = _filter(logits.clone(), [-1, 2], [0.6, 1.0])
    assert torch.isfinite(filtered[0]).tolist() == [True, True, False, False]
    assert torch.isfinite(filtered[1]).tolist() == [True, True, False, False]


def test_logprobs_are_raw_log_softmax(llm):
    out = llm.generate([[0, 9, 10]], SamplingParams(temperature=0, max_tokens=2, logprobs=3, ignore_eos=True))
    lp = out[0].outputs[0].logprobs
    assert len(lp) == 2 and all(len(d) == 3 for d in lp)  # the greedy token is in the top 3
    assert max(lp[0], key=lp[0].get) == out[0].outputs[0].token_ids[0]
    assert all(v <= 0 for d in lp for v in d.values())


def test_top_p_applies_after_top_k():
    """As HF's TopK -> TopP warpers: top-p mass is measured on the distribution renormalized by top-k."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    assert torch.isfinite(_filter(logits, [2], [0.6])[0]).tolist() == [True, False, False]


def test_a_bad_prompt_leaves_nothing_queued(llm):
    from shifttune.config import ConfigError

    with pytest.raises(ConfigError):
        llm.generate([[0, 5], [0, 10**9]], SamplingParams(max_tokens=2))
    assert not llm.llm_engine.has_unfinished_requests() and not llm.llm_engine.requests
    with pytest.raises(ConfigError, match="stop_token_ids: must be in"):
        llm.generate([[0, 5]], SamplingParams(stop_token_ids=[10**6]))


def _sample(logits, settings: list[RequestSampling], num_sampled: list[int] | None = None) -> list[int]:
    """One sampling call on a fresh runner sampler whose rows hold `settings` (row i: settings[i])."""
    n = len(settings)
    sampler = Sampler(n, torch.device("cpu"))
    sampler.set_rows(list(range(n)), settings, num_sampled or [0] * n)
    return sampler(logits, list(range(n)), torch.arange(n)).tokens.tolist()


def test_a_seeded_request_samples_the_same_alone_or_anywhere_in_a_batch():
    torch.manual_seed(0)
    vocab, seeded = 300, RequestSampling(temperature=0.9, top_p=0.95, top_k=50, seed=1234)
    row = torch.randn(vocab)
    alone = _sample(row.unsqueeze(0).clone(), [seeded])[0]
    others = [RequestSampling(temperature=0), RequestSampling(temperature=1.3, seed=99),
              RequestSampling(temperature=0.7, seed=5)]  # fmt: skip
    for position in range(4):
        logits = torch.randn(4, vocab)
        logits[position] = row
        settings = [others[i % 3] for i in range(3)]
        settings.insert(position, seeded)
        assert _sample(logits, settings)[position] == alone
    # and the next token of the same request draws fresh noise (its output count moved on)
    draws = {_sample(row.unsqueeze(0).clone(), [seeded], [n])[0] for n in range(20)}
    assert len(draws) > 1


def test_sampling_runs_the_same_ops_for_any_batch_size_and_mix():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += 1
            return func(*args, **(kwargs or {}))

    kinds = [RequestSampling(temperature=0), RequestSampling(temperature=0.8, top_p=0.9, seed=3),
             RequestSampling(temperature=1.1, top_k=7), RequestSampling(temperature=0.5, min_p=0.05)]  # fmt: skip
    counts = []
    for n in (4, 64):
        sampler = Sampler(n, torch.device("cpu"))
        sampler.set_rows(list(range(n)), [kinds[(i * 7) % 4] for i in range(n)], [0] * n)
        logits, rows_dev = torch.randn(n, 500), torch.arange(n)
        with Count() as c:
            sampler(logits, list(range(n)), rows_dev)
        counts.append(c.ops)
    assert counts[0] == counts[1]


def test_top_p_on_a_flat_distribution_matches_a_full_sort():
    """No sort and no candidate set: the cut is found by a search over the logit range, so a nucleus of
    most of a large vocabulary costs the same as a small one, and keeps the tokens a full sort keeps."""
    vocab = 12_000
    torch.manual_seed(1)
    logits = torch.randn(2, vocab) * 0.01  # nearly flat: the nucleus holds most of the vocabulary
    top_p = torch.tensor([0.9, 0.5])
    kept = torch.isfinite(_filter(logits.clone(), [-1, -1], top_p.tolist())).sum(dim=1)
    sorted_probs = logits.softmax(dim=-1).sort(dim=-1, descending=True).values
    exact = ((sorted_probs.cumsum(dim=-1) - sorted_probs) < top_p.unsqueeze(1)).sum(dim=1)
    assert (exact > 4096).all()
    assert (kept - exact).abs().le(2).all(), (kept, exact)  # equal up to tokens within 1e-5 of the cut
    tokens = _sample(logits.clone(), [RequestSampling(temperature=1, top_p=0.9, seed=1),
                                      RequestSampling(temperature=1, top_p=0.5, seed=2)])  # fmt: skip
    cut = sorted_probs.gather(1, (exact - 1).unsqueeze(1)).squeeze(1)
    probs = logits.softmax(dim=-1)
    assert all(probs[i, t] >= cut[i] * (1 - 1e-4) for i, t in enumerate(tokens))


def test_min_p_drops_tokens_far_below_the_likeliest():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.06, 0.04]]))
    assert torch.isfinite(_filter(logits, [-1], [1.0], (0.1,))[0]).tolist() == [True, True, True, False]


def test_sampled_frequencies_follow_the_distribution():
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1])
    logits = probs.log().repeat(1, 1)
    counts = torch.zeros(4)
    sampler = Sampler(1, torch.device("cpu"))
    sampler.set_rows([0], [RequestSampling(temperature=1.0, seed=77)], [0])
    for _ in range(4000):  # each call is the request's next output token: fresh noise
        counts[sampler(logits.clone(), [0], torch.arange(1)).tokens[0]] += 1
    assert torch.allclose(counts / counts.sum(), probs, atol=0.03)


def _exact_cut(x: torch.Tensor, top_p: float) -> tuple[float, int]:
    """(lowest kept logit, kept count) of the exact nucleus of one row x: the fewest likeliest tokens
    holding at least top_p of the mass (a full sort, float64)."""
    sorted_x = x.double().sort(descending=True).values
    probs = sorted_x.softmax(dim=-1)
    kept = int(((probs.cumsum(dim=-1) - probs) < top_p).sum())
    return float(sorted_x[kept - 1]), kept


def test_search_span_bounds_the_cut_from_below():
    """The search starts at max - L with ln(V / (1 - p)) <= L < that + 2 ln 2 (integer work only)."""
    for vocab in (2, 50, 32000, 128256, 152064):
        for p in (0.0, 0.3, 0.5, 0.9, 0.95, 0.999, 1 - 2**-20):
            top_p = torch.tensor([p], dtype=torch.float32)
            span = search_span(vocab, top_p).item()
            exact = torch.log(torch.tensor(vocab, dtype=torch.float64) / (1 - top_p.double())).item()
            assert exact <= span < exact + 2 * LN2 + 1e-6, (vocab, p, span, exact)


@pytest.mark.parametrize("kind", ["flat", "peaked", "llm", "one_token"])
def test_top_p_cut_matches_a_full_sort(kind):
    """The cut over 128k logits against the exact nucleus: it keeps at least top_p of the mass and sits
    within one step of the last pass (the first bracket's width / 16**4) below the exact cut. On peaked
    rows the first bracket is [max - L, max], narrower than [lowest, max]."""
    vocab = 128256
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, vocab, generator=gen)
    if kind == "flat":
        x = x * 0.02
    elif kind == "peaked":
        x = x * 4
    elif kind == "llm":  # a bulk around -5 and a few likely tokens near 10
        x = x * 2 - 5
        x[:, :20] = 10 - torch.arange(20).float() / 4
    else:  # one token holds more than any top_p here
        x[:, 7] = 40
    top_p = torch.tensor([0.5, 0.9, 0.95, 0.99])
    cut = top_p_cut_ref(x, top_p)
    m = x.max(dim=-1).values
    lo0 = torch.maximum(x.min(dim=-1).values, m - search_span(vocab, top_p))
    if kind == "peaked":
        assert (lo0 > x.min(dim=-1).values + 10).all()  # the span tightened the first bracket by > 10 logits
    for r in range(4):
        exact_cut, exact_kept = _exact_cut(x[r], top_p[r].item())
        step = (m[r] - lo0[r]).item() / NUM_THRESHOLDS**NUM_PASSES
        assert exact_cut - step - 1e-6 <= cut[r].item() <= exact_cut, (kind, r, cut[r].item(), exact_cut, step)
        kept = x[r] >= cut[r]
        probs = x[r].double().softmax(dim=-1)
        assert probs[kept].sum() >= top_p[r].item() - 1e-6
        in_step = int(((x[r] >= exact_cut - step - 1e-6) & (x[r] < exact_cut)).sum())
        assert exact_kept <= int(kept.sum()) <= exact_kept + in_step
    if kind == "one_token":
        assert (cut == 40).all()  # only the likeliest token is left


def test_uniform_noise_is_odd_multiples_of_2_pow_minus_24():
    seeds, steps = torch.tensor([0, 1, 2**62 + 5]), torch.tensor([0, 0, 2**33])
    u = uniform_noise(seeds, steps, 50_000)
    assert ((u * 2**24) % 2 == 1).all() and (u > 0).all() and (u < 1).all()
    assert (u.mean(dim=1) - 0.5).abs().max() < 0.01 and (u.std(dim=1) - 12**-0.5).abs().max() < 0.01
    assert not torch.equal(u[0], u[1]) and torch.equal(u, uniform_noise(seeds, steps, 50_000))
    assert torch.equal(uniform_noise(seeds[:1], steps[:1], 70_000)[:, :50_000], u[:1])  # v's noise depends on v only


def _tables(n: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Mixed per-row settings: inv_temp, top_p, min_p, seeds, steps, greedy."""
    i = torch.arange(n)
    return (1 / (0.3 + torch.rand(n, generator=gen)), torch.tensor([0.5, 0.9, 0.95, 0.99, 1.0, 0.7, 0.1])[i % 7],
            torch.where(i % 5 == 0, 0.05, 0.0), torch.randint(0, 2**62, (n,), generator=gen),
            torch.randint(0, 1000, (n,), generator=gen), i % 6 == 3)  # fmt: skip


@pytest.mark.parametrize(
    "scale, config",
    [(0.02, {}), (3.0, {}), (0.02, {"COPY_CAP": 16}),
     (0.02, {"CHUNK": 1024, "COPY_CAP": 128, "FINISH_BLOCK": 256, "SPLIT_SUB": 512, "WARPS": 4,
             "SPLIT_ROW_BYTES": 8})],
)  # fmt: skip
def test_sample_kernels_match_the_reference(monkeypatch, scale, config):
    """The four kernels (interpreted on CPU) against `sample_ref`, settings read at permuted rows of the tables,
    with and without top-k. COPY_CAP 16: the bracket overflows its copies and the last kernel reads the logits;
    the last case: other shapes (several chunks, loops in `_split_kernel` and `_finish_kernel`, narrower
    blocks)."""
    from shifttune.kernels import sampling

    for name, value in config.items():
        monkeypatch.setattr(sampling, name, sampling.WARPS | {"split": value} if name == "WARPS" else value)
    n, vocab = 12, 3000
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(n, vocab, generator=gen) * scale
    logits[1, 100:200] = float("-inf")
    tables = _tables(n, gen)
    perm = torch.randperm(n, generator=gen)
    placed = [torch.empty_like(t) for t in tables]
    for t, dst in zip(tables, placed):
        dst[perm] = t  # row i's settings at perm[i]
    no_k = torch.full((n,), -torch.inf)
    dev = [t.to(DEV) for t in (logits, perm, *placed)]
    got = sampling.sample(dev[0], dev[1], dev[2], None, *dev[3:])
    assert got.tolist() == sample_ref(logits, tables[0], no_k, *tables[1:]).tolist()
    k = torch.randint(1, 40, (n,), generator=gen)
    kth = logits.sort(dim=-1, descending=True).values.gather(1, (k - 1).unsqueeze(1)).squeeze(1)
    cut_k = torch.where(torch.arange(n) % 2 == 0, kth, -torch.inf)  # top-k on every other row
    got = sampling.sample(dev[0], dev[1], dev[2], cut_k.to(DEV), *dev[3:])
    assert got.tolist() == sample_ref(logits, tables[0], cut_k, *tables[1:]).tolist()


def test_sample_kernels_give_a_row_the_same_token_alone_or_in_a_batch():
    """Bit for bit: the chunks' sums do not depend on the batch, so neither does the draw."""
    from shifttune.kernels import sampling

    gen = torch.Generator().manual_seed(6)
    logits = (torch.randn(5, 20_000, generator=gen) * 0.02).to(DEV)  # flat: a nucleus of most of the vocabulary
    tables = [t.to(DEV) for t in _tables(5, gen)]
    rows = torch.arange(5, device=DEV)
    batch = sampling.sample(logits, rows, tables[0], None, *tables[1:])
    for j in (0, 2, 4):
        alone = sampling.sample(logits[j : j + 1], rows[j : j + 1], tables[0], None, *tables[1:])
        assert alone.item() == batch[j].item()


# 4 chunks of 2000: `_finish_kernel` takes 16 copies of each chunk a block (up to 3 blocks of the 48 copies), or 64
# logits of a chunk whose bracket overflowed its copies (8 blocks a chunk)
DENSE_SHAPES = {"CHUNK": 512, "COPY_CAP": 48, "FINISH_BLOCK": 64, "SPLIT_SUB": 256}


def _dense_setup(monkeypatch):
    """The kernels module with small chunks, copies and blocks, and a dict that gets each call's workspace."""
    from shifttune.kernels import sampling

    for name, value in DENSE_SHAPES.items():
        monkeypatch.setattr(sampling, name, value)
    monkeypatch.setattr(sampling, "WARPS", sampling.WARPS | {"split": 2})  # 32 bytes a thread and row: W = 512 bf16
    seen: dict[str, torch.Tensor] = {}
    workspace = sampling.workspace
    monkeypatch.setattr(sampling, "workspace", lambda *a: seen.update(workspace(*a)) or seen)
    return sampling, seen


def _finish_blocks(seen: dict[str, torch.Tensor], n: int) -> tuple[list[int], list[int]]:
    """Per row of the last call, the blocks `_finish_kernel` walked in each pass: (of copies, of logits), from
    the chunks' bracket counts as the kernel reads them."""
    counts = seen["counts"].view(n, -1).cpu()
    keep, chunk, block = DENSE_SHAPES["COPY_CAP"], DENSE_SHAPES["CHUNK"], DENSE_SHAPES["FINISH_BLOCK"]
    per_chunk = block // counts.shape[1]
    copies = (counts.where(counts <= keep, 0).amax(dim=1) + per_chunk - 1) // per_chunk
    logits = (counts > keep).sum(dim=1) * (chunk // block)
    return copies.tolist(), logits.tolist()


def _dense(seen: dict[str, torch.Tensor], n: int) -> list[bool]:
    """Per row of the last call, whether `_finish_kernel` walked more than one block a pass."""
    copies, logits = _finish_blocks(seen, n)
    return [c + g > 1 for c, g in zip(copies, logits)]


def _kernel_cuts(seen: dict[str, torch.Tensor], x: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """[n] the top-p cut that the kernels' per-pass masses in the last call's workspace give (the first pass's
    per chunk, the others' per row), the search run here as `top_p_cut_ref` runs it; x: the logits after top-k
    and temperature."""
    n = x.shape[0]
    passes = [seen["partial"].view(n, -1, NUM_THRESHOLDS).cpu().sum(dim=1)]
    passes += list(seen["masses"].view(NUM_PASSES - 1, n, NUM_THRESHOLDS).cpu())
    m = x.max(dim=-1).values
    e = torch.where(x > -torch.inf, (x - m.unsqueeze(1)).exp(), 0.0)
    need = top_p * e.sum(dim=-1)
    lo = torch.maximum(torch.where(x > -torch.inf, x, torch.inf).min(dim=-1).values, m - search_span(x.shape[1], top_p))
    hi, above = m, torch.zeros(n)
    for k in range(NUM_PASSES):
        t = thresholds(lo, hi)
        mass = above.unsqueeze(1) + passes[k]  # passes after the first: entries in the first bracket
        c = (mass >= need.unsqueeze(1)).sum(dim=-1)
        if k == 0:  # the mass at or above the first bracket's upper end
            above = mass.gather(1, (c.clamp(max=NUM_THRESHOLDS - 1)).unsqueeze(1)).squeeze(1)
        lo, hi = (torch.where(c > 0, t.gather(1, (c - 1).clamp(min=0).unsqueeze(1)).squeeze(1), lo),
                  torch.where(c < NUM_THRESHOLDS, t.gather(1, c.clamp(max=NUM_THRESHOLDS - 1).unsqueeze(1)).squeeze(1),
                              hi))  # fmt: skip
    return lo


def _dense_logits(kind: str, n: int, vocab: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "bf16":  # as dummy weights give them: the cut falls in the dense middle of the logits
        return (torch.randn(n, vocab, generator=gen) * 1.3).to(torch.bfloat16).float()
    # groups of equal logits: the last bracket holds a whole group, much of the kept mass (the draw's buckets)
    return torch.randint(0, 12, (n, vocab), generator=gen).float() * 0.25


@pytest.mark.parametrize("kind", ["bf16", "ties"])
def test_sample_kernels_match_the_reference_when_every_bracket_is_dense(monkeypatch, kind):
    """Every row's first bracket takes `_finish_kernel` several blocks: the other passes and the draw run over
    all chunks (from the copies, or the logits where a chunk's bracket overflowed them). Top-p with min-p and
    top-k on some rows; the cut that the kernels' masses give is the reference's (a draw seldom shows a cut a
    little off). Row 4: a few likely tokens over a flat bulk that top-p keeps and min-p drops. Rows 5 and 7: two
    groups of equal logits 1.5 steps of the last pass apart, the larger one just below the last cut."""
    sampling, seen = _dense_setup(monkeypatch)
    n, vocab = 8, 2000
    gen = torch.Generator().manual_seed(11)
    logits = _dense_logits(kind, n, vocab, gen)
    v = torch.arange(vocab)
    logits[4] = torch.where(v % 100 == 7, 2.0, 0.0)
    logits[5] = logits[7] = torch.where(v % 100 == 7, 2.0, torch.where(v % 10 == 0, 1.0, 1.0 - 2.3e-5))
    inv_temp = torch.full((n,), 1 / 0.8)
    top_p = torch.tensor([0.95, 0.9, 0.5, 0.99, 0.95, 0.1, 0.7, 0.1])
    min_p = torch.tensor([0.0, 0.05, 0.0, 0.0, 0.3, 0.0, 0.1, 0.0])
    k = torch.tensor([0, 0, 0, 1500, 0, 0, 1000, 0])
    kth = logits.sort(dim=-1, descending=True).values.gather(1, (k - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    cut_k = torch.where(k > 0, kth, -torch.inf)
    seeds, steps = torch.randint(0, 2**62, (n,), generator=gen), torch.randint(0, 1000, (n,), generator=gen)
    greedy = torch.zeros(n, dtype=torch.bool)
    want = sample_ref(logits, inv_temp, cut_k, top_p, min_p, seeds, steps, greedy).tolist()
    dev = [t.to(DEV) for t in (logits, torch.arange(n), inv_temp, cut_k, top_p, min_p, seeds, steps, greedy)]
    assert sampling.sample(*dev).tolist() == want
    copy_blocks, logit_blocks = _finish_blocks(seen, n)
    assert all(_dense(seen, n)) and max(copy_blocks) == 3 and 0 in copy_blocks  # 3 blocks of copies; all logits
    assert any(c > 0 and g > 0 for c, g in zip(copy_blocks, logit_blocks))  # copies of some chunks, logits of others
    x = torch.where(logits >= cut_k.unsqueeze(1), logits * inv_temp.unsqueeze(1), -torch.inf)
    assert torch.equal(_kernel_cuts(seen, x, top_p), top_p_cut_ref(x, top_p))


def test_sample_kernels_give_a_dense_row_the_same_token_alone_or_in_a_mixed_batch(monkeypatch):
    """Rows with dense brackets next to rows of one block, greedy, top-k and no-top-p rows: each row draws the
    same token alone as in the batch (settings read at permuted rows)."""
    sampling, seen = _dense_setup(monkeypatch)
    n, vocab = 6, 2000
    gen = torch.Generator().manual_seed(12)
    logits = torch.cat([_dense_logits("bf16", 1, vocab, gen), torch.randn(1, vocab, generator=gen) * 4,
                        _dense_logits("bf16", 2, vocab, gen), _dense_logits("ties", 2, vocab, gen)])  # fmt: skip
    inv_temp = torch.full((n,), 1 / 0.8)
    top_p = torch.tensor([0.95, 0.95, 0.9, 1.0, 0.9, 0.99])
    min_p = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.02])
    greedy = torch.tensor([False, False, True, False, False, False])
    cut_k = torch.full((n,), -torch.inf)
    cut_k[4] = logits[4].sort(descending=True).values[4]  # top-5: a small bracket
    seeds, steps = torch.randint(0, 2**62, (n,), generator=gen), torch.randint(0, 1000, (n,), generator=gen)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    tables = [torch.empty_like(t) for t in (inv_temp, top_p, min_p, seeds, steps, greedy)]
    for t, dst in zip((inv_temp, top_p, min_p, seeds, steps, greedy), tables):
        dst[perm] = t  # row i's settings at perm[i]
    logits, cut_k, rows, tables = logits.to(DEV), cut_k.to(DEV), perm.to(DEV), [t.to(DEV) for t in tables]
    batch = sampling.sample(logits, rows, tables[0], cut_k, *tables[1:]).tolist()
    assert _dense(seen, n) == [True, False, False, False, False, True]
    alone = [sampling.sample(logits[j : j + 1], rows[j : j + 1], tables[0], cut_k[j : j + 1], *tables[1:]).item()
             for j in range(n)]  # fmt: skip
    assert alone == batch
    want = sample_ref(logits.cpu(), inv_temp, cut_k.cpu(), top_p, min_p, seeds, steps, greedy).tolist()
    assert batch == want


def test_greedy_kernel_is_torch_argmax_and_writes_the_next_inputs(monkeypatch):
    """`greedy_sample` (one launch, interpreted on CPU) against torch.argmax: ties within and across chunks
    (the first wins), -0 before +0, a row of -inf, negative rows, a vocabulary that is not a whole number of
    chunks, bf16 logits; it writes each token at its row of `last_token`, moves the steps on, and leaves its
    keys and tickets as it found them (a second call gives the same)."""
    from shifttune.kernels import sampling

    monkeypatch.setattr(sampling, "GREEDY_CHUNK", 64)
    n, vocab = 7, 300  # 5 chunks, the last one partial
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(n, vocab, generator=gen)
    logits[0, [10, 70, 200]] = 9.0  # the same max in chunks 0, 1, 3
    logits[1, [150, 140]] = 9.0  # two in one chunk
    logits[2] = -torch.rand(vocab, generator=gen) - 1
    logits[2, [5, 130]] = torch.tensor([-0.0, 0.0])  # equal to torch: the first
    logits[3] = -torch.inf
    logits[4, 299] = 50.0  # the partial chunk's last entry
    logits[5] = -torch.rand(vocab, generator=gen)
    rows = torch.tensor([6, 0, 5, 1, 4, 2, 3])
    for dtype in (torch.float32, torch.bfloat16):
        x = logits.to(dtype)
        want = x.float().argmax(dim=-1)
        for _ in range(2):
            steps, last = torch.arange(10, 17), torch.full((8,), -1)
            dev = [t.to(DEV) for t in (x, rows, steps, last)]
            got = sampling.greedy_sample(dev[0], dev[1], dev[2], advance=True, last_token=dev[3])
            assert got.tolist() == want.tolist()
            assert dev[3][rows].tolist() == want.tolist() and dev[3][7].item() == -1
            assert (dev[2].cpu() - torch.arange(10, 17))[rows].tolist() == [1] * n
    assert got.tolist()[:5] == [10, 140, 5, 0, 299]
    assert sampling.greedy_sample(dev[0], dev[1], dev[2]).tolist() == want.tolist()  # no advance: steps stay
    assert (dev[2].cpu() - torch.arange(10, 17))[rows].tolist() == [1] * n


def test_sample_kernels_take_bf16_logits_as_their_float32_values():
    """The kernels widen bf16 logits on load: the same tokens as the reference on logits.float(), with and
    without top-k, and every row's token written at its row of `last_token`."""
    from shifttune.kernels import sampling

    n, vocab = 6, 3000
    gen = torch.Generator().manual_seed(9)
    logits = (torch.randn(n, vocab, generator=gen) * 1.5).to(torch.bfloat16)
    tables = _tables(n, gen)
    want = sample_ref(logits.float(), tables[0], torch.full((n,), -torch.inf), *tables[1:])
    dev = [t.to(DEV) for t in (logits, torch.arange(n), *tables)]
    last = torch.full((n,), -1, device=DEV)
    got = sampling.sample(dev[0], dev[1], dev[2], None, *dev[3:], last_token=last)
    assert got.tolist() == want.tolist() == last.tolist()
    kth = logits.float().topk(20, dim=-1).values[:, -1]
    want = sample_ref(logits.float(), tables[0], kth, *tables[1:])
    assert sampling.sample(dev[0], dev[1], dev[2], kth.to(DEV), *dev[3:]).tolist() == want.tolist()


def test_kernel_sampler_matches_the_torch_sampler():
    """The runner's Sampler on its kernel path (interpreted on CPU) and on its torch path, over a few steps of a
    mixed batch: same tokens, same logprobs, and the kernels move the step counters on."""
    kinds = [RequestSampling(temperature=0), RequestSampling(temperature=0.8, top_p=0.9, seed=3, logprobs=2),
             RequestSampling(temperature=1.1, top_k=7, seed=4), RequestSampling(temperature=0.5, min_p=0.05, seed=5),
             RequestSampling(temperature=1.0, top_p=0.5, top_k=30, seed=6)]  # fmt: skip
    rows = [4, 0, 3, 1]  # persistent-batch rows, not in order
    samplers = [Sampler(6, torch.device(DEV), kernels=k) for k in (True, False)]
    for s in samplers:
        s.set_rows(rows, [kinds[(i * 3) % 5] for i in range(4)], [0, 2, 5, 1])
    gen = torch.Generator().manual_seed(8)
    for _ in range(3):
        logits = (torch.randn(4, 700, generator=gen) * 2).to(DEV)
        lasts = [torch.full((6,), -1, device=DEV) for _ in samplers]
        outs = [s(logits.clone(), rows, torch.tensor(rows, device=DEV), last) for s, last in zip(samplers, lasts)]
        assert outs[0].tokens.tolist() == outs[1].tokens.tolist() == lasts[0][rows].tolist() == lasts[1][rows].tolist()
        assert torch.equal(outs[0].chosen_logprobs, outs[1].chosen_logprobs)
    assert samplers[0].step.tolist() == samplers[1].step.tolist() == [2 + 3, 1 + 3, 0, 5 + 3, 0 + 3, 0]
    for s in samplers:  # an all-greedy batch: the kernel path's one launch
        s.set_rows([2, 5], [kinds[0], kinds[0]], [0, 0])
    logits = (torch.randn(2, 700, generator=gen) * 2).to(torch.bfloat16).to(DEV)
    lasts = [torch.full((6,), -1, device=DEV) for _ in samplers]
    outs = [s(logits, [5, 2], torch.tensor([5, 2], device=DEV), last) for s, last in zip(samplers, lasts)]
    assert outs[0].tokens.tolist() == outs[1].tokens.tolist() == logits.float().argmax(-1).tolist()
    assert lasts[0].tolist() == lasts[1].tolist() and lasts[0][[5, 2]].tolist() == outs[0].tokens.tolist()
    assert samplers[0].step.tolist() == samplers[1].step.tolist() == [2 + 3, 1 + 3, 1, 5 + 3, 0 + 3, 1]


@pytest.mark.parametrize("vocab", [97, 1000, 128256])
def test_sampler_workspace_parts_start_on_16_bytes(vocab):
    """Triton compiles a binary per pointer alignment: with a small vocabulary the parts of the workspace
    sat at odd offsets for some row counts, and the first batch of such a count compiled the sampler anew."""
    from shifttune.kernels.sampling import COPY_CAP, workspace

    for n in range(1, 6):
        ws = workspace(n, vocab, torch.device("cpu"))
        assert all(t.data_ptr() % 16 == 0 for t in ws.values())
        chunks = ws["counts"].numel()
        assert ws["cand_x"].numel() == ws["cand_i"].numel() == COPY_CAP * chunks
        assert ws["partial"].numel() == NUM_THRESHOLDS * chunks
        assert ws["masses"].numel() == (NUM_PASSES - 1) * NUM_THRESHOLDS * n

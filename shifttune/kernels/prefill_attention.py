"""Attention of an eager (not graph-replayed) step, split by sequence: long prefill chunks through torch SDPA
(cuDNN on GPU, the math backend on CPU), decode tokens and short chunks through the paged kernel.

The model runner builds a `StepPlan` for every eager step from the step's host-side lengths
(`StepAttention.plan`); `kernels.attention.attend` runs it in every layer. A sequence whose chunk has
at least `min_tokens` new tokens goes to SDPA on contiguous copies (or, when it needs no padding, on the
projection's own views): its new K/V come straight from the projection and its cached prefix from the paged
cache: the first P0 keys (below) in place when their blocks fill one range of it, in any order, and P0 is a
multiple of the block size (`BlockSpan`), else gathered; the other prefix keys are always gathered.
torch aligns `is_causal` top-left, and its `causal_lower_right` bias never reaches cuDNN (it goes to flash or
memory-efficient attention, or materializes a mask). So a chunk of n tokens after a prefix of P cached ones
runs as two calls merged by their log-sum-exp: the chunk's queries against the first P0 keys with no mask (P0
= P rounded down to the pad), and against the remaining r = P - P0 prefix keys plus the chunk's own keys as
one square causal block in which r discarded query rows sit in front of the real ones (one call when P0 = 0).
Query and key counts are padded with zeros at the end (rows a causal mask hides from the real ones, or
discarded query rows) to multiples of `pad`: cuDNN builds one execution plan per shape, and padding bounds the
shapes it meets (and keeps lengths multiples of 128, which older cuDNN releases need for correct results).
`warm_up` builds the plans of the common shapes at start.

Everything else goes to the paged kernel in one launch. With the Triton kernel its integer arguments
are padded to multiples of 16 (tokens, sequences, block-table width; padding as the CUDA graphs do it)
and its split count a power of 2: Triton compiles one binary per specialization (constexprs, and
integers by divisibility by 16 or equality to 1), so every eager launch then meets one of the few
binaries `warm_up` compiled at start.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from shifttune.kernels.attention import AttentionBackend, AttentionMetadata, BlockSpan
from shifttune.kernels.launch import sm_count
from shifttune.kernels.split_kv import busy_programs, step_kind
from shifttune.kernels.upload import to_device_parts

PREFILL_PATHS = ("auto", "paged", "sdpa")
SDPA_PAD = 256  # token granularity of SDPA shapes on GPU (cuDNN plans); also keeps lengths multiples of 128
# "auto" sends a chunk of n new tokens after `prefix` cached ones to SDPA when n >= SDPA_MIN_TOKENS and its
# query-key pairs n * (prefix + n / 2) >= SDPA_MIN_PAIRS. On an H200 (profiles/long_prompts_h200.json,
# attention_layer.threshold) the paged kernel is 2x faster on a 1024-token prompt with no prefix, equal at
# 2048, and SDPA faster from 4096 tokens, and on chunks of 256-4096 tokens after a 16k prefix (1.1-1.8x).
SDPA_MIN_TOKENS = 256
SDPA_MIN_PAIRS = 4 * 1024 * 1024
SDPA_WARM_MAX_TOKENS = 16384  # square causal shapes warmed at start, up to this size (and the full chunk)
PAGED_PAD = 16  # Triton specializes integers on divisibility by 16
PAGED_SPLITS = (1, 2, 4, 8, 16, 32, 64)  # split-KV ways of eager paged launches (a choice rounded down)


@dataclass
class SdpaSupport:
    """What torch's SDPA does on this device, as `probe_sdpa` found it."""

    backend: str  # "cudnn" (forced cuDNN), "default" (torch's own choice), "math" (CPU)
    gqa: bool = True  # K/V with fewer heads than Q run as they are (else heads are repeated first)
    lse: bool = True  # log-sum-exp available, so chunks after a cached prefix can run on SDPA
    cudnn_version: int | None = None
    notes: list[str] = field(default_factory=list)


class SdpaPrefill:
    """One sequence's chunk (after any cached prefix) through SDPA; see the module docstring."""

    def __init__(self, support: SdpaSupport, pad: int):
        self.support, self.pad = support, pad
        self.prefix_reads = {"in_place": 0, "gathered": 0}  # calls with unmasked prefix keys, by how they were read

    def sequence(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        blocks: torch.Tensor,
        prefix: int,
        scale: float,
        out: torch.Tensor | None,
        span: BlockSpan | None = None,
    ) -> torch.Tensor:
        """q: [n, Hq, d], k/v: [n, Hk, d] (the chunk's new tokens; views are fine); `prefix` tokens of the
        sequence are cached before them, in the blocks `blocks` lists (a device row of its block table; `span`:
        the same table's, from the host). Writes the chunk's attention output into `out` [n, Hq, d] and returns
        it; with `out` None, returns a new tensor (one call's own output, not a copy, when there is no merge)."""
        n, hq, d = q.shape
        hk, pad, bs = k.shape[1], self.pad, k_cache.shape[1]
        p0 = prefix - prefix % pad  # keys every query sees in full
        r = prefix - p0  # prefix keys that join the chunk's causal block
        m = r + n
        size = -(-m // pad) * pad
        if p0:  # the keys every query sees: [p0, Hk, d]
            first = span.range_start(p0 // bs) if span is not None and p0 % bs == 0 else None
            # NOTE: unmasked, these keys are a set: blocks that fill one range of the cache, in any order, are read
            # in place (a view), not gathered (~4 KiB a token a layer for a llama-8b, read and written per chunk)
            idx = slice(first, first + p0 // bs) if first is not None else blocks[: -(-p0 // bs)]
            self.prefix_reads["gathered" if first is None else "in_place"] += 1
            kp, vp = (cache[idx].flatten(0, 1)[:p0] for cache in (k_cache, v_cache))
        # NOTE: cuDNN builds a plan per shape and strides: `warm_up` builds contiguous ones and ones for q, k, v
        # as views into one projection's rows (equal row strides); those are the only views passed as they are
        if size == n and q.stride(0) == k.stride(0) == v.stride(0):  # no padding, no prefix rows in the block
            qb, kb, vb = q, k, v
        else:
            qb, kb, vb = q.new_empty(size, hq, d), k.new_empty(size, hk, d), v.new_empty(size, hk, d)
            qb[:r].zero_()
            qb[r:m], qb[m:] = q, 0
            kb[m:], vb[m:] = 0, 0  # NOTE: zeros, not garbage: a NaN behind the causal mask could still leak through
            if r:  # the prefix keys past p0 (fewer than `pad`), gathered
                tail = blocks[p0 // bs : -(-prefix // bs)]
                kb[:r], vb[:r] = (cache[tail].flatten(0, 1)[p0 % bs : p0 % bs + r] for cache in (k_cache, v_cache))
            kb[r:m], vb[r:m] = k, v
        if p0 == 0:
            o, _ = self.attention(qb, kb, vb, True, scale, lse=False)
            if out is None:
                return o[r:m]
            return out.copy_(o[r:m])
        if out is None:
            out = q.new_empty(q.shape)
        o1, l1 = self.attention(qb, kb, vb, True, scale, lse=True)
        o2, l2 = self.attention(qb, kp, vp, False, scale, lse=True)
        if q.is_cuda:  # one launch instead of casts, sigmoid, lerp and a copy (~13 ms of an 8k chunk on an H200)
            from shifttune.kernels.fused import merge_by_lse  # NOTE: lazy: Triton is GPU-only here

            merge_by_lse(o1[r:m], l1[:, r:m], o2[r:m], l2[:, r:m], out)
            return out
        # the two parts weigh exp(l1) : exp(l2), so o1's share is sigmoid(l1 - l2); mixed in fp32 (a bf16 share
        # would cost ~0.4% of every weight)
        share = torch.sigmoid(l1[:, r:m] - l2[:, r:m]).t().unsqueeze(-1)  # [n, Hq, 1], fp32
        return out.copy_(torch.lerp(o2[r:m].float(), o1[r:m].float(), share))

    def attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float, lse: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """q: [M, Hq, d], k/v: [L, Hk, d] contiguous, causal top-left. Returns (out [M, Hq, d], the
        log-sum-exp [Hq, M] in float32 when `lse`, else None)."""
        group = q.shape[1] // k.shape[1]
        q4, k4, v4 = (x.unsqueeze(0).transpose(1, 2) for x in (q, k, v))  # [1, H, S, d], token-major memory
        if group > 1 and not self.support.gqa:
            k4, v4 = k4.repeat_interleave(group, dim=1), v4.repeat_interleave(group, dim=1)
        gqa = k4.shape[1] != q4.shape[1]
        backend = self.support.backend
        if lse and backend == "cudnn":
            # NOTE: torch's public SDPA returns no log-sum-exp; its cuDNN op does (natural log, [1, H, M(, 1)]).
            o, stats = torch.ops.aten._scaled_dot_product_cudnn_attention(
                q4, k4, v4, None, True, 0.0, causal, False, scale=scale
            )[:2]
            return o.transpose(1, 2)[0], stats.reshape(q4.shape[1], q4.shape[2])
        if lse:
            return _math_attention(q4, k4, v4, causal, scale)
        if backend == "default":
            o = F.scaled_dot_product_attention(q4, k4, v4, is_causal=causal, scale=scale, enable_gqa=gqa)
        else:
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION if backend == "cudnn" else SDPBackend.MATH):
                o = F.scaled_dot_product_attention(q4, k4, v4, is_causal=causal, scale=scale, enable_gqa=gqa)
        return o.transpose(1, 2)[0], None


def _math_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-torch attention with its log-sum-exp, float32 inside: q [1, Hq, M, d], k/v [1, Hk, L, d]."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1).float(), v.repeat_interleave(group, dim=1).float()
    s = (q.float() @ k.transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    o = torch.exp(s - lse.unsqueeze(-1)) @ v
    return o.to(q.dtype).transpose(1, 2)[0], lse[0]


@dataclass
class StepPlan:
    """How one eager step's attention runs: its SDPA sequences and one paged launch for the rest."""

    num_tokens: int
    sdpa: SdpaPrefill | None
    # (row in the step's block table, first token, new tokens, prefix, the table's span or None)
    sdpa_seqs: list[tuple[int, int, int, int, BlockSpan | None]]
    block_tables: torch.Tensor  # the step's
    paged_meta: AttentionMetadata | None  # the other sequences (padded when pinned), None when there are none
    paged_tokens: int  # their real tokens
    paged_select: slice | torch.Tensor | None  # where those tokens sit in the step (slice or index tensor)
    paged_padded: int  # rows of the paged launch (>= paged_tokens)

    def run(
        self,
        paged: AttentionBackend,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        sel, t = self.paged_select, self.paged_tokens
        whole = isinstance(sel, slice) and sel == slice(0, self.num_tokens) and self.paged_padded == t
        if whole and not self.sdpa_seqs:
            return paged(q, k_cache, v_cache, self.paged_meta, scale)  # the whole step, as it is
        if self.paged_meta is None and len(self.sdpa_seqs) == 1 and self.sdpa_seqs[0][2] == self.num_tokens:
            row, _, _, prefix, span = self.sdpa_seqs[0]  # one prompt's chunk is the whole step: no copy into `out`
            return self.sdpa.sequence(q, k, v, k_cache, v_cache, self.block_tables[row], prefix, scale, None, span)
        out = q.new_empty(self.num_tokens, *q.shape[1:])
        if self.paged_meta is not None:
            if self.paged_padded == t and isinstance(sel, slice):
                qp = q[sel]
            else:
                qp = q.new_zeros(self.paged_padded, *q.shape[1:])
                qp[:t] = q[sel]
            o = paged(qp, k_cache, v_cache, self.paged_meta, scale)
            out[sel] = o[:t]
        for row, start, n, prefix, span in self.sdpa_seqs:
            end = start + n
            self.sdpa.sequence(q[start:end], k[start:end], v[start:end], k_cache, v_cache, self.block_tables[row],
                               prefix, scale, out[start:end], span)  # fmt: skip
        return out


class StepAttention:
    """Per-engine choices: which chunks go to SDPA (`min_tokens`, `min_pairs`), and whether eager paged launches are
    pinned to the warmed Triton specializations (`pin_paged`). `plan` is called once per eager step."""

    def __init__(
        self,
        sdpa: SdpaPrefill | None,
        min_tokens: int,
        pin_paged: bool,
        num_q_heads: int,
        num_kv_heads: int,
        min_pairs: int = 0,
    ):
        self.sdpa, self.min_tokens, self.min_pairs, self.pin_paged = sdpa, min_tokens, min_pairs, pin_paged
        self.hq, self.hk = num_q_heads, num_kv_heads

    @property
    def path(self) -> str:
        return "sdpa" if self.sdpa is not None else "paged"

    def takes(self, new_tokens: int, prefix: int) -> bool:
        """Whether a chunk of `new_tokens` after `prefix` cached tokens runs on SDPA."""
        s = self.sdpa
        if s is None or new_tokens < self.min_tokens or new_tokens * (prefix + new_tokens / 2) < self.min_pairs:
            return False
        return s.support.lse or prefix < s.pad

    def plan(self, meta: AttentionMetadata) -> StepPlan | None:
        """The plan of an eager step (None: the paged backend takes it as it is)."""
        qsl, lens, spans = meta.query_start_loc_cpu, meta.seq_lens_cpu, meta.block_spans
        sdpa_seqs, rest = [], []
        for i, seq_len in enumerate(lens):
            n = qsl[i + 1] - qsl[i]
            if self.takes(n, seq_len - n):
                sdpa_seqs.append((i, qsl[i], n, seq_len - n, spans[i] if spans else None))
            else:
                rest.append(i)
        if not sdpa_seqs and not self.pin_paged:
            return None
        plan = StepPlan(qsl[-1], self.sdpa, sdpa_seqs, meta.block_tables, None, 0, None, 0)
        if rest:
            self._paged_part(meta, rest, plan)
        return plan

    def _paged_part(self, meta: AttentionMetadata, rest: list[int], plan: StepPlan) -> None:
        qsl, lens = meta.query_start_loc_cpu, meta.seq_lens_cpu
        starts, counts = [qsl[i] for i in rest], [qsl[i + 1] - qsl[i] for i in rest]
        t = sum(counts)
        sub_qsl, sub_lens = [0], [lens[i] for i in rest]
        for c in counts:
            sub_qsl.append(sub_qsl[-1] + c)
        contiguous = all(starts[j] + counts[j] == starts[j + 1] for j in range(len(rest) - 1))
        index = [] if contiguous else [p for s, c in zip(starts, counts) for p in range(s, s + c)]
        padded, seqs, width = t, len(rest), meta.block_tables.shape[1]
        if self.pin_paged:
            padded = -(-t // PAGED_PAD) * PAGED_PAD
            if padded > t:  # one padding sequence owns the padding tokens (as in the CUDA graphs)
                sub_qsl.append(padded)
                sub_lens.append(padded - t)
            seqs = -(-len(sub_lens) // PAGED_PAD) * PAGED_PAD
            sub_qsl += [padded] * (seqs + 1 - len(sub_qsl))  # empty sequences after it
            sub_lens += [1] * (seqs - len(sub_lens))
            width = -(-width // PAGED_PAD) * PAGED_PAD
        dev = meta.block_tables.device
        qsl_dev, lens_dev, rows_dev, index_dev = to_device_parts((sub_qsl, sub_lens, rest, index), torch.int64, dev)
        tables = meta.block_tables[rows_dev]
        if self.pin_paged:
            full = torch.zeros(seqs, width, dtype=tables.dtype, device=dev)  # padding rows read block 0
            full[: len(rest), : tables.shape[1]] = tables
            tables = full
        plan.paged_meta = AttentionMetadata(meta.slot_mapping, qsl_dev, lens_dev, tables, sub_qsl, sub_lens)
        if self.pin_paged:
            plan.paged_meta.block_m, plan.paged_meta.num_splits = self._launch(t, len(rest), max(sub_lens), dev)
        plan.paged_tokens, plan.paged_padded = t, padded
        plan.paged_select = slice(starts[0], starts[0] + t) if contiguous else index_dev

    def _launch(self, tokens: int, num_seqs: int, max_len: int, device: torch.device) -> tuple[int, int]:
        """(query rows per program, split-KV ways) of a pinned launch: 16-row tiles for decode-like
        launches, 64 for chunks; splits until about two programs per SM hold keys, never below 256 keys
        a split, rounded down to a power of 2 (so that only warmed binaries run). NOTE: a small step here
        runs the kernel's small-step configuration with these splits, not the 4 programs per SM the CUDA
        graphs' `choose_num_splits` gives it (eager small steps were not measured apart)."""
        block_m = 16 if tokens <= 4 * num_seqs else 64
        busy = busy_programs(tokens, num_seqs, self.hq, self.hk, block_m)
        want = min(-(-2 * sm_count(device) // busy), -(-max_len // 256), PAGED_SPLITS[-1])
        return block_m, max(s for s in PAGED_SPLITS if s <= max(want, 1))

    def _warm_launches(self, device: torch.device) -> list[tuple[int, int, int]]:
        """(query rows per program, padded sequences, splits) of every pinned paged binary: each split count at
        PAGED_PAD sequences, and for decode-like launches also at the fewest padded sequences of each other launch
        configuration the kernel runs, up to the first "plain" one (`split_kv.step_kind`: with one KV head, 16
        sequences are a "wide_tile" step and 32 a "plain" one)."""
        sms, seqs, kinds = sm_count(device), PAGED_PAD, {}
        while True:
            kind = step_kind(seqs, seqs, self.hq, self.hk, 16, sms)
            kinds.setdefault(kind, seqs)
            if kind == "plain":
                break
            seqs += PAGED_PAD
        counts = {16: sorted(kinds.values()), 64: [PAGED_PAD]}
        return [(m, n, s) for m, ns in counts.items() for n in ns for s in PAGED_SPLITS]

    # ---- start-up -------------------------------------------------------------------------------
    def warm_up(
        self,
        paged: AttentionBackend,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        scale: float,
        max_chunk: int,
        max_model_len: int,
        num_blocks: int,
        scratch_block: int,
    ) -> dict[str, float]:
        """Compiles every pinned paged launch and builds the cuDNN plans of the common SDPA shapes (square
        causal blocks up to SDPA_WARM_MAX_TOKENS and the full chunk; a full chunk after 1, 2, ... full
        chunks of prefix), each for contiguous inputs and for views into one projection's rows. Reads the
        cache (layer 0), writes nothing there. Returns seconds per part."""
        dev, dtype, d = k_cache.device, k_cache.dtype, k_cache.shape[-1]
        times = {}
        start = time.perf_counter()
        if self.pin_paged:
            for block_m, seqs, splits in self._warm_launches(dev):
                q = torch.zeros(seqs, self.hq, d, dtype=dtype, device=dev)
                tables = torch.full((seqs, PAGED_PAD), scratch_block, dtype=torch.int64, device=dev)
                qsl, lens = [0] + [seqs] * seqs, [seqs] + [1] * (seqs - 1)
                meta = AttentionMetadata(
                    torch.zeros(0, dtype=torch.int64, device=dev),
                    torch.tensor(qsl, device=dev),
                    torch.tensor(lens, device=dev),
                    tables,
                    qsl,
                    lens,
                    num_splits=splits,
                    block_m=block_m,
                )
                paged(q, k_cache, v_cache, meta, scale)
            _sync(dev)
        times["paged_kernel_s"] = time.perf_counter() - start
        start = time.perf_counter()
        shapes = self.sdpa_warm_shapes(max_chunk, max_model_len, num_blocks * k_cache.shape[1])
        if shapes:
            blocks = torch.arange(num_blocks, device=dev)
            for n, prefix in shapes:
                q = torch.zeros(n, self.hq, d, dtype=dtype, device=dev)
                k = torch.zeros(n, self.hk, d, dtype=dtype, device=dev)
                self.sdpa.sequence(q, k, k, k_cache, v_cache, blocks, prefix, scale, torch.empty_like(q))
                qkv = torch.zeros(n, (self.hq + 2 * self.hk) * d, dtype=dtype, device=dev)  # as the projection's
                views = (x.view(n, -1, d) for x in qkv.split([self.hq * d, self.hk * d, self.hk * d], dim=1))
                self.sdpa.sequence(*views, k_cache, v_cache, blocks, prefix, scale, torch.empty_like(q))
            _sync(dev)
        times["sdpa_plans_s"] = time.perf_counter() - start
        times["sdpa_shapes"] = len(shapes)
        return times

    def sdpa_warm_shapes(self, max_chunk: int, max_model_len: int, cache_tokens: int) -> list[tuple[int, int]]:
        """(new tokens, prefix) of the SDPA calls `warm_up` makes: one per cuDNN shape it builds."""
        s = self.sdpa
        if s is None or s.support.backend != "cudnn":
            return []
        pad, chunk = s.pad, min(max_chunk, max_model_len - 1)
        top = min(-(-(chunk + pad - 1) // pad) * pad, max(SDPA_WARM_MAX_TOKENS, pad))
        first = -(-max(self.min_tokens, 1) // pad) * pad
        shapes = [(m, 0) for m in range(first, top + 1, pad)]
        full = -(-chunk // pad) * pad
        if full > top:
            shapes.append((full, 0))
        if s.support.lse and chunk % pad == 0:
            prefix = chunk
            # a chunk padded up to `chunk` has more than chunk - pad tokens, and a prompt < max_model_len
            while prefix + chunk - pad + 1 < min(max_model_len, cache_tokens + 1):
                shapes.append((chunk, prefix))  # NOTE: (chunk, P) builds both the causal-with-LSE and the prefix plan
                prefix += chunk
        return shapes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def probe_sdpa(
    device: torch.device, dtype: torch.dtype, num_q_heads: int, num_kv_heads: int, head_dim: int
) -> SdpaSupport:
    """What SDPA can do here, tried on small shapes against float32 math: cuDNN with GQA as it is (else
    with repeated K/V heads), and cuDNN's log-sum-exp (for chunks after a cached prefix). On CPU: math."""
    if device.type != "cuda":
        return SdpaSupport("math")
    version = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    notes = []
    if version is None or not torch.backends.cuda.cudnn_sdp_enabled():
        return SdpaSupport("default", lse=True, cudnn_version=version, notes=["cuDNN SDPA unavailable or disabled"])
    gen = torch.Generator(device=device).manual_seed(0)
    n, keys, scale = 2 * SDPA_PAD, 3 * SDPA_PAD, head_dim**-0.5

    def rand(rows: int, heads: int) -> torch.Tensor:
        return torch.randn(rows, heads, head_dim, generator=gen, device=device, dtype=torch.float32).to(dtype)

    q, k, v = rand(n, num_q_heads), rand(keys, num_kv_heads), rand(keys, num_kv_heads)
    ref = SdpaPrefill(SdpaSupport("math"), SDPA_PAD)
    want_c, want_lse_c = ref.attention(q, k[:n], v[:n], True, scale, lse=True)
    want_f, want_lse_f = ref.attention(q, k, v, False, scale, lse=True)

    def close(got: torch.Tensor, want: torch.Tensor) -> bool:
        err = (got.float() - want.float()).norm() / want.float().norm()
        return bool(torch.isfinite(err)) and err.item() < 2e-2

    for gqa in (True, False) if num_q_heads != num_kv_heads else (True,):
        support = SdpaSupport("cudnn", gqa=gqa, cudnn_version=version, notes=notes)
        impl = SdpaPrefill(support, SDPA_PAD)
        how = "native" if gqa else "repeated K/V heads"
        try:
            if not close(impl.attention(q, k[:n], v[:n], True, scale, lse=False)[0], want_c):
                notes.append(f"cuDNN causal SDPA ({how}) gave a wrong result")
                continue
        except Exception as e:  # a torch without this cuDNN feature raises; the next option is tried
            notes.append(f"cuDNN causal SDPA ({how}) failed: {type(e).__name__}: {str(e)[:200]}")
            continue
        try:
            got_c, lse_c = impl.attention(q, k[:n], v[:n], True, scale, lse=True)
            got_f, lse_f = impl.attention(q, k, v, False, scale, lse=True)
            checks = (close(got_c, want_c), close(got_f, want_f), close(lse_c, want_lse_c), close(lse_f, want_lse_f))
            support.lse = all(checks)
            if not support.lse:
                notes.append(f"cuDNN log-sum-exp wrong {checks}: chunks after a cached prefix stay paged")
        except Exception as e:
            support.lse = False
            notes.append(f"cuDNN log-sum-exp failed ({type(e).__name__}: {str(e)[:200]}): prefix chunks stay paged")
        return support
    return SdpaSupport("default", cudnn_version=version, notes=notes)

"""`shifttune profile --predict`: a profile of P GPUs one does not hold, from one GPU's operator table and a
collective-cost model, in the measured profile's own schema, marked `predicted: true`.

Same factorizations, the same feasibility rules (heads that divide, `shifttune profile`'s memory rule),
the same grid and the same points left out (steps whose KV blocks the cache of that layout cannot
hold). A point's step time is one rank's work from the op table (head + layers x layer) plus every
collective of the step in that mode from the collective model:

    TP mode, P ranks:   2 all-reduces per layer + 1 for the embedding, of T x hidden, over P; one
                        all-gather of the sampled rows' logits (model dtype, V/P each) over P
    SP x TP mode:       the same all-reduces over TP on T/SP rows; per layer two all-to-alls over SP
                        (q, k, v packed: SP x T/SP x (H/P + 2 KV) x d, and the output back); the
                        sampled rows' all-reduce over SP and their logits' all-gather over TP

inside CUDA graphs for steps up to 2048 tokens, outside above (as the engine runs them). Collectives
are costed at the step's token count (the default grid's token counts are the graphs' own buckets).
Torch-free: `recommend` runs it on machines with no GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import shifttune
from shifttune.config import (
    SP,
    TP,
    ConfigError,
    EngineConfig,
    ModelConfig,
    ParallelConfig,
    load_model_config,
    resolve_model_path,
)
from shifttune.engine.profile_schema import Factorization, Point, Profile, model_summary
from shifttune.recommend.collectives import NCCL, CollectiveModel, collective_model_for
from shifttune.recommend.gpus import gpu_spec
from shifttune.recommend.grid import CUDA_GRAPH_MAX_TOKENS, blocks_needed, step_shape
from shifttune.recommend.op_table import OpTable, load_op_table, shipped_op_table
from shifttune.recommend.roofline import roofline_table, with_split_graphs
from shifttune.recommend.shapes import (
    DTYPE_BYTES,
    RankShapes,
    kv_bytes_per_token,
    memory_check,
    rank_shapes,
    weight_bytes_per_rank,
)

CAVEAT = (
    "predicted profile: step times are one GPU's operator timings plus modelled collectives, not a run "
    "of the engine on these GPUs"
)


def op_table_label(ops: dict) -> str:
    """How a predicted profile's `sources["op_table"]` is named to users: method, the date it was made (a table
    times the engine version that measured it), file, and what was adjusted."""
    made = f" on {ops['created'][:10]}" if ops.get("created") else ""
    adjusted = ops.get("split_graph_entries_adjusted")
    note = f" ({adjusted} entries measured without split graphs, adjusted by the roofline)" if adjusted else ""
    return f"{ops.get('method', '?')}{made}, {ops.get('file', '?')}{note}"


@dataclass
class PredictSettings:
    model: str
    gpus: int
    gpu: str  # GPU slug, e.g. "h200"
    dtype: str | None = None  # default: the op table's (bfloat16 for the roofline)
    tokens: list[int] = field(default_factory=list)  # empty: the op table's grid
    contexts: list[int] = field(default_factory=list)
    max_decode: int = 256
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    op_table: Path | None = None  # default: the shipped table of model x GPU, else the roofline
    collectives: Path | None = None  # default: the shipped table of the GPU type
    all_reduce_backend: str = NCCL  # what the engine runs


def factorizations(ranks: int) -> list[tuple[int, int]]:
    """Every (TP, SP) with TP x SP = ranks, most TP first (as `shifttune profile` orders them)."""
    return [(ranks // sp, sp) for sp in range(1, ranks + 1) if ranks % sp == 0]


def step_collectives(cfg: ModelConfig, s: RankShapes, tokens: int, num_sampled: int, elem: int) -> list[tuple]:
    """(op, group size, bytes of each rank's input, times per step) for one step in the mode of `s`."""
    h, d, layers = cfg.hidden_size, cfg.head_dim, cfg.num_layers
    m = s.gemm_rows(tokens)
    logits = num_sampled * s.vocab_rows * elem  # logits of this rank's vocab rows, in the model's dtype
    if s.mode == TP:
        return [("all_reduce", s.tp, m * h * elem, 2 * layers + 1), ("all_gather", s.tp, logits, 1)]
    qkv = s.sp * m * (s.attn_q_heads + 2 * s.kv_heads_per_dest) * d * elem
    out = s.sp * m * s.attn_q_heads * d * elem
    return [
        ("all_reduce", s.tp, m * h * elem, 2 * layers + 1),
        ("all_to_all", s.sp, qkv, layers),
        ("all_to_all", s.sp, out, layers),
        ("all_reduce", s.sp, num_sampled * h * elem, 1),
        ("all_gather", s.tp, logits, 1),
    ]


def collectives_ms(model: CollectiveModel, calls: list[tuple], in_graph: bool, backend: str = NCCL) -> float:
    total = 0.0
    for op, group, nbytes, times in calls:
        if group > 1:
            b = backend if op == "all_reduce" else NCCL
            total += times * model.time_ms(op, group, nbytes, in_graph=in_graph, backend=b)
    return total


def resolve_op_table(settings: PredictSettings, cfg: ModelConfig) -> tuple[OpTable, str]:
    """The op table to use and where it came from: --op-table, else the shipped measured one when it covers
    this GPU count, else the roofline. A measured table from before the split graphs is adjusted for them."""
    name = Path(settings.model).name.lower()
    if settings.op_table is not None:
        table = load_op_table(settings.op_table)
        if table.model.get("name") != name:
            raise ConfigError(f"{settings.op_table} is a table of {table.model.get('name')!r}, not {name!r}",
                              field="op_table")  # fmt: skip
        if table.gpu.get("slug") != settings.gpu:
            raise ConfigError(f"{settings.op_table} was measured on {table.gpu.get('name')}, not a "
                              f"{settings.gpu.upper()}", field="op_table")  # fmt: skip
        return _current(table, cfg, settings, str(settings.op_table))
    why = "no measured op table of this model on this GPU ships"
    shipped = shipped_op_table(settings.model, settings.gpu)
    if shipped is not None:
        table = load_op_table(shipped)
        if settings.gpus in table.world_sizes():
            return _current(table, cfg, settings, str(shipped))
        why = f"the shipped measured table ({shipped.name}) covers P = {table.world_sizes()}, not {settings.gpus}"
    table = roofline_table(name, cfg, gpu_spec(settings.gpu), sorted({1, settings.gpus}),
                           settings.dtype or "bfloat16", settings.tokens, settings.contexts)  # fmt: skip
    return table, f"computed ({why})"


def _current(table: OpTable, cfg: ModelConfig, settings: PredictSettings, where: str) -> tuple[OpTable, str]:
    """The table as today's engine would time it (its `source` says what was adjusted)."""
    if table.engine.get("cuda_graphs"):  # split graphs are CUDA graphs
        table = with_split_graphs(table, cfg, gpu_spec(settings.gpu))
    return table, where


def check_grid(table: OpTable, table_from: str, settings: PredictSettings) -> None:
    """Refuses --tokens / --contexts that the op table has no entries for at this GPU count, listing what it has."""
    entries = [e for e in table.entries if e.world_size == settings.gpus]
    for name, asked in (("tokens", settings.tokens), ("contexts", settings.contexts)):
        covered = sorted({getattr(e, "context" if name == "contexts" else name) for e in entries})
        outside = sorted(set(asked) - set(covered))
        if outside:
            has = ", ".join(map(str, covered)) or "none"
            raise ConfigError(f"{', '.join(map(str, outside))} not in the op table {table_from}, whose {name} for "
                              f"{settings.gpus} GPUs are {has}", field=name)  # fmt: skip


def predict_profile(settings: PredictSettings, command: str = "") -> Profile:
    p = settings.gpus
    for name, bad, rule in (
        ("gpus", p < 1, "must be >= 1"),
        ("tokens", any(t < 1 for t in settings.tokens), "must be positive"),  # as `shifttune profile` checks them
        ("contexts", any(c < 2 for c in settings.contexts), "must be >= 2"),
    ):
        if bad:
            raise ConfigError(rule, field=name)
    cfg, _ = load_model_config(resolve_model_path(settings.model))
    table, table_from = resolve_op_table(settings, cfg)
    check_grid(table, table_from, settings)
    name, memory = table.gpu["name"], int(table.gpu["memory_bytes"])
    coll = collective_model_for(settings.gpu, settings.collectives) if p > 1 else None
    dtype = settings.dtype or table.model.get("dtype", "bfloat16")
    elem = DTYPE_BYTES[dtype]
    tokens = sorted(set(settings.tokens or table.grid["tokens"]))
    contexts = sorted(set(settings.contexts or table.grid["contexts"]))
    bs = settings.block_size
    cpu = settings.gpu == "cpu"  # CPU ranks: no device memory to fit, the KV cache has its own budget
    reasons = {}
    for tp, sp in factorizations(p):
        try:
            ParallelConfig(tp, sp).validate(cfg)
            util = settings.gpu_memory_utilization
            reasons[(tp, sp)] = None if cpu else memory_check(cfg, tp, sp, elem, memory, util, max(contexts))
        except ConfigError as e:
            reasons[(tp, sp)] = str(e)
    feasible = [f for f, why in reasons.items() if why is None]
    if not feasible:
        raise ConfigError(
            "no SP x TP factorization of %d can run: %s"
            % (p, "; ".join(f"TP={tp} SP={sp}: {why}" for (tp, sp), why in reasons.items()))
        )
    facts, blocks = [], {}
    for tp, sp in factorizations(p):
        if reasons[(tp, sp)]:
            facts.append(Factorization(tp, sp, False, reasons[(tp, sp)]))
            continue
        weights = weight_bytes_per_rank(cfg, tp, sp, elem)
        per_token = kv_bytes_per_token(cfg, p, elem)
        budget = memory * settings.gpu_memory_utilization - sum(weights.values()) - table.memory_overhead_bytes
        if cpu:
            budget = EngineConfig.cpu_kv_cache_gib * 2**30
        capacity = max(0, int(budget // (per_token * bs))) * bs
        # what `shifttune profile` allocates: no more than every sequence at full length could use
        blocks[(tp, sp)] = min(capacity // bs, settings.max_decode * -(-max(contexts) // bs))
        facts.append(Factorization(tp, sp, True, None, weights, capacity, per_token))
    # steps up to this many tokens replay CUDA graphs (none on CPU ranks): their collectives are in-graph
    graph_max = (
        table.engine.get("cuda_graph_max_tokens", CUDA_GRAPH_MAX_TOKENS) if table.engine.get("cuda_graphs", True) else 0
    )
    points, missing = [], []
    first = feasible[0]  # TP mode is measured once, in the first engine `shifttune profile` starts
    plan = [(TP, p, 1, first)] + [(SP, tp, sp, (tp, sp)) for tp, sp in feasible if sp > 1]
    for mode, tp, sp, engine in plan:
        shapes = rank_shapes(cfg, mode, tp, sp)
        capacity = next(f.kv_capacity_tokens for f in facts if (f.tp, f.sp) == engine)
        for c in contexts:
            for t in tokens:
                seqs, per = step_shape(t, c, settings.max_decode)
                if blocks_needed(seqs, c, bs) > blocks[engine]:
                    continue
                entry = table.get(mode, tp, sp, t, c)
                if entry is None:
                    missing.append((mode, tp, sp, t, c))
                    continue
                calls = step_collectives(cfg, shapes, t, seqs, elem)
                comm = collectives_ms(coll, calls, t <= graph_max, settings.all_reduce_backend) if coll else 0.0
                ms = entry.step_ms(cfg.num_layers) + comm
                lo, hi = entry.spread.get("p10", 1.0), entry.spread.get("p90", 1.0)
                points.append(Point(mode, shapes.tp, shapes.sp, t, c, seqs, per, ms, ms * lo, ms * hi, None, capacity))
    if not points:
        raise ConfigError(f"the op table {table_from} has no entries for {p} GPUs on this grid")
    sources = {
        "op_table": {"file": table_from, "method": table.method, "source": table.source,
                     "gpu": table.gpu.get("name"), "created": table.created,
                     "split_graph_entries_adjusted": table.engine.get("split_graph_entries_adjusted", 0)},
        "collectives": coll.describe() if coll else None,
        "all_reduce_backend": settings.all_reduce_backend,
        "step_time": "one rank's head + num_layers x layer from the op table, plus the step's collectives",
        "memory": f"weights from the model's shapes; {table.memory_overhead_bytes} bytes per GPU besides "
        f"weights and KV ({'measured' if table.method == 'measured' else 'assumed'})",
        "missing_from_op_table": [list(k) for k in missing],
    }  # fmt: skip
    device = "cpu" if cpu else "cuda"
    hardware = {"device": "cpu", "cpu": name, "predicted": True}
    if device == "cuda":
        gpus = [{"name": name, "memory_bytes": memory}] * p
        hardware = {"device": device, "gpu_name": name, "gpu_count": p, "gpus": gpus, "predicted": True}
    engine = {"max_decode_batch": settings.max_decode, "warmup": 0, "iters": 0, "device": device,
              "load_format": "dummy", "ranks": p, "dtype": dtype, "block_size": bs,
              "cuda_graphs": bool(table.engine.get("cuda_graphs", True)),
              "attention_backend": "triton" if device == "cuda" else "torch"}  # fmt: skip
    return Profile(
        hardware=hardware,
        software={"shifttune": shifttune.__version__},
        model=model_summary(Path(settings.model).name.lower(), cfg, dtype),
        engine=engine,
        grid={"tokens": tokens, "contexts": contexts},
        command=command,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        factorizations=sorted(facts, key=lambda f: -f.tp),
        points=points,
        predicted=True,
        sources=sources,
    )

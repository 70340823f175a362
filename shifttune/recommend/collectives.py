"""The cost of one collective over P GPUs of one node, from a table of measurements: all-reduce,
all-gather and all-to-all, NCCL (what the engine runs) and the symmetric-memory one-shot all-reduce,
inside CUDA graphs (steps up to 2048 tokens) and outside them (larger steps run eagerly).

Time as a function of bytes (each rank's input tensor) is a piecewise-linear curve through the
measured points: flat below the smallest (latency-bound), linear between points, and past the
largest point growing with the last segment's slope (bandwidth-bound). Measurements that would
make it decrease with size (run-to-run noise) are pooled to their mean first, so the curve is
monotone and passes through every other point exactly.

Only what was measured is marked measured. Another P is scaled from the measured P0 at equal
traffic per rank (all-reduce moves 2(P-1)/P of the input per rank, all-to-all (P-1)/P, all-gather
P-1 times it, one-shot all-reduce reads P-1 peers) plus a latency that grows with log2(P); an op
without its own measurements (all-gather) is read off another op's curve at equal traffic; outside
graphs a launch cost is added unless eager runs were measured. Each is labelled where it is used.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from shifttune.config import ConfigError
from shifttune.recommend.gpus import gpu_slug as slug_of

COLLECTIVES_DIR = Path(__file__).resolve().parent.parent / "data" / "collectives"
OPS = ("all_reduce", "all_gather", "all_to_all")
NCCL, ONE_SHOT = "nccl", "symm_mem_one_shot"
# Keys of a measurement table: (backend, op) -> the table's section, its key for in-graph and eager runs.
TABLE_KEYS = {
    (NCCL, "all_reduce"): ("nccl", "all_reduce_ms"),
    (NCCL, "all_to_all"): ("nccl", "all_to_all_single_ms"),
    (NCCL, "all_gather"): ("nccl", "all_gather_ms"),
    (ONE_SHOT, "all_reduce"): (None, "symmetric_memory_one_shot_all_reduce_ms"),
}
EAGER_SECTION = "eager"  # {"nccl": {"all_reduce_ms": {...}, ...}} when runs outside graphs were measured
# NOTE: an assumption, not a measurement: what launching one NCCL op from the host adds outside a graph.
ASSUMED_EAGER_LAUNCH_MS = 0.010


def traffic_factor(backend: str, op: str, world_size: int) -> float:
    """Bytes each rank sends (and receives) per byte of its input."""
    p = world_size
    if backend == ONE_SHOT:
        return float(p - 1)
    return {"all_reduce": 2 * (p - 1) / p, "all_to_all": (p - 1) / p, "all_gather": float(p - 1)}[op]


@dataclass
class Curve:
    """Milliseconds of one op at one P as a function of input bytes: piecewise linear, monotone."""

    sizes: list[int]
    ms: list[float]
    pooled: list[int] = field(default_factory=list)  # sizes whose measurement was pooled with a neighbour

    @classmethod
    def fit(cls, points: dict[int, float]) -> Curve:
        if not points:
            raise ConfigError("a collective curve needs at least one measured point")
        sizes = sorted(points)
        # pool adjacent violators: blocks of (sum, count) whose means never decrease
        blocks: list[list] = []
        for s in sizes:
            blocks.append([points[s], 1, [s]])
            while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
                total, count, members = blocks.pop()
                blocks[-1][0] += total
                blocks[-1][1] += count
                blocks[-1][2] += members
        ms, pooled = [], []
        for total, count, members in blocks:
            ms += [total / count] * count
            if count > 1:
                pooled += members
        return cls(sizes, ms, pooled)

    def __call__(self, nbytes: float) -> float:
        s, t = self.sizes, self.ms
        if nbytes <= s[0]:
            return t[0]
        for i in range(1, len(s)):
            if nbytes <= s[i]:
                return t[i - 1] + (t[i] - t[i - 1]) * (nbytes - s[i - 1]) / (s[i] - s[i - 1])
        slope = (t[-1] - t[-2]) / (s[-1] - s[-2]) if len(s) > 1 else 0.0
        return t[-1] + slope * (nbytes - s[-1])


class CollectiveModel:
    """Collective times for one GPU type, from one measurement table (bytes -> ms at `world_size` GPUs)."""

    def __init__(self, table: dict, source: str, note: str | None = None):
        self.source, self.note = source, note
        self.gpu = table.get("gpu")
        self.world_size = int(table.get("world_size", 0))
        if self.world_size < 2:
            raise ConfigError(f"{source}: a collective table needs world_size >= 2")
        self.curves: dict[tuple[str, str, bool], Curve] = {}
        group_backend = table.get("backend", "nccl")  # the process group's: nccl on GPUs, gloo on CPU ranks
        for (backend, op), (section, key) in TABLE_KEYS.items():
            section = group_backend if section == "nccl" else section
            for in_graph, root in ((True, table), (False, table.get(EAGER_SECTION, {}))):
                data = (root.get(section) or {}) if section else root
                points = {int(b): float(ms) for b, ms in (data.get(key) or {}).items()}
                if points:
                    self.curves[(backend, op, in_graph)] = Curve.fit(points)
        if not any(k[:2] == (NCCL, "all_reduce") for k in self.curves):
            raise ConfigError(f"{source}: no all-reduce measurements ({group_backend}.all_reduce_ms)")
        self.used: dict[str, str] = {}  # how each (op, P, graph) that was asked for was obtained

    @classmethod
    def load(cls, path: Path, note: str | None = None) -> CollectiveModel:
        try:
            table = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read the collective table {path}: {e}") from None
        return cls(table, str(path), note)

    def _base(self, backend: str, op: str, in_graph: bool) -> tuple[str, str, Curve, bool, bool]:
        """(op, backend, curve, derived, measured in graphs) this op is read from: its own measurements
        (in or out of graphs as asked, else the other), else the all-to-all's or all-reduce's at equal traffic."""
        for base_op, base_backend in ((op, backend), ("all_to_all", NCCL), ("all_reduce", NCCL)):
            for graph in (in_graph, not in_graph):
                if (base_backend, base_op, graph) in self.curves:
                    curve = self.curves[(base_backend, base_op, graph)]
                    return base_op, base_backend, curve, (base_op, base_backend) != (op, backend), graph
        raise ConfigError(f"{self.source}: nothing to read {backend} {op} from")

    def time_ms(self, op: str, world_size: int, nbytes: float, in_graph: bool = True, backend: str = NCCL) -> float:
        """One `op` over `world_size` GPUs with `nbytes` bytes of input per rank (0 for one GPU)."""
        if op not in OPS or (backend == ONE_SHOT and op != "all_reduce"):
            raise ConfigError(f"no model for {backend} {op}")
        if world_size <= 1:
            return 0.0
        p0 = self.world_size
        base_op, base_backend, curve, derived, graph = self._base(backend, op, in_graph)
        traffic = nbytes * traffic_factor(backend, op, world_size)
        equivalent = traffic / traffic_factor(base_backend, base_op, p0)
        latency = curve.ms[0] * (math.log2(world_size) / math.log2(p0) - 1)
        ms = curve(equivalent) + latency
        labels = []
        if derived:
            labels.append(f"read off the {base_op} curve at equal traffic (not measured)")
        if world_size != p0:
            labels.append(f"scaled from {p0} GPUs (extrapolated)")
        if graph and not in_graph:
            ms += ASSUMED_EAGER_LAUNCH_MS
            labels.append(f"outside graphs: + {1e3 * ASSUMED_EAGER_LAUNCH_MS:.0f} us assumed launch cost")
        elif in_graph and not graph:
            labels.append("eager measurement used inside graphs")
        key = f"{backend} {op} P={world_size} {'graph' if in_graph else 'eager'}"
        self.used[key] = "; ".join(labels) or f"measured on {p0} GPUs"
        return ms

    def describe(self) -> dict:
        return {"table": self.source, "gpu": self.gpu, "measured_world_size": self.world_size, "note": self.note,
                "used": dict(sorted(self.used.items()))}  # fmt: skip


def shipped_collective_tables() -> list[Path]:
    return sorted(COLLECTIVES_DIR.glob("*.json"))


def collective_model_for(gpu_slug: str, path: Path | None = None) -> CollectiveModel:
    """The model from `path` (refused if the table names another GPU type), else the shipped table of this GPU
    type, else the shipped table of another GPU with the same NVLink fabric, labelled as such."""
    if path is not None:
        model = CollectiveModel.load(path)
        if model.gpu and slug_of(model.gpu) != gpu_slug:
            raise ConfigError(f"{path} was measured on {model.gpu}, not a {gpu_slug.upper()}: its collectives would "
                              "stand for that GPU's", field="collective_table")  # fmt: skip
        return model
    tables = shipped_collective_tables()
    own = [p for p in tables if p.stem.split("x")[0] == gpu_slug]
    if own:
        return CollectiveModel.load(own[-1])
    same_fabric = {"h100": "h200", "h200": "h100"}.get(gpu_slug)
    other = [p for p in tables if p.stem.split("x")[0] == same_fabric]
    if other:
        return CollectiveModel.load(
            other[-1],
            note=f"no collectives measured on {gpu_slug.upper()}: using {same_fabric.upper()}'s "
            "(same NVLink 4 / NVSwitch fabric, 900 GB/s per GPU), not measured on this GPU",
        )
    raise ConfigError(
        f"no collective measurements for {gpu_slug!r} (shipped: {', '.join(p.name for p in tables) or 'none'}); "
        "measure them with `shifttune profile --collectives` on that machine and pass the file with --collective-table"
    )

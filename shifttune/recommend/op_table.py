"""The operator table: one GPU's time for each rank's work, in both modes, at every P, over the profile grid.

Schema (version 1), one JSON object:

    schema, version        "shifttune.op_table", 1
    created, command       when and by what command it was made
    method                 "measured" (`shifttune profile --ops` on one GPU of this type) or "roofline"
                           (analytic, `shifttune/recommend/roofline.py`: provisional, never measured)
    source                 one line: where the numbers come from
    gpu                    name (as NVML reports it), slug ("h100": the file-name key), memory_bytes
    hardware, software     as in a profile (measured tables only)
    model                  as in a profile (`engine/profile_schema.py`)
    engine                 block_size, max_decode_batch, cuda_graphs, cuda_graph_max_tokens,
                           chunk_split_graphs (absent: tables measured before they were on), dtype,
                           warmup, iters, layers_timed (the decoder layers each timed step ran)
    memory_overhead_bytes  GPU memory a rank uses besides weights and KV cache (context, buffers)
    grid                   tokens (per step), contexts
    entries[]              mode, tp, sp (TP mode: tp = P, sp = 1, as in profiles), tokens, context,
                           num_seqs, tokens_per_seq, head_ms, layer_ms, spread {p10, p90} (ratios to
                           the median of the timed step)
    skipped[]              mode, tp, sp, tokens, context, reason
    breakdown[]            optional: where one layer's and the head's time goes, by kernel category
    sampling_ms            optional: {"greedy" | "sampled": {num_seqs: ms}} of the engine's sampler

Each entry is one rank's work for one step, collectives excluded: `head_ms` is everything outside the
decoder layers (input upload, embedding, final norm, LM head, graph replay), `layer_ms` one decoder
layer (norms, qkv, RoPE, KV write, attention, the Ulysses packing, o, gate-up, SiLU, down). A rank's
step is head_ms + num_layers x layer_ms; the predictor adds the collectives (`collectives.py`).
Files are named `<model>_<gpu slug>.json` under `shifttune/data/op_tables/`, so the predictor finds the
table of `--gpus 4xH200` by the GPU's name.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shifttune.config import MODES, TP, ConfigError, read_json_file

SCHEMA, VERSION = "shifttune.op_table", 1
OP_TABLE_DIR = Path(__file__).resolve().parent.parent / "data" / "op_tables"
METHODS = ("measured", "roofline")


class OpTableError(ConfigError):
    """An operator table that cannot be used."""


@dataclass
class OpEntry:
    mode: str
    tp: int
    sp: int
    tokens: int
    context: int
    num_seqs: int
    tokens_per_seq: int
    head_ms: float
    layer_ms: float
    spread: dict[str, float] = field(default_factory=dict)  # {"p10": ratio, "p90": ratio} to the median

    @property
    def key(self) -> tuple:
        return (self.mode, self.tp, self.sp, self.tokens, self.context)

    @property
    def world_size(self) -> int:
        return self.tp * self.sp

    def step_ms(self, num_layers: int) -> float:
        return self.head_ms + num_layers * self.layer_ms


@dataclass
class OpTable:
    method: str
    source: str
    gpu: dict
    model: dict
    engine: dict
    grid: dict
    memory_overhead_bytes: int = 0
    hardware: dict = field(default_factory=dict)
    software: dict = field(default_factory=dict)
    command: str = ""
    created: str = ""
    entries: list[OpEntry] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    breakdown: list[dict] = field(default_factory=list)
    sampling_ms: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._index = {e.key: e for e in self.entries}

    def add(self, entry: OpEntry) -> None:
        self.entries = [e for e in self.entries if e.key != entry.key] + [entry]
        self._index[entry.key] = entry

    def get(self, mode: str, tp: int, sp: int, tokens: int, context: int) -> OpEntry | None:
        if mode == TP:
            tp, sp = tp * sp, 1
        return self._index.get((mode, tp, sp, tokens, context))

    def world_sizes(self) -> list[int]:
        return sorted({e.world_size for e in self.entries})

    def to_dict(self) -> dict:
        data = asdict(self)
        return {"schema": SCHEMA, "version": VERSION, **data}

    def save(self, path: Path) -> None:
        """Atomic, like a profile: an interrupted save never leaves half a table."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)


def op_table_from_dict(data: dict, source: str = "op table") -> OpTable:
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise OpTableError(f'{source} is not a shifttune operator table (no "schema": "{SCHEMA}")')
    if data.get("version") != VERSION:
        raise OpTableError(f"{source} has op-table version {data.get('version')!r}; this shifttune reads {VERSION}")
    if data.get("method") not in METHODS:
        raise OpTableError(f"{source}: method must be one of {', '.join(METHODS)}, got {data.get('method')!r}")
    for key in ("gpu", "model", "engine", "grid"):
        if not isinstance(data.get(key), dict):
            raise OpTableError(f"{source} lacks the {key!r} section")
    if not data["gpu"].get("slug") or not isinstance(data["gpu"].get("memory_bytes"), int):
        raise OpTableError(f"{source}: gpu needs a slug and memory_bytes")
    entries, seen = [], set()
    for i, e in enumerate(data.get("entries") or []):
        where = f"{source}: entries[{i}]"
        try:
            entry = OpEntry(**{k: e[k] for k in OpEntry.__dataclass_fields__ if k in e})
        except TypeError as err:
            raise OpTableError(f"{where}: {err}") from None
        if entry.mode not in MODES:
            raise OpTableError(f"{where}.mode must be 'tp' or 'sp', got {entry.mode!r}")
        if min(entry.tp, entry.sp, entry.tokens, entry.context, entry.num_seqs, entry.tokens_per_seq) < 1:
            raise OpTableError(f"{where}: tp, sp, tokens, context, num_seqs, tokens_per_seq must be >= 1")
        if entry.mode == TP and entry.sp != 1:
            raise OpTableError(f"{where}: TP-mode entries carry tp = P, sp = 1")
        if not (entry.layer_ms > 0 and entry.head_ms >= 0):
            raise OpTableError(f"{where}: layer_ms must be > 0 and head_ms >= 0")
        if entry.key in seen:
            raise OpTableError(f"{where} repeats {entry.key}")
        seen.add(entry.key)
        entries.append(entry)
    fields = {k: data[k] for k in OpTable.__dataclass_fields__ if k in data and k != "entries"}
    return OpTable(**fields, entries=entries)


def load_op_table(path: Path) -> OpTable:
    return op_table_from_dict(read_json_file(path, "operator table", OpTableError), str(path))


def op_table_path(model: str, gpu_slug: str, directory: Path | None = None) -> Path:
    return (directory or OP_TABLE_DIR) / f"{Path(model).name.lower()}_{gpu_slug}.json"


def shipped_op_table(model: str, gpu_slug: str) -> Path | None:
    path = op_table_path(model, gpu_slug)
    return path if path.is_file() else None

"""Engine, parallel and model configuration: dataclasses, validated before anything is allocated.

The bottom layer: every other part of shifttune may import it, it imports none of them (and not
torch at import time, so that commands which never run the engine start fast).
`ModelConfig` reads a Hugging Face `config.json` (transformers 4 and 5 spellings); `ParallelConfig`
holds the SP x TP factorization; `EngineConfig` holds everything the engine needs and checks it in
`validate()`. The two parallel modes are named `TP` and `SP` everywhere, users' eyes included.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_type_hints

TP, SP = "tp", "sp"  # the two modes: full TP over all P ranks, and SP x TP (Ulysses)
MODES = (TP, SP)
SHIFT_POLICIES = ("threshold", "profile", TP, SP)
DEVICES = ("cpu", "cuda")
LOAD_FORMATS = ("auto", "dummy")  # dummy: random weights of the checkpoint's shapes, nothing read

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
SUPPORTED_ROPE_TYPES = ("default", "llama3", "linear")
DTYPES = ("float32", "bfloat16", "float16")
DTYPE_ALIASES = {"half": "float16", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
MAX_SHIFT_THRESHOLD = 2**31 - 1  # tokens a step; anything above every step's size means "always TP"
BUNDLED_CONFIG_DIR = Path(__file__).parent / "model" / "configs"  # data files (config.json), not code


class ConfigError(ValueError):
    """Bad user input: printed as one clear message by the CLI, never as a traceback.

    `field` names the setting at fault (an `EngineConfig` / `SamplingParams` field); the CLI shows it
    as its flag, the Python API as the argument name."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message, self.field = message, field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    qk_norm: bool
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None

    @classmethod
    def from_dict(cls, cfg: dict) -> "ModelConfig":
        archs = cfg.get("architectures") or []
        if not archs and cfg.get("model_type"):  # as HF and vLLM do: a config without the list names its model type
            archs = [a for a in SUPPORTED_ARCHITECTURES if a.lower() == f"{cfg['model_type']}forcausallm"]
        arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            raise ConfigError(
                f"unsupported architecture {archs or cfg.get('model_type')!r}; shifttune supports "
                f"{', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        if cfg.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"unsupported hidden_act {cfg['hidden_act']!r} (only silu)")
        if cfg.get("mlp_bias") or (arch != "Qwen2ForCausalLM" and cfg.get("attention_bias")):
            raise ConfigError("attention_bias / mlp_bias checkpoints (o_proj and MLP biases) are not supported")
        num_heads = cfg["num_attention_heads"]
        # transformers 5 writes rope settings under "rope_parameters"; 4.x under rope_theta/rope_scaling.
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        rope_theta = float(rope.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ConfigError(f"unsupported RoPE scaling {rope_type!r}; supported: {SUPPORTED_ROPE_TYPES}")
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        return cls(
            architecture=arch,
            hidden_size=cfg["hidden_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=cfg.get("num_key_value_heads") or num_heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // num_heads,
            intermediate_size=cfg["intermediate_size"],
            vocab_size=cfg["vocab_size"],
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=rope_theta,
            rope_scaling=None if rope_type == "default" else {**rope, "rope_type": rope_type},
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=arch == "Qwen2ForCausalLM",
            qk_norm=arch == "Qwen3ForCausalLM",
            eos_token_ids=eos_ids,
            bos_token_id=cfg.get("bos_token_id"),
        )

    @property
    def num_params(self) -> int:
        h, d, i = self.hidden_size, self.head_dim, self.intermediate_size
        attn = h * (self.num_heads + 2 * self.num_kv_heads) * d + self.num_heads * d * h
        per_layer = attn + 3 * h * i + 2 * h
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * per_layer + emb + h


def read_json_file(path: Path, what: str, error: type[Exception]) -> dict:
    """A JSON file a user named (`what`: "profile", "operator table"...); `error` with one clear line if it
    is missing or not JSON."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} {path} is a folder; give the JSON file")
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{what} {path} is not valid JSON: {e}") from None


def resolve_model_path(model: str | Path) -> Path:
    """A local HF directory or the name of a bundled model (e.g. `llama-3.3-70b`, or `tiny`, which ships
    with its weights)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    bundled = BUNDLED_CONFIG_DIR / str(model).lower()
    if bundled.is_dir():
        return bundled
    raise ConfigError(
        f"{str(model)!r} is not a local directory nor a bundled model; bundled: {', '.join(bundled_models())} "
        "(all but tiny are configs without weights: run them with --load-format dummy)",
        field="model",
    )


def bundled_models() -> list[str]:
    return sorted((p.name for p in BUNDLED_CONFIG_DIR.iterdir() if p.is_dir()), key=lambda n: (n != "tiny", n))


def context_limit(model_config: ModelConfig, raw: dict) -> int:
    """The longest context in tokens the engine runs a model at: its `max_position_embeddings`, or its sliding window
    where that is shorter.
    NOTE: windowed attention is not implemented; a window at least as long as the context is plain causal attention,
    so sliding-window models (Mistral v0.1) run with max_model_len capped at it."""
    limit = model_config.max_position_embeddings
    uses_window = raw.get("use_sliding_window") or model_config.architecture == "MistralForCausalLM"
    if uses_window and raw.get("sliding_window"):
        limit = min(limit, int(raw["sliding_window"]))
    return limit


def load_model_config(path: Path) -> tuple[ModelConfig, dict]:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"{path} has no config.json")
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{cfg_file} is not valid JSON: {e}") from None
    gen_file = path / "generation_config.json"
    if gen_file.is_file():  # chat models list their end-of-turn tokens here (e.g. Llama 3's <|eot_id|>)
        try:
            gen_eos = json.loads(gen_file.read_text()).get("eos_token_id")
        except json.JSONDecodeError as e:
            raise ConfigError(f"{gen_file} is not valid JSON: {e}") from None
        ids = [raw.get("eos_token_id"), gen_eos]
        flat = [i for x in ids for i in (x if isinstance(x, list) else [x]) if i is not None]
        raw = raw | {"eos_token_id": sorted(set(flat))}
    try:
        return ModelConfig.from_dict(raw), raw
    except KeyError as e:
        raise ConfigError(f"{cfg_file} lacks the field {e.args[0]!r}") from None


@dataclass(frozen=True)
class ParallelConfig:
    """P = SP x TP ranks; rank r = s * TP + t (s: SP index, t: TP index)."""

    tensor_parallel_size: int = 1
    sequence_parallel_size: int = 1

    @property
    def tp(self) -> int:
        return self.tensor_parallel_size

    @property
    def sp(self) -> int:
        return self.sequence_parallel_size

    @property
    def world_size(self) -> int:
        return self.tp * self.sp

    def sp_index(self, rank: int) -> int:
        return rank // self.tp

    def tp_index(self, rank: int) -> int:
        return rank % self.tp

    def tp_mode_shard(self, rank: int) -> int:
        # NOTE: the KV-cache invariance. After the Ulysses all-to-all, rank (s, t) holds query-head
        # block t*SP + s (of P blocks), so in TP mode's layout (P shards) it must hold that same block.
        return self.tp_index(rank) * self.sp + self.sp_index(rank)

    def validate(self, model: ModelConfig) -> None:
        p = self.world_size
        for name in ("tensor_parallel_size", "sequence_parallel_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"must be an integer >= 1, got {value!r}", field=name)
        if model.num_heads % p:
            raise ConfigError(
                f"{model.num_heads} attention heads do not divide by SP x TP = {p}; "
                f"pick SP x TP among the divisors of {model.num_heads}",
                field="tensor_parallel_size",
            )
        k = model.num_kv_heads
        if k % p and p % k:
            raise ConfigError(
                f"{k} KV heads and SP x TP = {p}: one must divide the other (KV heads are split when "
                f"K >= P and replicated when K < P)",
                field="tensor_parallel_size",
            )


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def is_int(x) -> bool:
    """An int, and not a bool (which Python counts as one)."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_a(value, kind: type) -> bool:
    if kind is int:
        return is_int(value)
    if kind is float:
        return is_number(value)
    return isinstance(value, kind)


def check_types(config) -> None:
    """ConfigError naming the first init field of a dataclass whose value is not of its annotated type (an int for
    an int: not a float or a bool, not "8"), where that type is one of int, float, bool, str, or one of them | None:
    a wrong type used to fail later, inside a worker, or pass (enable_prefix_caching="no" turned caching on)."""
    hints = get_type_hints(type(config))
    for f in dataclasses.fields(config):
        kinds = [k for k in (getattr(hints[f.name], "__args__", None) or (hints[f.name],)) if k is not types.NoneType]
        optional = isinstance(hints[f.name], types.UnionType) and len(kinds) < len(hints[f.name].__args__)
        if not f.init or not all(k in _TYPE_NAMES for k in kinds):
            continue
        value = getattr(config, f.name)
        if (value is None and optional) or any(_is_a(value, k) for k in kinds):
            continue
        expected = " or ".join([_TYPE_NAMES[k] for k in kinds] + (["None"] if optional else []))
        raise ConfigError(f"must be {expected}, got {value!r}", field=f.name)


@dataclass
class EngineConfig:
    model: str = "tiny"
    tensor_parallel_size: int = 1
    sequence_parallel_size: int = 1
    device: str = "cpu"
    dtype: str = "auto"
    load_format: str = "auto"  # "auto" (safetensors) | "dummy" (random weights from the config)
    shift_policy: str = "threshold"  # one of SHIFT_POLICIES
    shift_threshold: int = 256
    shift_profile: str | None = None  # profile JSON for shift_policy="profile"
    block_size: int = 16
    num_kv_blocks: int | None = None
    gpu_memory_utilization: float = 0.9
    cpu_kv_cache_gib: float = 1.0
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    enforce_eager: bool = False  # no CUDA graphs
    cuda_graph_max_tokens: int = 2048  # steps up to this many tokens replay captured CUDA graphs
    # experimental, 0 = off: SP-mode steps of up to this many tokens per GPU (x TP x SP) replay graphs as well, past
    # cuda_graph_max_tokens (eager SP steps at P = 4-8 wait on the host; see runner/cuda_graphs.py). `profile
    # --predict` and `recommend` assume it is off.
    sp_cuda_graph_tokens_per_gpu: int = 0
    attention_backend: str = "auto"  # "auto" (triton on cuda, torch on cpu) | "torch" | "triton"
    # prefill chunks of eager steps: "paged" (the attention backend above), "sdpa" (torch SDPA: cuDNN on cuda,
    # math on cpu; decode tokens stay paged) or "auto" (sdpa for long chunks on cuda when cuDNN passes a
    # probe at start, else paged); steps that replay CUDA graphs always run the paged backend
    prefill_attention: str = "auto"
    # schedule step n + 1 while the device runs step n (vLLM's name); None: on for cuda, off for cpu, where
    # a step runs as it is launched, so the overlap saves nothing and a token would come back a step later
    async_scheduling: bool | None = None
    # the TP all-reduces of up to 1 MiB: "nccl", or "symm_mem" (torch's symmetric-memory one-shot all-reduce, cuda
    # only: each rank reads its peers' buffers over NVLink; 8 vs 13 us at 16 KiB in a graph on 4 H200s)
    all_reduce: str = "nccl"
    seed: int | None = 0  # None: a random one, drawn here (vLLM's None), so the config says which ran
    master_port: int | None = None
    model_path: Path = field(init=False)
    model_config: ModelConfig = field(init=False)
    parallel: ParallelConfig = field(init=False)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def torch_dtype(self):
        import torch  # NOTE: lazy: config is imported by commands that never load torch (2 s)

        return getattr(torch, self.dtype)

    def validate(self) -> None:
        def one_of(name: str, allowed: tuple) -> None:
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"must be one of {', '.join(map(str, allowed))}, not {getattr(self, name)!r}", field=name
                )

        if isinstance(self.model, Path):
            self.model = str(self.model)
        check_types(self)
        if self.seed is None:
            self.seed = random.SystemRandom().randrange(2**31)
        one_of("device", DEVICES)
        one_of("load_format", LOAD_FORMATS)
        one_of("shift_policy", SHIFT_POLICIES)
        if self.attention_backend == "auto":
            self.attention_backend = "triton" if self.device == "cuda" else "torch"
        one_of("attention_backend", ("auto", "torch", "triton"))
        one_of("prefill_attention", ("auto", "paged", "sdpa"))
        one_of("all_reduce", ("nccl", "symm_mem"))
        if self.all_reduce == "symm_mem" and self.device != "cuda":
            raise ConfigError("symm_mem needs CUDA GPUs (device cuda)", field="all_reduce")
        if self.attention_backend == "torch":  # it loops over host-side metadata, which graphs cannot replay
            self.enforce_eager = True
        if self.async_scheduling is None:
            self.async_scheduling = self.device == "cuda"
        if not 0 <= self.shift_threshold <= MAX_SHIFT_THRESHOLD:
            raise ConfigError(f"must be in [0, {MAX_SHIFT_THRESHOLD}]", field="shift_threshold")
        if self.sp_cuda_graph_tokens_per_gpu < 0:
            raise ConfigError("must be >= 0", field="sp_cuda_graph_tokens_per_gpu")
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError("must be >= 1", field=name)
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ConfigError("must be >= 1", field="max_model_len")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"must be in (0, 1], not {self.gpu_memory_utilization}", field="gpu_memory_utilization")
        self.parallel = ParallelConfig(self.tensor_parallel_size, self.sequence_parallel_size)
        self.model_path = resolve_model_path(self.model)
        self.model_config, raw = load_model_config(self.model_path)
        self.parallel.validate(self.model_config)
        if self.dtype == "auto":
            self.dtype = "bfloat16" if self.device == "cuda" else "float32"
        self.dtype = DTYPE_ALIASES.get(self.dtype, self.dtype)  # vLLM's spellings (--dtype half)
        one_of("dtype", DTYPES)
        if self.all_reduce == "symm_mem" and self.dtype not in ("bfloat16", "float32"):
            raise ConfigError(f"symm_mem sums bfloat16 or float32, not {self.dtype}", field="all_reduce")
        if self.device == "cpu" and self.dtype == "float16":
            raise ConfigError("float16 is not supported on CPU; use float32 or bfloat16", field="dtype")
        self._check_devices()
        limit = context_limit(self.model_config, raw)
        if self.max_model_len is None:
            self.max_model_len = limit
        elif self.max_model_len > limit:
            raise ConfigError(
                f"{self.max_model_len} exceeds the model's limit of {limit} tokens", field="max_model_len"
            )
        if self.master_port is None:
            self.master_port = int(os.environ.get("SHIFTTUNE_PORT", 0)) or None

    def _check_devices(self) -> None:
        p = self.parallel.world_size
        launched = int(os.environ.get("WORLD_SIZE", "0"))
        if launched and launched != p:
            raise ConfigError(f"launched with WORLD_SIZE={launched} but SP x TP = {p}", field="tensor_parallel_size")
        if self.device == "cuda":
            import torch  # NOTE: lazy, as in torch_dtype

            if not torch.cuda.is_available():
                raise ConfigError("is cuda but no CUDA GPU is visible; use cpu", field="device")
            n = torch.cuda.device_count()
            if not launched and n < p:
                raise ConfigError(f"SP x TP = {p} needs {p} GPUs but {n} are visible", field="tensor_parallel_size")

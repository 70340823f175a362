"""Weight loading: each rank reads only its own slices of a HF safetensors checkpoint, for every layout.

`check_checkpoint` validates the files (headers only) before any process or memory is set up;
`load_weights` fills the parameters of one or two `CausalLM` layouts with `safe_open(...).get_slice`.
`load_format="dummy"` fills them with seeded random values instead (profiling without a download).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from shifttune.config import ConfigError, ModelConfig
from shifttune.model.llama import CausalLM


def checkpoint_files(path: Path) -> dict[str, Path]:
    """Tensor name -> file, from `model.safetensors.index.json` or the lone `*.safetensors` files."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ConfigError(f"{index} is not a valid safetensors index: {e}") from None
        return {name: path / f for name, f in weight_map.items()}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ConfigError(
            f"{path} has no *.safetensors weights (shifttune reads safetensors only; "
            "run with --load-format dummy for random weights)"
        )
    out = {}
    for f in files:
        for name in _open(f).keys():
            out[name] = f
    return out


def _open(f: Path):
    if not f.is_file():
        raise ConfigError(f"weight file {f} is missing")
    try:
        return safe_open(str(f), framework="pt")
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"weight file {f} is corrupt or unreadable: {e}") from None


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    h, d, i = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, h)
    for n in range(cfg.num_layers):
        p = f"model.layers.{n}."
        shapes |= {
            p + "self_attn.q_proj.weight": (cfg.num_heads * d, h),
            p + "self_attn.k_proj.weight": (cfg.num_kv_heads * d, h),
            p + "self_attn.v_proj.weight": (cfg.num_kv_heads * d, h),
            p + "self_attn.o_proj.weight": (h, cfg.num_heads * d),
            p + "mlp.gate_proj.weight": (i, h),
            p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }
        if cfg.qkv_bias:
            shapes |= {
                p + f"self_attn.{x}_proj.bias": (shape,)
                for x, shape in (("q", cfg.num_heads * d), ("k", cfg.num_kv_heads * d), ("v", cfg.num_kv_heads * d))
            }
        if cfg.qk_norm:
            shapes |= {p + "self_attn.q_norm.weight": (d,), p + "self_attn.k_norm.weight": (d,)}
    return shapes


def check_checkpoint(path: Path, cfg: ModelConfig) -> None:
    """Every tensor the model needs is present with the right shape; reads file headers only."""
    files = checkpoint_files(path)
    handles = {f: _open(f) for f in set(files.values())}
    expected = expected_shapes(cfg)
    extra = sorted(n for n in files if n.startswith("model.layers.") and n.endswith("bias") and n not in expected)
    if extra:  # weights the model would silently ignore
        raise ConfigError(f"checkpoint {path} has tensors shifttune does not support, e.g. {extra[0]!r}")
    for name, shape in expected.items():
        if name not in files:
            raise ConfigError(f"checkpoint {path} lacks tensor {name!r}")
        try:
            got = tuple(handles[files[name]].get_slice(name).get_shape())
        except SafetensorError as e:
            raise ConfigError(f"tensor {name!r} in {files[name]} is unreadable: {e}") from None
        if got != shape:
            raise ConfigError(f"tensor {name!r} in {files[name]} has shape {got}, config implies {shape}")


def _rows(r: range | list[int]) -> slice:
    r = list(r)
    assert r == list(range(r[0], r[-1] + 1)), "shards are contiguous"
    return slice(r[0], r[-1] + 1)


def _target(model: CausalLM, name: str) -> tuple[torch.Tensor, int, slice] | None:
    """(destination tensor, dim of the source to slice, source slice) for one HF tensor, or None."""
    L, cfg, d = model.layout, model.cfg, model.cfg.head_dim
    if name == "model.embed_tokens.weight" or (name == "lm_head.weight" and not cfg.tie_word_embeddings):
        dst = model.embed_tokens.weight if name.startswith("model") else model.lm_head.weight
        stop = min(L.vocab_rows.stop, cfg.vocab_size)
        return dst[: max(stop - L.vocab_rows.start, 0)], 0, slice(L.vocab_rows.start, stop)
    if name == "model.norm.weight":
        return model.norm.weight, 0, slice(None)
    if not name.startswith("model.layers."):
        return None
    idx, rest = name[len("model.layers.") :].split(".", 1)
    layer = model.layers[int(idx)]
    attn, mlp = layer.self_attn, layer.mlp
    nq, nk = len(L.q_heads) * d, len(L.kv_heads) * d
    q_rows = slice(L.q_heads.start * d, L.q_heads.stop * d)
    kv = _rows(L.kv_heads)
    kv_rows = slice(kv.start * d, kv.stop * d)
    m = _rows(L.mlp_rows)
    table = {
        "self_attn.q_proj.weight": (attn.qkv_proj.weight[:nq], 0, q_rows),
        "self_attn.k_proj.weight": (attn.qkv_proj.weight[nq : nq + nk], 0, kv_rows),
        "self_attn.v_proj.weight": (attn.qkv_proj.weight[nq + nk :], 0, kv_rows),
        "self_attn.o_proj.weight": (attn.o_proj.weight, 1, q_rows),
        "mlp.gate_proj.weight": (mlp.gate_up_proj.weight[: len(L.mlp_rows)], 0, m),
        "mlp.up_proj.weight": (mlp.gate_up_proj.weight[len(L.mlp_rows) :], 0, m),
        "mlp.down_proj.weight": (mlp.down_proj.weight, 1, m),
        "input_layernorm.weight": (layer.input_layernorm.weight, 0, slice(None)),
        "post_attention_layernorm.weight": (layer.post_attention_layernorm.weight, 0, slice(None)),
    }
    if cfg.qkv_bias:
        table |= {
            "self_attn.q_proj.bias": (attn.qkv_proj.bias[:nq], 0, q_rows),
            "self_attn.k_proj.bias": (attn.qkv_proj.bias[nq : nq + nk], 0, kv_rows),
            "self_attn.v_proj.bias": (attn.qkv_proj.bias[nq + nk :], 0, kv_rows),
        }
    if cfg.qk_norm:
        table |= {
            "self_attn.q_norm.weight": (attn.q_norm.weight, 0, slice(None)),
            "self_attn.k_norm.weight": (attn.k_norm.weight, 0, slice(None)),
        }
    return table.get(rest)


def _copy_slices(models: list[CausalLM], name: str, read) -> None:
    """Copies this rank's slice of the HF tensor `name` into every model that holds part of it;
    `read(dim, src)` returns the source rows (dim 0) or columns (dim 1) `src`."""
    for model in models:
        target = _target(model, name)
        if target is not None:
            dst, dim, src = target
            dst.copy_(read(dim, src).to(dst.dtype))


@torch.no_grad()
def load_weights(models: list[CausalLM], path: Path) -> None:
    files = checkpoint_files(path)
    by_file: dict[Path, list[str]] = {}
    for name, f in files.items():
        by_file.setdefault(f, []).append(name)
    for f, names in by_file.items():
        with safe_open(str(f), framework="pt") as handle:
            for name in names:
                tensor = handle.get_slice(name)
                _copy_slices(models, name, lambda dim, src: tensor[src] if dim == 0 else tensor[:, src])
    for model in models:  # vocab padding rows past vocab_size stay zero
        _zero_vocab_padding(model)


def _zero_vocab_padding(model: CausalLM) -> None:
    pad_from = max(model.cfg.vocab_size - model.layout.vocab_rows.start, 0)
    model.embed_tokens.weight[pad_from:].zero_()
    model.lm_head.weight[pad_from:].zero_()


@torch.no_grad()
def init_dummy_weights(models: list[CausalLM], seed: int) -> None:
    """Seeded random weights (std 0.02, norms 1) as if from one checkpoint: each full tensor is drawn from
    a generator seeded by its name, then sliced like a real one, so every rank and both layouts hold
    shards of the same model and dummy runs give the same text in TP and SP x TP mode."""
    device = models[0].norm.weight.device
    for name, shape in expected_shapes(models[0].cfg).items():
        if "norm" in name:
            full = torch.ones(shape, device=device)
        else:
            gen = torch.Generator(device=device).manual_seed(seed * 2**32 + zlib.crc32(name.encode()))
            full = torch.empty(shape, device=device, dtype=models[0].norm.weight.dtype).normal_(
                0.0, 0.02, generator=gen
            )
        _copy_slices(models, name, lambda dim, src: full[src] if dim == 0 else full[:, src])
    for model in models:
        _zero_vocab_padding(model)

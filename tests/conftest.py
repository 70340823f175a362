"""Shared fixtures: tiny random HF checkpoints (the oracle's and the engine's input) and HF references."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Triton kernels run under its interpreter on machines without a GPU (must be set before triton loads).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        from triton.runtime import interpreter as _interp

        _orig_patch = _interp._patch_lang_tensor

        def _patch_lang_tensor(tensor, scope):
            # NOTE: the interpreter keeps loaded scalars as 1-element arrays, and numpy >= 2.x refuses
            # int() on those, so `range(lo, hi)` with loaded bounds fails on CPU only. Compiled code is fine.
            _orig_patch(tensor, scope)
            scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

        _interp._patch_lang_tensor = _patch_lang_tensor
    except ImportError:
        pass

LAYOUTS = [(1, 1), (2, 1), (1, 2), (2, 2)]  # (TP, SP)
# Other layouts on CPU ranks, e.g. SHIFTTUNE_TEST_LAYOUTS=8-1,4-2,2-4,1-8 (TP-SP pairs; slow on a few cores): the
# HF-oracle and KV-invariance tests run them instead, skipping a model whose heads they do not divide.
if os.environ.get("SHIFTTUNE_TEST_LAYOUTS"):
    LAYOUTS = [tuple(int(v) for v in x.split("-")) for x in os.environ["SHIFTTUNE_TEST_LAYOUTS"].split(",")]
PROMPTS = [
    [1, 17, 42, 99, 5, 8, 250, 13, 77],
    [1, 3],
    [1, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81],
    [1, 200, 201, 202, 7],
]
MAX_TOKENS = 8


def stand_in_step_graphs(
    num_heads: int,
    kv_heads: int,
    max_num_seqs: int,
    world_size: int = 1,
    sp: int = 1,
    sp_tokens_per_gpu: int = 0,
    max_tokens: int = 2048,
    budget: int = 8192,
):
    """StepGraphs (capture off, on CPU) of a rank with `num_heads` / world_size query heads and `kv_heads` cached
    KV heads, CUDA graphs up to `max_tokens` tokens of a `budget`-token step (and both modes where `sp` > 1): its
    buckets and split plan, without a model."""
    from types import SimpleNamespace

    from shifttune.runner.cuda_graphs import StepGraphs

    model = SimpleNamespace(vocab_size=8, num_heads=num_heads)
    cfg = SimpleNamespace(cuda_graph_max_tokens=max_tokens, sp_cuda_graph_tokens_per_gpu=sp_tokens_per_gpu,
                          max_num_batched_tokens=budget, max_num_seqs=max_num_seqs,
                          block_size=16, torch_dtype=torch.float32, max_model_len=4096, model_config=model,
                          parallel=SimpleNamespace(sp=sp, world_size=world_size))  # fmt: skip
    layout = SimpleNamespace(cache_kv_heads=list(range(kv_heads)))
    modes = ("tp", "sp") if sp > 1 else ("tp",)
    runner = SimpleNamespace(config=cfg, device=torch.device("cpu"), scratch_block=0, modes=modes,
                             model_for=lambda mode: SimpleNamespace(layout=layout))  # fmt: skip
    return StepGraphs(runner, capture=False)


def cpu_llm(path, tp: int, sp: int, **kwargs):
    """An engine on tp x sp CPU ranks, or a skip where the model's heads do not divide the layout (the engine
    says so; the default LAYOUTS divide every test model)."""
    from shifttune import LLM
    from shifttune.config import ConfigError

    try:
        return LLM(str(path), tensor_parallel_size=tp, sequence_parallel_size=sp, **kwargs)
    except ConfigError as e:
        pytest.skip(f"TP={tp} SP={sp}: {e.message}")


def _small(cls, **kw):
    base = dict(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        vocab_size=301,
        max_position_embeddings=256,
        initializer_range=0.1,
        rms_norm_eps=1e-6,
    )
    return cls(**(base | kw))


def build_hf_model(kind: str, out: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed({"llama": 1, "qwen2": 2, "qwen3": 3}[kind])
    if kind == "llama":  # GQA K=2, llama3 RoPE scaling, untied, vocab not divisible by P
        cfg = _small(
            LlamaConfig,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        )
        model = LlamaForCausalLM(cfg)
    elif kind == "qwen2":  # qkv bias, MHA, tied embeddings
        cfg = _small(Qwen2Config, num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)
        model = Qwen2ForCausalLM(cfg)
    else:  # q/k norm, head_dim != hidden / heads, one KV head per 4 query heads: K=2 < P=4 replicates
        cfg = _small(Qwen3Config, num_attention_heads=8, num_key_value_heads=2, head_dim=32)
        model = Qwen3ForCausalLM(cfg)
    # Random biases too (HF initializes them to zero, which would test nothing).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    model.save_pretrained(out, max_shard_size="100KB")  # several shards + index
    return out


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {k: build_hf_model(k, root / k) for k in ("llama", "qwen2", "qwen3")}


_REF_CACHE: dict = {}
BF16_LOGIT_TOL = 0.1


def check_against_hf_fp32(path, prompts, engine_tokens):
    """The bf16 rule: greedy tokens must equal HF's (fp32, teacher-forced on the engine's own tokens)
    up to the first position where they differ; there, HF's logits of its own pick and of the engine's
    pick must be within BF16_LOGIT_TOL (bf16 noise on these tiny models' O(1) logits). After that the
    sequences legitimately differ and are not compared. Returns how many sequences matched outright."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    exact = 0
    for prompt, toks in zip(prompts, engine_tokens):
        with torch.no_grad():
            logits = hf(torch.tensor([prompt + toks])).logits[0, len(prompt) - 1 : -1]
        picks = logits.argmax(-1).tolist()
        for i, (mine, theirs) in enumerate(zip(toks, picks)):
            if mine != theirs:
                gap = (logits[i, theirs] - logits[i, mine]).item()
                assert gap < BF16_LOGIT_TOL, (prompt, i, mine, theirs, gap)
                break
        else:
            exact += 1
    return exact


def hf_reference(path: Path, prompts=PROMPTS, max_tokens=MAX_TOKENS):
    """Greedy tokens and first-step log-probs from transformers, one prompt at a time (no padding)."""
    key = (str(path), tuple(map(tuple, prompts)), max_tokens)
    if key not in _REF_CACHE:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        tokens, logprobs = [], []
        with torch.no_grad():
            for p in prompts:
                ids = torch.tensor([p])
                logprobs.append(torch.log_softmax(model(ids).logits[0, -1].float(), -1))
                out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False, min_new_tokens=max_tokens)
                tokens.append(out[0, len(p) :].tolist())
        _REF_CACHE[key] = (tokens, logprobs)
    return _REF_CACHE[key]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the device machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

"""Launch lines for a plan: `vllm serve` (plain TP, or SP x TP with Arctic Inference) and shifttune's own.

This module owns every rule a printed launch line must obey, so that the lines run as printed:

- vLLM's form is `vllm serve <model>` with the model positional, a Hugging Face id or a local directory;
  bundled config names map to HF ids (`HF_IDS`), `tiny` has no vLLM line, a path is used as is.
- The Arctic plugin does nothing unless `ARCTIC_INFERENCE_ENABLED=1` is set; its lines need
  arctic-inference 0.3.0 with vLLM 0.26.0 (`ARCTIC_PIN`; 0.2.0 pins vLLM 0.18.0).
- Arctic's constraints: TP x SP = GPUs, heads divisible by TP x SP, max_num_seqs divisible by SP.
  `--max-num-seqs` is set only when vLLM's default does not divide by SP.
- A threshold above vLLM's default CUDA-graph capture size (512) raises `--max-cudagraph-capture-size`.
- Memory: W/TP x (1 + 1/SP) of weights per GPU when shifting (W/TP without shifting), plus KV for one
  sequence of the longest profiled context, within 0.9 of the GPU; FP8 is suggested when only it fits.
- Threshold 0: SP x TP at every step, no `--enable-shift-parallel`. Threshold None or SP = 1: plain TP.
- CPU profiles get no vLLM lines. shifttune lines keep the model name as the user gave it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shifttune.config import BUNDLED_CONFIG_DIR, SP
from shifttune.engine.profile_schema import Profile

ARCTIC_PIN = "arctic-inference==0.3.0 vllm==0.26.0"
ARCTIC_ENV = "ARCTIC_INFERENCE_ENABLED=1"
HF_IDS = {
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B-Instruct",
    "llama-3.3-70b": "meta-llama/Llama-3.3-70B-Instruct",
    "qwen3-8b": "Qwen/Qwen3-8B",
    "qwen3-32b": "Qwen/Qwen3-32B",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B-Instruct",
    "mistral-7b-v0.3": "mistralai/Mistral-7B-Instruct-v0.3",
}
CPU_ONLY_MODELS = ("tiny",)  # bundled with weights for CPU tests; no Hugging Face checkpoint
VLLM_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default --gpu-memory-utilization
VLLM_CUDAGRAPH_CAPTURE_SIZE = 512  # vLLM's default max_cudagraph_capture_size
# vLLM's default max_num_seqs: 1024 on GPUs of >= 70 GiB other than A100 (H100, H200), else 256
VLLM_MAX_NUM_SEQS_LARGE, VLLM_MAX_NUM_SEQS_SMALL, LARGE_GPU_BYTES = 1024, 256, 70 * 2**30
BYTES_PER_PARAM = {"bfloat16": 2, "float16": 2, "auto": 2, "float32": 4}
FP8_BYTES_PER_PARAM = 1


@dataclass(frozen=True)
class Deployment:
    """What the plan chose: P GPUs, the SP x TP layout and the switching threshold."""

    model: str  # as the user gave it (a bundled name or a path)
    world_size: int
    tp: int
    sp: int
    threshold: int | None  # None: SP x TP never pays at the chosen context; 0: SP x TP at every step
    profile_path: str | None = None
    profile_policy: bool = False  # also print the shift_policy='profile' line (needs profile_path)


@dataclass
class Launch:
    commands: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MemoryFit:
    """Per-GPU bytes of one deployment against vLLM's budget, in the profile's dtype and in FP8."""

    budget: float
    need: float  # weights in the profile's dtype plus the KV room
    need_fp8: float

    @property
    def fits(self) -> bool:
        return self.need <= self.budget

    @property
    def fits_fp8(self) -> bool:
        return self.need_fp8 <= self.budget


def _bundled(name: str) -> bool:
    """A bundled config's name (resolve_model_path prefers a local directory of that name)."""
    path = Path(name).expanduser()
    return path.name == name and not path.is_dir() and (BUNDLED_CONFIG_DIR / name.lower()).is_dir()


def vllm_model_id(name: str) -> str | None:
    """The model argument for `vllm serve`: a bundled name's HF id, a path as is; None for CPU-only or
    bundled configs without a known HF id."""
    key = name.lower()
    if key in HF_IDS:
        return HF_IDS[key]
    if key in CPU_ONLY_MODELS or _bundled(name):
        return None
    return name  # a local directory (or an HF id given as such)


def vllm_default_max_num_seqs(hardware: dict) -> int:
    """vLLM's server default; without GPU memory in the profile, the H100/H200 value."""
    gpus = hardware.get("gpus") or []
    if not gpus:
        return VLLM_MAX_NUM_SEQS_LARGE
    memory = min(g.get("memory_bytes") or 0 for g in gpus)
    name = " ".join([str(hardware.get("gpu_name", ""))] + [str(g.get("name", "")) for g in gpus])
    large = memory >= LARGE_GPU_BYTES and "a100" not in name.lower()
    return VLLM_MAX_NUM_SEQS_LARGE if large else VLLM_MAX_NUM_SEQS_SMALL


def arctic_max_num_seqs(sp: int, default: int) -> int | None:
    """The --max-num-seqs to pass: None when vLLM's default already divides by SP."""
    return None if default % sp == 0 else default - default % sp


def validate_arctic(tp: int, sp: int, world: int, num_heads: int, max_num_seqs: int) -> list[str]:
    """Arctic Inference's own constraints for an SP x TP launch; empty when all hold."""
    problems = []
    if tp * sp != world:
        problems.append(f"TP x SP = {tp * sp} must equal the {world} GPUs")
    if num_heads % (tp * sp):
        problems.append(f"{num_heads} heads must divide by TP x SP = {tp * sp}")
    if max_num_seqs % sp:
        problems.append(f"--max-num-seqs {max_num_seqs} must divide by SP = {sp}")
    return problems


def weights_per_gpu(weight_bytes: float, tp: int, sp: int, shift: bool) -> float:
    """W/TP for the SP x TP layout, plus W/P for the TP=P copy when shifting: W/TP x (1 + 1/SP)."""
    return weight_bytes / tp * (1 + (1 / sp if shift and sp > 1 else 0))


def memory_fit(profile: Profile, tp: int, sp: int, shift: bool) -> MemoryFit | None:
    """None when the profile lacks the parameter count, the dtype or the GPUs' memory."""
    m, gpus = profile.model, profile.hardware.get("gpus") or []
    elem = BYTES_PER_PARAM.get(str(m.get("dtype")))
    memory = [g.get("memory_bytes") for g in gpus]
    if not m.get("num_params") or elem is None or not memory or not all(memory):
        return None
    kv_heads = max(1, int(m.get("num_kv_heads", 0)) // (tp * sp))
    kv_per_token = 2 * int(m.get("num_layers", 0)) * kv_heads * int(m.get("head_dim", 0)) * elem
    kv_room = kv_per_token * max(profile.grid.get("contexts") or [0])  # one longest-context sequence
    budget = min(memory) * VLLM_GPU_MEMORY_UTILIZATION
    need = weights_per_gpu(m["num_params"] * elem, tp, sp, shift) + kv_room
    need_fp8 = weights_per_gpu(m["num_params"] * FP8_BYTES_PER_PARAM, tp, sp, shift) + kv_room
    return MemoryFit(budget, need, need_fp8)


def vllm_tp_line(model_id: str, world_size: int) -> str:
    return f"vllm serve {model_id} --tensor-parallel-size {world_size}"


def arctic_line(
    model_id: str, tp: int, sp: int, threshold: int, max_num_seqs: int | None = None, fp8: bool = False
) -> str:
    """`vllm serve` with the Arctic plugin on: SP x TP, shifting to TP=P for steps <= threshold (> 0)."""
    line = f"{ARCTIC_ENV} vllm serve {model_id} --tensor-parallel-size {tp} --ulysses-sequence-parallel-size {sp}"
    if threshold > 0:
        line += f" --enable-shift-parallel --shift-parallel-threshold {threshold}"
        if threshold > VLLM_CUDAGRAPH_CAPTURE_SIZE:
            line += f" --max-cudagraph-capture-size {threshold}"
    if max_num_seqs is not None:
        line += f" --max-num-seqs {max_num_seqs}"
    if fp8:
        line += " --quantization fp8"
    return line


def _arctic(dep: Deployment, profile: Profile, model_id: str, notes: list[str]) -> str | None:
    """The Arctic line, or None with the reason in notes."""
    default_seqs = vllm_default_max_num_seqs(profile.hardware)
    max_seqs = arctic_max_num_seqs(dep.sp, default_seqs)
    heads = int(profile.model.get("num_heads", dep.world_size))
    problems = validate_arctic(dep.tp, dep.sp, dep.world_size, heads, max_seqs or default_seqs)
    if problems:
        notes.append("no Arctic Inference line: " + "; ".join(problems))
        return None
    shift = bool(dep.threshold)
    fit, fp8 = memory_fit(profile, dep.tp, dep.sp, shift), False
    copies = "W/TP x (1 + 1/SP)" if shift else "W/TP"
    if fit is None:
        notes.append("memory not checked: the profile lacks num_params, dtype or the GPUs' memory.")
    elif not fit.fits and not fit.fits_fp8:
        notes.append(
            f"no Arctic Inference line: SP={dep.sp} x TP={dep.tp} needs {fit.need_fp8 / 2**30:.1f} GiB per GPU "
            f"even in FP8 ({copies} plus KV), over {fit.budget / 2**30:.1f} GiB (0.9 of the GPU)."
        )
        return None
    elif not fit.fits:
        fp8 = True
        notes.append(
            f"SP={dep.sp} x TP={dep.tp} needs {fit.need / 2**30:.1f} GiB per GPU in {profile.model['dtype']} "
            f"({copies} plus KV), over {fit.budget / 2**30:.1f} GiB (0.9 of the GPU); in FP8 it needs "
            f"{fit.need_fp8 / 2**30:.1f} GiB: the line quantizes with --quantization fp8 (or serve an FP8 checkpoint)."
        )
    if max_seqs is not None:
        notes.append(
            f"--max-num-seqs {max_seqs}: Arctic needs max_num_seqs divisible by SP={dep.sp}, and vLLM's "
            f"default ({default_seqs}) is not."
        )
    if shift and dep.threshold > VLLM_CUDAGRAPH_CAPTURE_SIZE:
        notes.append(
            f"--max-cudagraph-capture-size {dep.threshold}: vLLM captures CUDA graphs up to "
            f"{VLLM_CUDAGRAPH_CAPTURE_SIZE} tokens by default; TP-mode steps run up to the threshold."
        )
    notes.append(f"the vllm_arctic line needs Arctic Inference 0.3.0 with vLLM 0.26.0: pip install {ARCTIC_PIN}")
    return arctic_line(model_id, dep.tp, dep.sp, dep.threshold, max_seqs, fp8)


def vllm_lines(dep: Deployment, profile: Profile) -> Launch:
    """vLLM's lines: plain TP when shift never pays (or Arctic cannot run), else SP x TP with Arctic."""
    out = Launch()
    if profile.hardware.get("device") == "cpu":
        out.notes.append("no vLLM lines: vLLM and Arctic Inference run on GPUs only (this is a CPU profile).")
        return out
    model_id = vllm_model_id(dep.model)
    if model_id is None:
        why = "a CPU test model" if dep.model.lower() in CPU_ONLY_MODELS else "a bundled config with no known HF id"
        out.notes.append(f"no vLLM lines for {dep.model!r}: it is {why}; give vLLM a Hugging Face id or a directory.")
        return out
    line = None
    if dep.sp > 1 and dep.threshold is not None:
        line = _arctic(dep, profile, model_id, out.notes)
    if line is None:
        out.commands["vllm"] = vllm_tp_line(model_id, dep.world_size)
    else:
        out.commands["vllm_arctic_install"] = f"pip install {ARCTIC_PIN}"
        out.commands["vllm_arctic"] = line
    return out


def shifttune_lines(dep: Deployment, device: str) -> dict[str, str]:
    """shifttune's own lines (the server, the Python API, offline generation), with the model as the user gave it;
    configs without weights load dummy ones."""
    model, tp, sp, th = dep.model, dep.tp, dep.sp, dep.threshold
    dummy = _bundled(model) and model.lower() not in CPU_ONLY_MODELS  # bundled configs ship without weights
    fmt, fmt_py = (" --load-format dummy", "load_format='dummy', ") if dummy else ("", "")
    llm = f"LLM(model={model!r}, tensor_parallel_size={tp}, sequence_parallel_size={sp}, device={device!r}, {fmt_py}"
    generate = f"shifttune generate --model {model}"
    serve = f"shifttune serve {model}"
    on = f" --device {device}{fmt}"
    if sp == 1:
        return {"shifttune_serve": f"{serve} -tp {dep.world_size}{on}",
                "shifttune_generate": f"{generate} --tp {dep.world_size}{on}"}  # fmt: skip
    cmds = {}
    if th == 0:
        cmds["shifttune_serve"] = f"{serve} -tp {tp} -sp {sp} --shift-policy {SP}{on}"
        cmds["shifttune_python"] = llm + f"shift_policy={SP!r})"
        cmds["shifttune_generate"] = f"{generate} --tp {tp} --sp {sp} --policy {SP}{on}"
        return cmds
    if th is not None:
        cmds["shifttune_serve"] = f"{serve} -tp {tp} -sp {sp} --shift-threshold {th}{on}"
        cmds["shifttune_python"] = llm + f"shift_policy='threshold', shift_threshold={th})"
        cmds["shifttune_generate"] = f"{generate} --tp {tp} --sp {sp} --threshold {th}{on}"
    else:  # SP x TP never pays at this context: plain TP, unless the profile policy below
        cmds["shifttune_serve"] = f"{serve} -tp {dep.world_size}{on}"
        cmds["shifttune_generate"] = f"{generate} --tp {dep.world_size}{on}"
    if dep.profile_path and dep.profile_policy:
        cmds["shifttune_serve_profile_policy"] = (
            f"{serve} -tp {tp} -sp {sp} --shift-policy profile --profile {dep.profile_path}{on}"
        )
        cmds["shifttune_python_profile_policy"] = llm + f"shift_policy='profile', shift_profile={dep.profile_path!r})"
    return cmds


def launch_lines(dep: Deployment, profile: Profile) -> Launch:
    """Every launch line for the deployment, with notes on what the lines needed."""
    device = "cpu" if profile.hardware.get("device") == "cpu" else "cuda"
    out = vllm_lines(dep, profile)
    out.commands.update(shifttune_lines(dep, device))
    return out

"""ptxas register and spill counts of the paged kernel with and without EARLY_KV (runs at 816c834 only, the one
commit with EARLY_KV; CPU, Triton's bundled toolchain): `git checkout 816c834 && env -u TRITON_INTERPRET python
profiles/runs/s20_h200/a_early_kv/ptxas_spills.py`. 8B heads, kernel merge, tile 64, PDL, 2 and 4 warps, 1 stage."""

import subprocess

import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource

from shifttune.kernels import paged_attention as pa

PTRS = dict(out="*bf16", q="*bf16", k_cache="*bf16", v_cache="*bf16", block_tables="*i32", seq_lens="*i32",
            query_start_loc="*i32", part_out="*fp32", part_lse="*fp32", counters="*fp32")  # fmt: skip
INTS = dict(scale="fp32", num_seqs="i32", stride_bt="i32", num_tokens="i32", stride_qt="i32", num_splits="i32")
for early in (False, True):
    for warps in (2, 4):
        consts = dict(HQ=32, HK=8, D=128, BLOCK_SIZE=16, BLOCK_Q=4, BLOCK_M=16, TILE=64, SPLIT=2, GP2=4, S_CHUNK=16,
                      PDL=True, EARLY_KV=early)  # fmt: skip
        sig = {**PTRS, **INTS, **{k: "constexpr" for k in consts}}
        src = ASTSource(pa._paged_attention_kernel, sig, consts, {(i,): [["tt.divisibility", 16]] for i in range(10)})
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=1))
        with open("/tmp/early_kv.ptx", "w") as f:
            f.write(k.asm["ptx"])
        r = subprocess.run([get_ptxas(90).path, "-v", "--gpu-name", "sm_90a", "/tmp/early_kv.ptx", "-o", "/tmp/early_kv.cubin"],
                           capture_output=True, text=True)  # fmt: skip
        info = " | ".join(ln.split(":", 1)[-1].strip() for ln in r.stderr.splitlines() if "registers" in ln or "spill" in ln)
        print(f"EARLY_KV={early} num_warps={warps}: {info}")

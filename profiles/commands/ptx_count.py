"""Static PTX instruction counts of the engine's paged-attention kernel as it compiles for a decode step
(split-KV, kernel merge, Llama-3.1-8B heads, tile 64, 4 warps) at num_stages 1, 2 and 3, on any machine
with Triton's bundled toolchain (no GPU):

    env -u TRITON_INTERPRET python profiles/commands/ptx_count.py

and, for comparison, `decode_probe.py`'s TMA variant (K/V by one tensor-descriptor load per 16-token block) at
num_stages 2 and 4.
"""

import collections

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import decode_probe as dp

from shifttune.kernels import paged_attention as pa

PTRS = dict(out="*bf16", q="*bf16", k_cache="*bf16", v_cache="*bf16", block_tables="*i64", seq_lens="*i64",
            query_start_loc="*i64", part_out="*fp32", part_lse="*fp32", counters="*i32")  # fmt: skip
INTS = dict(scale="fp32", num_seqs="i32", stride_bt="i32", num_tokens="i32", stride_qt="i32", num_splits="i32")
CONSTS = dict(HQ=32, HK=8, D=128, BLOCK_SIZE=16, BLOCK_Q=4, BLOCK_M=16, TILE=64, SPLIT=2, GP2=4, S_CHUNK=16, PDL=False)

for stages in (1, 2, 3):
    sig = {**PTRS, **INTS, **{k: "constexpr" for k in CONSTS}}
    src = ASTSource(pa._paged_attention_kernel, sig, CONSTS, {(i,): [["tt.divisibility", 16]] for i in range(10)})
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, num_stages=stages))
    lines = [ln.strip() for ln in k.asm["ptx"].splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(("//", ".", "$", "{", "}"))]
    ops = collections.Counter((ln.split()[1] if ln.startswith("@") else ln.split()[0]).split(".")[0] for ln in lines)
    print(
        f"num_stages {stages}: {len(lines)} instructions, shared memory {k.metadata.shared} B, "
        f"most common {ops.most_common(12)}"
    )

TMA_SIG = dict(q="*bf16", k_desc="tensordesc<bf16[16, 128]>", v_desc="tensordesc<bf16[16, 128]>", block_tables="*i64",
               seq_lens="*i64", part_out="*fp32", part_lse="*fp32", scale="fp32", stride_bt="i32", num_tokens="i32",
               num_splits="i32")  # fmt: skip
TMA_CONSTS = dict(HQ=32, HK=8, D=128, BLOCK_SIZE=16, BLOCK_M=16)
for stages in (2, 4):
    src = ASTSource(dp._probe_tma_kernel, {**TMA_SIG, **{k: "constexpr" for k in TMA_CONSTS}}, TMA_CONSTS)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, num_stages=stages))
    lines = [ln.strip() for ln in k.asm["ptx"].splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(("//", ".", "$", "{", "}"))]
    tma = sum("cp.async.bulk.tensor" in ln for ln in lines)
    print(f"TMA probe, num_stages {stages}: {len(lines)} instructions ({tma} TMA loads), "
          f"shared memory {k.metadata.shared} B")  # fmt: skip

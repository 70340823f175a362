"""One eager launch of the engine's paged kernel (and its merge) at batch 1, 2k context, for Nsight Compute:

    ncu --kernel-name regex:_paged_attention_kernel|_merge_splits_kernel --launch-skip 2 --launch-count 2 \
        --section SpeedOfLight --section WarpStateStats --section LaunchStats --section Occupancy \
        python profiles/commands/decode_ncu.py
"""

import torch

from shifttune.kernels import paged_attention as pa
from shifttune.profile.attention_bench import Step

step = Step([1], [2048], 32, 8, 128, 16, 1, torch.device("cuda"))
for _ in range(3):
    pa.paged_attention(step.q, step.k_cache, step.v_cache, step.metas[0], 128**-0.5)
torch.cuda.synchronize()

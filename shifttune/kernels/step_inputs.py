"""A graph step's inputs in one launch: token ids (with the tokens the previous step left on the device),
positions, slot mapping, query starts, sequence lengths, block-table rows and sample indices, written
straight into the CUDA graph's input buffers together with the bucket's padding.

The torch path (`InputBatch.prepare`, then `StepGraphs.copy_inputs`: copies and `_fill_padding`) does the same in
about twenty launches of a few microseconds each, which the GPU waits for between steps; it stays the CPU
path and the reference in the tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

NUM_PAD_PROGRAMS = 4  # programs for the padding at least; one more per stale block-table row past that


# NOTE: every integer argument unspecialized: Triton compiles a variant per value of 1 and multiple of 16, which
# steps of every shape would otherwise meet one by one while serving (the engine compiles this once at start).
INT_ARGS = ["table_stride", "tables_stride", "num_tokens", "num_seqs", "num_samples", "bucket", "bucket_seqs",
            "width", "full_width", "rows_in_use", "scratch_block", "num_pad"]  # fmt: skip


@triton.jit(do_not_specialize=INT_ARGS)
def _graph_inputs_kernel(
    token_ids,
    rows,
    starts,
    qsl_in,
    samples_in,
    table,
    table_stride,
    last_token,
    ids,
    pos,
    slots,
    qsl,
    seq_lens,
    tables,
    tables_stride,
    samples,
    num_tokens,
    num_seqs,
    num_samples,
    bucket,
    bucket_seqs,
    width,
    full_width,
    rows_in_use,
    scratch_block,
    num_pad,
    BS: tl.constexpr,
    PENDING: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Programs [0, num_seqs): sequence s's tokens and block-table row. Programs after them: the padding
    (tokens num_tokens..bucket go to the scratch slot; one padding sequence owns them, empty ones follow;
    stale block-table rows back to the scratch block) and the sample indices."""
    s = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    # NOTE: Triton merges names bound in both branches of an `if` and wants one type for each: the two
    # branches use their own names (the interpreter does not check this; tests/test_kernels.py compiles it).
    if s < num_seqs:
        row = tl.load(rows + s)
        start = tl.load(starts + s)
        q0 = tl.load(qsl_in + s)
        q1 = tl.load(qsl_in + s + 1)
        last = tl.load(last_token + row)
        for tok0 in range(q0, q1, BLOCK):
            tok = tok0 + offs
            m = tok < q1
            p = start + tok - q0
            t = tl.load(token_ids + tok, mask=m, other=0)
            t = tl.where(t == PENDING, last, t)
            block = tl.load(table + row * table_stride + p // BS, mask=m, other=0)
            tl.store(ids + tok, t, mask=m)
            tl.store(pos + tok, p, mask=m)
            tl.store(slots + tok, block * BS + p % BS, mask=m)
        tl.store(qsl + s + 1, q1)
        tl.store(seq_lens + s, start + q1 - q0)
        if s == 0:
            tl.store(qsl, q1 * 0)
        for c0 in range(0, width, BLOCK):
            col = c0 + offs
            cm = col < width
            tl.store(tables + s * tables_stride + col, tl.load(table + row * table_stride + col, mask=cm), mask=cm)
    else:
        j = s - num_seqs
        scratch_slot = scratch_block * BS
        for pad0 in range(num_tokens + j * BLOCK, bucket, num_pad * BLOCK):
            ptok = pad0 + offs
            pm = ptok < bucket
            tl.store(ids + ptok, ptok * 0, mask=pm)
            tl.store(pos + ptok, ptok * 0, mask=pm)
            tl.store(slots + ptok, ptok * 0 + scratch_slot, mask=pm)
        for r in range(num_seqs + j, rows_in_use, num_pad):
            for pc0 in range(0, full_width, BLOCK):
                pcol = pc0 + offs
                tl.store(tables + r * tables_stride + pcol, pcol * 0 + scratch_block, mask=pcol < full_width)
        if j == 0:
            for i0 in range(0, bucket_seqs, BLOCK):
                i = i0 + offs
                pad_seq = (i >= num_seqs) & (i < bucket_seqs)
                tl.store(qsl + i + 1, i * 0 + bucket, mask=pad_seq)
                n = tl.where(i == num_seqs, tl.maximum(bucket - num_tokens, 1), 1)
                tl.store(seq_lens + i, n, mask=pad_seq)
                v = tl.load(samples_in + i, mask=i < num_samples, other=0)
                tl.store(samples + i, v, mask=i < bucket_seqs)


def load_graph_inputs(
    parts: list[torch.Tensor],
    table: torch.Tensor,
    last_token: torch.Tensor,
    buffers: tuple[torch.Tensor, ...],
    bucket: int,
    bucket_seqs: int,
    width: int,
    rows_in_use: int,
    scratch_block: int,
    block_size: int,
    pending: int,
) -> None:
    """parts: the step's uploaded (token ids, rows, starts, query starts, sample indices); table and
    last_token: the persistent batch's; buffers: the graph's (ids, positions, slots, query starts, sequence
    lengths, block tables, sample indices), written for `bucket` tokens over `bucket_seqs` sequences.
    `width`: block-table columns the step reads; `rows_in_use`: rows that held real sequences last step.
    A token id `pending` stands for the row's `last_token`."""
    token_ids, rows, starts, qsl_in, samples_in = parts
    ids, pos, slots, qsl, seq_lens, tables, samples = buffers
    num_seqs = rows.shape[0]
    # NOTE: a batch that shrinks a lot (256 rows to 1) resets every stale row whole (up to max_model_len /
    # block_size columns): one program per row, not a few looping over all of them
    num_pad = max(NUM_PAD_PROGRAMS, rows_in_use - num_seqs)
    _graph_inputs_kernel[(num_seqs + num_pad,)](
        token_ids, rows, starts, qsl_in, samples_in, table, table.stride(0), last_token,
        ids, pos, slots, qsl, seq_lens, tables, tables.stride(0), samples,
        token_ids.shape[0], num_seqs, samples_in.shape[0], bucket, bucket_seqs, width, tables.shape[1],
        rows_in_use, scratch_block, num_pad, BS=block_size, PENDING=pending, BLOCK=128, num_warps=4,
    )  # fmt: skip

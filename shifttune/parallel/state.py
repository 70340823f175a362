"""Process groups of one rank: its TP group, its SP group, the world group TP mode uses, and a CPU control group.

Ranks are laid out r = s * TP + t. The TP group of r is {s * TP + t'}, its SP group {s' * TP + t}; the
TP mode's layout uses every rank, with rank r holding shard `ParallelConfig.tp_mode_shard(r)`.
Collectives on a group of one rank are no-ops, so a single-rank engine never touches torch.distributed.
"""

from __future__ import annotations

import datetime
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from shifttune.config import ConfigError, ParallelConfig

# torch >= 2.12 renamed all_gather_into_tensor; keep both working (the GPU image has torch 2.11).
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


ONE_SHOT_MAX_BYTES = 1 << 20  # from 4 MiB up NCCL was faster in a graph on 4 H200s (profiles/runs/s17_h200x4)
_rendezvous_done = 0  # symmetric-memory rendezvous this process has taken part in
# the process group init_parallel_state joined (torch's one default group a process may have): "open" from the join,
# "closing" once its engine left it, None again once it closed
_our_group: str | None = None


def symm_mem_used_in_this_process() -> bool:
    """NOTE: torch numbers a process's symmetric-memory exchanges with one counter for the process's lifetime,
    so a driver that set up one engine's buffers can never rendezvous with the freshly spawned workers of the
    next (their counters start at 0): the rendezvous would wait forever."""
    return _rendezvous_done > 0


class OneShotAllReduce:
    """Torch's symmetric-memory one-shot all-reduce of inputs up to `max_bytes`: each rank copies its input into
    a buffer its peers can read over NVLink, and one kernel sums every rank's buffer (no ring of NCCL steps).
    NOTE: built by every rank of the group together (the buffer's rendezvous is a collective)."""

    def __init__(self, handle, dtype: torch.dtype, device: torch.device, max_bytes: int = ONE_SHOT_MAX_BYTES):
        import torch.distributed._symmetric_memory as symm_mem

        global _rendezvous_done
        self.group_name = handle.group_name
        with warnings.catch_warnings():  # NOTE: older torch needs it for a subgroup; 2.11 calls it deprecated
            warnings.simplefilter("ignore", FutureWarning)
            symm_mem.enable_symm_mem_for_group(self.group_name)
        self.buffer = symm_mem.empty(max_bytes // dtype.itemsize, dtype=dtype, device=device)
        _rendezvous_done += 1
        symm_mem.rendezvous(self.buffer, self.group_name)

    def fits(self, x: torch.Tensor) -> bool:
        """Same dtype and device, no bigger than the buffer, whole 4-byte words (the kernel's unit)."""
        n = x.numel()
        same = x.dtype == self.buffer.dtype and x.device == self.buffer.device
        return same and n <= self.buffer.numel() and n * x.element_size() % 4 == 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.numel()
        out = torch.ops.symm_mem.one_shot_all_reduce_copy(self.buffer[:n], x.reshape(n), "sum", self.group_name)
        return out.view(x.shape)


@dataclass
class Group:
    """A process group plus the facts the model needs about it."""

    ranks: list[int]
    rank_in_group: int
    handle: object | None  # torch ProcessGroup; None when the group has one rank
    one_shot: OneShotAllReduce | None = None  # all-reduces that fit it go there instead of NCCL

    @property
    def size(self) -> int:
        return len(self.ranks)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The group's sum of `x`: in place through NCCL / gloo, or a new tensor through the one-shot path."""
        if self.handle is None:
            return x
        if self.one_shot is not None and self.one_shot.fits(x):
            return self.one_shot(x)
        dist.all_reduce(x, group=self.handle)
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """Stack of every member's `x` along a new leading dim, in group-rank order."""
        if self.handle is None:
            return x.unsqueeze(0)
        out = torch.empty((self.size * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
        _all_gather_single(out, x.contiguous(), group=self.handle)
        return out.view(self.size, *x.shape)

    def all_to_all(self, x: torch.Tensor) -> torch.Tensor:
        """x[i] goes to member i; returns out[i] = what member i sent here. Leading dim = group size."""
        if self.handle is None:
            return x
        x = x.contiguous()
        out = torch.empty_like(x)  # NOTE: after contiguous(), or it inherits x's strides
        dist.all_to_all_single(out, x, group=self.handle)
        return out


@dataclass
class ParallelState:
    rank: int
    parallel: ParallelConfig
    tp_group: Group
    sp_group: Group
    world_group: Group
    cpu_group: object | None  # gloo group for control messages (step inputs); None with one rank

    @property
    def tp_index(self) -> int:
        return self.parallel.tp_index(self.rank)

    @property
    def sp_index(self) -> int:
        return self.parallel.sp_index(self.rank)

    @property
    def tp_mode_shard(self) -> int:
        return self.parallel.tp_mode_shard(self.rank)


def init_parallel_state(
    parallel: ParallelConfig,
    rank: int,
    device: str,
    init_method: str | None,
    all_reduce: str = "nccl",
    dtype: torch.dtype = torch.bfloat16,
) -> ParallelState:
    """Joins the process group (unless P == 1) and builds every group; all ranks must call this together.
    all_reduce "symm_mem": the world and TP groups' small all-reduces (TP mode's and SP x TP mode's row-parallel
    layers) go through `OneShotAllReduce` buffers of `dtype`."""
    global _our_group
    p, tp, sp = parallel.world_size, parallel.tp, parallel.sp
    tp_ranks = [parallel.sp_index(rank) * tp + t for t in range(tp)]
    sp_ranks = [s * tp + parallel.tp_index(rank) for s in range(sp)]
    if p == 1:
        one = Group([0], 0, None)
        return ParallelState(rank, parallel, one, one, one, None)
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(
        backend, init_method=init_method, rank=rank, world_size=p, timeout=datetime.timedelta(minutes=10)
    )
    _our_group = "open"

    def make(ranks: list[int], handles: dict) -> Group:
        return Group(ranks, ranks.index(rank), handles[tuple(ranks)] if len(ranks) > 1 else None)

    # NOTE: new_group must be called by every rank for every group, in the same order.
    handles: dict[tuple[int, ...], object] = {}
    for s in range(sp):
        ranks = tuple(s * tp + t for t in range(tp))
        handles[ranks] = dist.new_group(list(ranks)) if tp > 1 else None
    for t in range(tp):
        ranks = tuple(s * tp + t for s in range(sp))
        handles[ranks] = dist.new_group(list(ranks)) if sp > 1 else None
    handles[tuple(range(p))] = dist.group.WORLD
    cpu_group = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD
    tp_group, world_group = make(tp_ranks, handles), make(list(range(p)), handles)
    if all_reduce == "symm_mem":
        dev = torch.device("cuda", torch.cuda.current_device())
        world_group.one_shot = OneShotAllReduce(world_group.handle, dtype, dev)
        if tp_group.handle is not None:  # TP mode's world group, or this rank's TP group of SP x TP mode
            same = tp_group.ranks == world_group.ranks
            tp_group.one_shot = world_group.one_shot if same else OneShotAllReduce(tp_group.handle, dtype, dev)
    return ParallelState(rank, parallel, tp_group, make(sp_ranks, handles), world_group, cpu_group)


def check_can_join(world_size: int) -> None:
    """Refuses a multi-rank engine, before any worker starts, in a process whose process group is taken: torch has
    one default group per process, and a second init would fail and break the running engine's groups."""
    if world_size == 1 or not dist.is_initialized():
        return
    n = dist.get_world_size()
    if _our_group == "open":
        message = f"another LLM with {n} ranks is running in this process; call its shutdown() first"
    elif _our_group == "closing":
        message = "the process group of an earlier LLM did not close; start this LLM in a new process"
    else:
        message = f"this process is already in a torch.distributed group of {n} ranks; start this LLM in a new process"
    raise ConfigError(message + " (torch allows one process group per process)")


def destroy_parallel_state(state: ParallelState | None) -> None:
    """Leaves the process group `state` joined: none for one rank, whose engine must not close the group of a
    multi-rank engine running beside it in this process."""
    global _our_group
    if state is None or state.parallel.world_size == 1 or not dist.is_initialized():
        return
    _our_group = "closing"  # NOTE: stays so where the destroy hangs (a dead rank): no new engine may join
    dist.destroy_process_group()
    _our_group = None

"""`LLM`: the offline API in vLLM's shape, `LLM(model=...).generate(prompts, SamplingParams(...))`."""

from __future__ import annotations

import atexit
import weakref
from collections.abc import Sequence as Seq

from shifttune.config import ConfigError, EngineConfig
from shifttune.engine.llm_engine import LLMEngine
from shifttune.engine.sampling_params import SamplingParams
from shifttune.engine.sequence import RequestOutput


class LLM:
    """Shift-parallel LLM over SP x TP ranks. Under torchrun, ranks > 0 never return from here: they
    serve rank 0 and exit when it shuts down."""

    def __init__(
        self,
        model: str = "tiny",
        tensor_parallel_size: int = 1,
        sequence_parallel_size: int = 1,
        shift_threshold: int = 256,
        shift_policy: str = "threshold",
        device: str = "cpu",
        dtype: str = "auto",
        load_format: str = "auto",
        **kwargs,
    ):
        config = EngineConfig(
            model=model,
            tensor_parallel_size=tensor_parallel_size,
            sequence_parallel_size=sequence_parallel_size,
            shift_threshold=shift_threshold,
            shift_policy=shift_policy,
            device=device,
            dtype=dtype,
            load_format=load_format,
            **kwargs,
        )
        self.llm_engine = LLMEngine(config)
        # a weak reference, so that an LLM nobody holds can be freed (and its GPU memory with it)
        atexit.register(_shutdown_if_alive, weakref.ref(self))

    def generate(
        self,
        prompts: str | list[int] | Seq[str] | Seq[list[int]],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Runs every prompt to completion; outputs come back in the prompts' order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = (
            sampling_params
            if isinstance(sampling_params, Seq)
            else [sampling_params or SamplingParams()] * len(prompts)
        )
        if len(params) != len(prompts):
            raise ConfigError(f"{len(prompts)} prompts but {len(params)} sampling params")
        engine = self.llm_engine
        ids: list[str] = []
        try:
            for p, sp in zip(prompts, params):
                ids.append(engine.add_request(None, p, sp))
        except BaseException:  # one bad prompt: none of this batch stays queued
            for rid in ids:
                engine.abort_request(rid)
            raise
        done: dict[str, RequestOutput] = {}
        progress = None
        if use_tqdm:
            from rich.progress import Progress

            progress = Progress(transient=True)
            task = progress.add_task("generating", total=len(ids))
            progress.start()
        try:
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if out.finished:
                        done[out.request_id] = out
                        if progress is not None:
                            progress.advance(task)
        except BaseException:
            for rid in ids:
                engine.abort_request(rid)
            raise
        finally:
            if progress is not None:
                progress.stop()
        return [done[rid] for rid in ids]

    def shutdown(self) -> None:
        self.llm_engine.shutdown()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def _shutdown_if_alive(ref: weakref.ref) -> None:
    llm = ref()
    if llm is not None:
        llm.shutdown()

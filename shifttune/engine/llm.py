"""`LLM`: the offline API in vLLM's shape, `LLM(model=...).generate(prompts, SamplingParams(...))` and
`.chat(messages)`; prompts as text, token ids, or vLLM's {"prompt": ...} / {"prompt_token_ids": [...]} dicts."""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Iterable
from collections.abc import Sequence as Seq

from shifttune.config import ConfigError, EngineConfig
from shifttune.engine.input_processor import chat_prompt
from shifttune.engine.llm_engine import LLMEngine
from shifttune.engine.sampling_params import CUMULATIVE, DELTA, SamplingParams
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
        device: str = "auto",
        dtype: str = "auto",
        load_format: str = "auto",
        **kwargs,
    ):
        """`device`: "cuda" (one GPU per rank), "cpu" (gloo ranks) or "auto" (cuda where a GPU is visible, as vLLM
        runs); `kwargs`: the other EngineConfig fields, and vLLM's arguments at values that change nothing here."""
        kwargs = _engine_kwargs(model, kwargs)
        if device == "auto":
            import torch  # NOTE: lazy, as everywhere in the API's import path

            device = "cuda" if torch.cuda.is_available() else "cpu"
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
        self._closed = False
        # NOTE: an LLM nobody holds any more (`llm = LLM(...)` run again in a notebook) shuts its engine down as it is
        # freed, as at exit: its ranks and GPU memory would otherwise stay taken with nothing left to release them
        self._finalizer = weakref.finalize(self, self.llm_engine.shutdown)

    def get_tokenizer(self):
        """The model's HF tokenizer (None for a model without one)."""
        return self.llm_engine.tokenizer

    def chat(
        self,
        messages: list[dict] | Seq[list[dict]],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        use_tqdm: bool = False,
        *,
        add_generation_prompt: bool = True,
        chat_template_kwargs: dict | None = None,
    ) -> list[RequestOutput]:
        """One conversation ({"role", "content"} dicts; content text or OpenAI's text parts) or a list of them,
        through the model's chat template; `chat_template_kwargs`: more template variables (Qwen3's enable_thinking).
        Each output's `prompt` is the conversation as the template wrote it."""
        tok = self.get_tokenizer()
        rendered = [chat_prompt(tok, c, add_generation_prompt, chat_template_kwargs) for c in _conversations(messages)]
        outs = self.generate([ids for _, ids in rendered], sampling_params, use_tqdm)
        for out, (text, _) in zip(outs, rendered):
            out.prompt = text
        return outs

    def generate(
        self,
        prompts: str | list[int] | dict | Seq[str] | Seq[list[int]] | Seq[dict],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Runs every prompt to completion; outputs come back in the prompts' order, each with the whole completion
        (as vLLM's `LLM`, whatever `output_kind` says)."""
        if self._closed:
            raise RuntimeError("this LLM has been shut down; create a new one")
        prompts = [_prompt(p) for p in _prompt_list(prompts)]
        params = (
            sampling_params
            if isinstance(sampling_params, Seq)
            else [sampling_params or SamplingParams()] * len(prompts)
        )
        if len(params) != len(prompts):
            raise ConfigError(f"{len(prompts)} prompts but {len(params)} sampling params")
        # NOTE: only each request's last output is kept here, so it must hold everything
        params = [dataclasses.replace(p, output_kind=CUMULATIVE) if getattr(p, "output_kind", None) == DELTA else p
                  for p in params]  # fmt: skip
        engine = self.llm_engine
        ids: list[str] = []
        try:
            for i, (p, sp) in enumerate(zip(prompts, params)):
                try:
                    ids.append(engine.add_request(None, p, sp))
                except ConfigError as e:
                    if len(prompts) > 1 and e.field == "prompt":  # which of them
                        e.field = f"prompts[{i}]"
                    raise
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
        outs = [done[rid] for rid in ids]
        _decode_logprobs(self.get_tokenizer(), outs)
        return outs

    def shutdown(self) -> None:
        self._closed = True
        self._finalizer()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


# vLLM's LLM arguments this engine has no use for -> the values accepted (they change nothing here); any other value
# is refused. NOTE: trust_remote_code either way: no model code is ever loaded from a checkpoint.
VLLM_NEUTRAL_ARGS = {"trust_remote_code": (True, False), "tokenizer_mode": ("auto",), "revision": (None,),
                     "tokenizer_revision": (None,), "quantization": (None,), "disable_log_stats": (True, False),
                     "enable_chunked_prefill": (None, True)}  # fmt: skip


def _engine_kwargs(model, kwargs: dict) -> dict:
    """`LLM`'s extra keyword arguments checked: EngineConfig's fields pass; vLLM's `tokenizer` only as the model's
    own; VLLM_NEUTRAL_ARGS at their neutral values are dropped; anything else is a ConfigError naming it."""
    fields = {f.name for f in dataclasses.fields(EngineConfig) if f.init}
    out = {}
    for name, value in kwargs.items():
        if name in fields:
            out[name] = value
        elif name == "tokenizer":
            if value is not None and str(value) != str(model):
                raise ConfigError("a tokenizer apart from the model's is not supported: the model directory's own "
                                  "tokenizer is used", field="tokenizer")  # fmt: skip
        elif name in VLLM_NEUTRAL_ARGS:
            if value not in VLLM_NEUTRAL_ARGS[name]:
                allowed = " or ".join(map(repr, VLLM_NEUTRAL_ARGS[name]))
                raise ConfigError(f"is not supported by this engine: only {allowed}, got {value!r}", field=name)
        else:
            raise ConfigError("is not an argument of LLM (nor an engine setting: see shifttune.config.EngineConfig)",
                              field=name)  # fmt: skip
    return out


def _decode_logprobs(tokenizer, outs: list[RequestOutput]) -> None:
    """Each logprob's `decoded_token` (vLLM's): its token's own text."""
    if tokenizer is None:
        return
    texts: dict[int, str] = {}
    for out in outs:
        for completion in out.outputs:
            for entry in completion.logprobs or ():
                for token, lp in entry.items():
                    if token not in texts:
                        texts[token] = tokenizer.decode([token])
                    lp.decoded_token = texts[token]


def _prompt_list(prompts) -> list:
    """`generate`'s prompts as a list: one prompt (text, token ids, a prompt dict) or an iterable of them."""
    if isinstance(prompts, (str, dict)):
        return [prompts]
    if not isinstance(prompts, Iterable) or isinstance(prompts, (bytes, bytearray)):
        raise ConfigError(
            'must be a string, a list of token ids, a {"prompt": ...} or {"prompt_token_ids": [...]} dict, '
            f"or a list of these; got {type(prompts).__name__}",
            field="prompts",
        )
    prompts = list(prompts)
    return [prompts] if prompts and isinstance(prompts[0], int) else prompts


def _conversations(messages) -> list[list[dict]]:
    """`chat`'s messages as a list of conversations: one conversation (a list of message dicts) or a list of them."""

    def is_conversation(c) -> bool:
        return isinstance(c, (list, tuple)) and bool(c) and all(isinstance(m, dict) for m in c)

    if is_conversation(messages):
        return [list(messages)]
    if isinstance(messages, (list, tuple)) and messages and all(is_conversation(c) for c in messages):
        return [list(c) for c in messages]
    raise ConfigError(
        'must be a conversation (a non-empty list of {"role": ..., "content": ...} dicts) or a list of them; '
        f"got {type(messages).__name__}" + (" (empty)" if isinstance(messages, (list, tuple)) and not messages else ""),
        field="messages",
    )


def _prompt(prompt):
    """vLLM's prompt dicts as text or token ids; other prompts as they are (the input processor checks them)."""
    if not isinstance(prompt, dict):
        return prompt
    if "prompt_token_ids" in prompt:
        return prompt["prompt_token_ids"]
    if "prompt" in prompt:
        return prompt["prompt"]
    raise ConfigError(f'a prompt dict needs "prompt" or "prompt_token_ids", got keys {sorted(prompt)}', "prompt")

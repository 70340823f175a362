"""Log-probabilities in the OpenAI formats: completions (token strings, their logprobs, the top ones,
text offsets) and chat (a list of tokens, each with its top alternatives and UTF-8 bytes)."""

from __future__ import annotations

from shifttune.server.protocol import ChatLogprobs, CompletionLogprobs, TokenLogprob, TopLogprob


def token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id]) if tokenizer is not None else str(token_id)


def completion_logprobs(tokenizer, ids: list[int], logprobs: list[dict], offsets: list[int]) -> CompletionLogprobs:
    """`offsets`: where each token starts in the returned text (the text returned before it, so a special token
    that adds no text does not move the next one)."""
    out = CompletionLogprobs(text_offset=list(offsets))
    for tid, lps in zip(ids, logprobs):
        out.tokens.append(token_text(tokenizer, tid))
        out.token_logprobs.append(lps[tid])
        top: dict[str, float] = {}
        for t, lp in sorted(lps.items(), key=lambda kv: -kv[1]):  # best first, as chat's and OpenAI's
            # NOTE: tokens that decode to the same text (byte pieces: "\ufffd") share a key: the likeliest keeps it
            top.setdefault(token_text(tokenizer, t), lp)
        out.top_logprobs.append(top)
    return out


def _top(tokenizer, token_id: int, logprob: float) -> TopLogprob:
    text = token_text(tokenizer, token_id)
    return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode()))


def chat_logprobs(tokenizer, ids: list[int], logprobs: list[dict], top: int) -> ChatLogprobs:
    content = []
    for tid, lps in zip(ids, logprobs):
        ranked = sorted(lps.items(), key=lambda kv: -kv[1])[:top]
        alternatives = [_top(tokenizer, t, lp) for t, lp in ranked]
        content.append(TokenLogprob(**_top(tokenizer, tid, lps[tid]).model_dump(), top_logprobs=alternatives))
    return ChatLogprobs(content=content)

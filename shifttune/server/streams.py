"""Async-iterator plumbing for responses: tag a request's outputs with its choice, interleave several."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator


async def tagged(choice, gen: AsyncIterator):
    async for out in gen:
        yield choice, out


async def merge(gens: list[AsyncIterator]):
    """Items of several async iterators as they come (for a batch of prompts in one request)."""
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(gen) -> None:
        try:
            async for item in gen:
                await queue.put(item)
            await queue.put(done)
        except BaseException as e:
            await queue.put(e)

    tasks = [asyncio.create_task(pump(g)) for g in gens]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:  # a client gone or a choice failed: the others are aborted too
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

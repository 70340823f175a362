"""Predicted step time of one mode from a profile: interpolation over tokens per step and context.

Between measured token counts the time is interpolated linearly in tokens (a step's time is close to
affine in its tokens there: the weights read once, then work per token; e.g. a 1280-token CUDA graph between
the 1024- and 2048-token points); past the largest it grows in proportion to tokens (large steps are
compute-bound); below the smallest it is flat.
Between measured contexts it is interpolated linearly in context, and held at the ends.
"""

from __future__ import annotations

import bisect
import math

from shifttune.config import TP
from shifttune.engine.profile_schema import Profile, ProfileError


class StepTimeModel:
    def __init__(self, profile: Profile, mode: str, tp: int, sp: int):
        if mode == TP:
            tp, sp = profile.world_size, 1
        self.mode, self.tp, self.sp = mode, tp, sp
        self.curves: dict[int, tuple[list[int], list[float]]] = {}
        for context in sorted({p.context for p in profile.points}):
            pts = profile.curve(mode, tp, sp, context)
            if pts:
                self.curves[context] = ([p.tokens for p in pts], [p.median_ms for p in pts])
        if not self.curves:
            raise ProfileError(f"the profile has no {mode}-mode points for TP={tp} SP={sp}")
        self.contexts = sorted(self.curves)

    def _at_context(self, context: int, tokens: float) -> float:
        xs, ys = self.curves[context]
        if tokens >= xs[-1]:
            return ys[-1] * tokens / xs[-1]
        if tokens <= xs[0]:
            return ys[0]
        i = bisect.bisect_right(xs, tokens)
        w = (tokens - xs[i - 1]) / (xs[i] - xs[i - 1])
        return ys[i - 1] + w * (ys[i] - ys[i - 1])

    def predict(self, tokens: float, context: float) -> float:
        """Milliseconds for a step of `tokens` tokens whose sequences hold about `context` tokens."""
        cs = self.contexts
        if context <= cs[0]:
            return self._at_context(cs[0], tokens)
        if context >= cs[-1]:
            return self._at_context(cs[-1], tokens)
        i = bisect.bisect_right(cs, context)
        w = (context - cs[i - 1]) / (cs[i] - cs[i - 1])
        return (1 - w) * self._at_context(cs[i - 1], tokens) + w * self._at_context(cs[i], tokens)


def crossover(tp_model: StepTimeModel, sp_model: StepTimeModel, context: int, max_tokens: int) -> float | None:
    """The largest token count at which TP mode is still at least as fast as SP x TP mode, at `context`:
    steps above it should run SP x TP. 0 if SP x TP wins everywhere; None if it never does (up to
    `max_tokens`)."""
    grid = sorted({2 ** (k / 8) for k in range(0, 8 * int(math.log2(max_tokens)) + 1)} | {float(max_tokens)})
    faster = [sp_model.predict(t, context) < tp_model.predict(t, context) for t in grid]
    if not faster[-1]:
        return None
    if all(faster):
        return 0.0
    last_tp = max(i for i, f in enumerate(faster) if not f)
    # refine between the last TP-faster grid point and the next by the difference's sign change
    a, b = grid[last_tp], grid[last_tp + 1]
    da = tp_model.predict(a, context) - sp_model.predict(a, context)
    db = tp_model.predict(b, context) - sp_model.predict(b, context)
    return a + (b - a) * (0 - da) / (db - da) if db != da else a

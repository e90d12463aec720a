"""The main demo: a small measurement pipeline as a journaled graph_fn.

Run it (the embedded nats-server starts by itself):

    aethergraph run examples/demo.py:analyze_signal --input n=200 --events

Every tool call below is a step journaled on NATS JetStream
(``ag.evt.<run_id>.tool.called`` / ``.tool.returned``); the printed event table
is read back from the stream.
"""

from __future__ import annotations

import math
import random

from aethergraph import NodeContext, graph_fn, tool


@tool(name="simulate", outputs=["t", "y"])
def simulate(n: int, slope: float, noise: float, seed: int) -> dict[str, list[float]]:
    """A noisy linear response sampled at n points (deterministic for a seed)."""
    rng = random.Random(seed)
    t = [i / max(n - 1, 1) for i in range(n)]
    y = [slope * ti + 0.5 + rng.gauss(0.0, noise) for ti in t]
    return {"t": t, "y": y}


@tool(name="fit_line", outputs=["slope", "intercept", "rmse"])
def fit_line(t: list[float], y: list[float]) -> dict[str, float]:
    """Least-squares line through the samples."""
    n = len(t)
    mean_t, mean_y = sum(t) / n, sum(y) / n
    cov = sum((a - mean_t) * (b - mean_y) for a, b in zip(t, y, strict=True))
    var = sum((a - mean_t) ** 2 for a in t)
    slope = cov / var
    intercept = mean_y - slope * mean_t
    rmse = math.sqrt(sum((b - (slope * a + intercept)) ** 2 for a, b in zip(t, y, strict=True)) / n)
    return {"slope": slope, "intercept": intercept, "rmse": rmse}


@tool(name="judge", outputs=["verdict"])
async def judge(slope: float, expected: float, tolerance: float, *, context: NodeContext) -> dict[str, str]:
    """Compare the fitted slope with the expected one."""
    error = abs(slope - expected)
    context.logger().info("slope error %.4f (tolerance %.4f)", error, tolerance)
    return {"verdict": "pass" if error <= tolerance else "fail"}


@graph_fn(name="analyze_signal", outputs=["slope", "rmse", "verdict"])
async def analyze_signal(n: int = 200, slope: float = 2.0, seed: int = 7, *, context: NodeContext) -> dict[str, object]:
    context.logger().info("simulating %d samples", n)
    data = await simulate(n=n, slope=slope, noise=0.05, seed=seed)
    fit = await fit_line(t=data["t"], y=data["y"])
    result = await judge(slope=fit["slope"], expected=slope, tolerance=0.05)
    return {"slope": round(fit["slope"], 4), "rmse": round(fit["rmse"], 4), "verdict": result["verdict"]}


if __name__ == "__main__":
    import aethergraph

    print(aethergraph.run(analyze_signal, {"n": 200}))

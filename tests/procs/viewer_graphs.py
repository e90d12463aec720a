"""Graphs for tests/test_viewer_browser.py and benchmarks/bench_viewer.py, served by ``aethergraph dev``.

``viewer_review`` says something on the web channel, saves a PNG, and waits on the web channel for a
review whose payload must match ``REVIEW_SCHEMA`` (every kind of field the generated form supports);
``viewer_approval`` asks for an approval on the web channel; ``viewer_failing`` fails in a tool;
``viewer_nested`` calls ``viewer_approval`` (a nested run that waits);
``viewer_static`` is a static graph whose second node fails until the file ``flag`` exists;
``viewer_busy`` journals ``n`` log lines and ``n`` tool calls (2n+2 events and more);
``viewer_agent`` plots a loss track with ``context.viz()``, waits for a go on the web channel, then streams a
model's answer (the default profile).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

from aethergraph import NodeContext, Wait, graph_fn, graphify, tool

REVIEW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["title", "score", "tone", "reviewer"],
    "properties": {
        "title": {"type": "string", "title": "Title", "minLength": 1},
        "score": {"type": "integer", "minimum": 1, "maximum": 5, "description": "1 (poor) to 5 (great)"},
        "ratio": {"type": "number"},
        "urgent": {"type": "boolean"},
        "tone": {"enum": ["formal", "casual"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "reviewer": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "email": {"type": "string"}},
        },
    },
}


def _png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A one-colour PNG, made here so the test ships no binary file."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


PNG = _png(48, 32, (220, 60, 60))


@tool(name="viewer_prepare", outputs=["draft"])
def viewer_prepare(topic: str) -> dict[str, Any]:
    return {"draft": f"a draft about {topic}"}


@tool(name="viewer_publish", outputs=["published"])
def viewer_publish(draft: str, title: str, score: int) -> dict[str, Any]:
    return {"published": f"{title} ({score}/5): {draft}"}


@tool(name="viewer_explode", outputs=["v"])
def viewer_explode(x: int) -> dict[str, Any]:
    raise ValueError(f"viewer_explode refuses {x}")


@tool(name="viewer_step", outputs=["v"])
def viewer_step(i: int) -> dict[str, Any]:
    return {"v": i * 2}


@graph_fn(name="viewer_review", outputs=["published", "review"])
async def viewer_review(topic: str, *, context: NodeContext) -> dict[str, Any]:
    prepared = await viewer_prepare(topic=topic)
    web = context.channel("web")
    await web.send_text(f"drafted {topic}: please review")
    await context.artifacts().save_bytes(PNG, kind="chart", name="chart.png", mime="image/png")
    review = await context.wait(Wait(kind="review", prompt=f"review {topic}", schema=REVIEW_SCHEMA, channel="web"))
    done = await viewer_publish(draft=prepared["draft"], title=review["title"], score=review["score"])
    await web.send_text(f"published {review['title']}")
    return {"published": done["published"], "review": review}


@graph_fn(name="viewer_approval", outputs=["decision"])
async def viewer_approval(what: str, *, context: NodeContext) -> dict[str, Any]:
    decision = await context.channel("web").ask_approval(f"ship {what}?", options=("Ship", "Hold"))
    return {"decision": decision}


@graph_fn(name="viewer_failing", outputs=["v"])
async def viewer_failing(x: int, *, context: NodeContext) -> dict[str, Any]:
    return {"v": (await viewer_explode(x))["v"]}


@graph_fn(name="viewer_busy", outputs=["count"])
async def viewer_busy(n: int, *, context: NodeContext) -> dict[str, Any]:
    for index in range(n):
        context.logger().info(f"line {index}")
        await viewer_step(index)
    return {"count": n}


@tool(name="viewer_flaky", outputs=["v"])
def viewer_flaky(x: int, flag: str) -> dict[str, Any]:
    if not Path(flag).exists():
        raise RuntimeError(f"{flag} is missing")
    return {"v": x + 1}


@graphify(name="viewer_static", inputs=["x", "flag"], outputs=["y"])
def viewer_static(x: Any, flag: Any) -> dict[str, Any]:
    first = viewer_step(i=x)
    second = viewer_flaky(x=first.v, flag=flag)
    return {"y": second.v}


@graph_fn(name="viewer_nested", outputs=["decision"])
async def viewer_nested(what: str, *, context: NodeContext) -> dict[str, Any]:
    inner = await viewer_approval(what=what)
    return {"decision": inner["decision"]}


@graph_fn(name="viewer_agent", outputs=["answer"])
async def viewer_agent(steps: int, *, context: NodeContext) -> dict[str, Any]:
    for step in range(steps):
        await context.viz().scalar("loss", step=step, value=1.0 / (step + 1))
    await context.channel("web").ask_approval("summarise now?")
    answer, _ = await context.llm().chat_stream("summarise the training")
    return {"answer": answer}

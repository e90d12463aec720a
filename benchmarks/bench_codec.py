"""5. Codec: encoding and decoding one ``tool.called`` event, and normalising a step's values."""

from __future__ import annotations

import time

from aethergraph.core.wire.codec import decode_event, encode_event, normalise_value

from .harness import BenchContext, Figure, value_figure
from .workload import tool_called

NAME = "codec"
TITLE = "5. Codec"


def _per_op_us(fn: object, loops: int) -> float:
    call = fn  # a local for the loop
    started = time.perf_counter()
    for _ in range(loops):
        call()  # type: ignore[operator]
    return (time.perf_counter() - started) / loops * 1e6


def run(ctx: BenchContext) -> tuple[list[Figure], list[str]]:
    repeats = ctx.pick(9, 3)
    loops = ctx.pick(100_000, 20_000)
    event = tool_called("0mbench00000000000000", 7)
    data = encode_event(event)
    if decode_event(data) != event:
        raise RuntimeError("codec round trip changed the event")

    def both() -> None:
        decode_event(encode_event(event))

    def encode() -> None:
        encode_event(event)

    def decode() -> None:
        decode_event(data)

    # A tool's arguments or outputs as a step journals them (normalise_value runs twice per step).
    values = {"x": 21, "name": "sample-7", "weights": [0.5, 1.5, 2.5], "options": {"mode": "fast", "retries": 2}}

    def normalise() -> None:
        normalise_value(values, what="tool 'bench'")

    def normalise_lax() -> None:
        normalise_value(values, what="tool 'bench'", strict=False)

    cases = {
        "roundtrip": both,
        "encode": encode,
        "decode": decode,
        "normalise": normalise,
        "normalise_lax": normalise_lax,
    }
    labels = {
        "roundtrip": "encode + decode one `tool.called`",
        "encode": "encode only (`encode_event`)",
        "decode": "decode only (`decode_event`, tagged union)",
        "normalise": "normalise a step's values (`normalise_value`, refusing datetimes, sets, ...)",
        "normalise_lax": "the same without the check for lossy types (`strict=False`)",
    }
    results: dict[str, list[float]] = {name: [] for name in cases}
    ctx.say(f"{repeats} repeats of {loops:,} loops each")
    for fn in cases.values():
        _per_op_us(fn, loops // 10)
    for _ in range(repeats):
        for name, fn in cases.items():
            results[name].append(_per_op_us(fn, loops))
    figures = [
        value_figure(
            NAME,
            name,
            labels[name],
            values,
            unit="µs",
            per_repeat_n=loops,
            better="lower",
            sync_interval=None,
            note=f"{len(data)} bytes" if name == "roundtrip" else "4 keys, 8 values" if name == "normalise" else "",
        )
        for name, values in results.items()
    ]
    return figures, ["Mean per operation over a tight loop (includes the Python call overhead of the loop)."]

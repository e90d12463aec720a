"""Messages for JetStream's refusals of a publish, shared by the bus modules that publish to streams.

A publish that no stream takes comes back with status 503 ("no responders") in two
situations that the client cannot tell apart: the stream does not exist, or it exists
but none of its replicas can take the message now (a cluster re-electing the stream's
leader, too few of its nodes up, or the only node of an R1 stream down). The message
names both, so nobody recreates a stream that is merely leaderless.
"""

from __future__ import annotations

__all__ = ["no_stream_answer_message"]


def no_stream_answer_message(stream: str, status: str | None, *, server: str | None = None) -> str:
    """What to tell the user when a publish to ``stream`` was answered with ``status`` instead of an ack."""
    where = f" at {server}" if server else ""
    if status == "503":
        return (
            f"no JetStream server{where} took the message for stream {stream} (status 503, no responders): "
            f"either {stream} does not exist (connecting through aethergraph creates it) or none of its "
            "replicas can accept writes right now: on a cluster its leader is being re-elected or too few of "
            "its nodes are up; with AETHERGRAPH_STREAM_REPLICAS=1 the one node holding it is down. Check "
            f"`nats stream info {stream}` (its cluster leader and replicas) before recreating anything"
        )
    return (
        f"JetStream{where} answered a publish to stream {stream} with status {status or 'unknown'} "
        "instead of an acknowledgement; see the server's log"
    )

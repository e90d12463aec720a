"""Channels: how a run talks to people. Every message and every answer is journaled.

``context.channel()`` is the console channel: messages print to standard
output and, where the process may read answers (a terminal, or the
``console_input`` setting), questions are answered inline (a cooperative
wait). Anywhere else, and on a named channel (``context.channel("slack:#ops")``),
a question is a durable wait: the run suspends until someone publishes a resume
command for it. Adapters deliver named channels' messages by subscribing to
``ag.evt.*.channel.sent`` and ``ag.evt.*.wait.requested``.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from aethergraph.core.context.waits import InlineAnswer, Wait, wait_for
from aethergraph.core.errors import ResumeRejectedError
from aethergraph.core.journal.scope import RunScope
from aethergraph.core.journal.step import StepKey, append_opening, replayed_opening
from aethergraph.core.wire.events import ChannelSent, WaitRequested

__all__ = ["Channel", "approval_schema"]

CONSOLE = "console"


def approval_schema(options: Sequence[str]) -> dict[str, Any]:
    """The payload of an approval: ``{"approved": bool}`` and/or ``{"choice": <one of options>}``."""
    return {
        "type": "object",
        "properties": {"approved": {"type": "boolean"}, "choice": {"enum": list(options)}},
        "anyOf": [{"required": ["approved"]}, {"required": ["choice"]}],
    }


_TEXT_SCHEMA: dict[str, Any] = {"type": "string"}
_FILES_SCHEMA: dict[str, Any] = {"type": "array", "items": {"type": "string"}}


def _settle(answer: asyncio.Future[str], line: str | None, error: BaseException | None) -> None:
    if answer.done():
        return
    if error is not None:
        answer.set_exception(error)
    else:
        answer.set_result(line or "")


async def _read_line(prompt: str) -> str:
    """One line from standard input without blocking the event loop (or interpreter exit)."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()

    def read() -> None:
        try:
            line = sys.stdin.readline()
        except Exception as exc:  # noqa: BLE001 - handed to the waiting coroutine
            loop.call_soon_threadsafe(_settle, answer, None, exc)
            return
        loop.call_soon_threadsafe(_settle, answer, line, None)

    print(prompt, end=" ", flush=True)
    threading.Thread(target=read, name="aethergraph-console-input", daemon=True).start()
    line = await answer
    if not line:
        raise EOFError("standard input closed before an answer was given")
    return line.rstrip("\r\n")


class Channel:
    """A named channel bound to one node of a run."""

    __slots__ = ("_node_id", "_scope", "name")

    def __init__(self, scope: RunScope, node_id: str, name: str = CONSOLE) -> None:
        self._scope = scope
        self._node_id = node_id
        self.name = name

    def _inline(self, read: InlineAnswer) -> InlineAnswer | None:
        return read if self.name == CONSOLE else None

    async def send_text(self, text: str) -> None:
        """Send a message (printed on the console); journaled, and not sent again on replay."""
        text = str(text)
        key = StepKey(
            ChannelSent,
            self._node_id,
            f"a message on channel {self.name!r} (node {self._node_id})",
            names={"channel": self.name},
        )
        if replayed_opening(self._scope, key) is not None:
            return
        _, committed = append_opening(self._scope, key, text=text)
        if self.name == CONSOLE:
            print(text, flush=True)
        await committed

    async def ask_text(self, prompt: str, *, deadline: Any = None) -> str:
        """Ask a question and return the answer text."""

        async def read(_: WaitRequested) -> str:
            return await _read_line(prompt)

        wait = Wait(kind="text", prompt=prompt, schema=_TEXT_SCHEMA, deadline=deadline, channel=self.name)
        return str(await wait_for(self._scope, self._node_id, wait, inline=self._inline(read)))

    async def ask_approval(
        self, prompt: str, options: Sequence[str] = ("Approve", "Reject"), *, deadline: Any = None
    ) -> dict[str, Any]:
        """Ask for a decision: returns ``{"approved": bool, "choice": str}``.

        The first option means approval. A resume payload may give
        ``approved``, ``choice`` or both.
        """
        choices = [str(option) for option in options]
        if not choices:
            raise ValueError("ask_approval needs at least one option, e.g. options=('Approve', 'Reject')")

        async def read(requested: WaitRequested) -> dict[str, Any]:
            listing = " / ".join(f"[{i}] {choice}" for i, choice in enumerate(choices, 1))
            while True:
                line = (await _read_line(f"{prompt} {listing}")).strip()
                if line.isdigit() and 1 <= int(line) <= len(choices):
                    return {"choice": choices[int(line) - 1]}
                matches = [choice for choice in choices if choice.lower() == line.lower()]
                if matches:
                    return {"choice": matches[0]}
                print(f"answer with a number 1-{len(choices)} or one of {choices}", flush=True)

        wait = Wait(
            kind="approval", prompt=prompt, schema=approval_schema(choices), deadline=deadline, channel=self.name
        )
        payload = await wait_for(self._scope, self._node_id, wait, inline=self._inline(read))
        return _approval_result(payload, choices)

    async def ask_files(self, prompt: str, *, deadline: Any = None) -> list[str]:
        """Ask for files: returns the paths or artifact URIs given (comma-separated on the console)."""

        async def read(_: WaitRequested) -> list[str]:
            line = await _read_line(f"{prompt} (paths, comma-separated)")
            return [part.strip() for part in line.split(",") if part.strip()]

        wait = Wait(kind="files", prompt=prompt, schema=_FILES_SCHEMA, deadline=deadline, channel=self.name)
        payload = await wait_for(self._scope, self._node_id, wait, inline=self._inline(read))
        return [str(item) for item in payload]

    def __repr__(self) -> str:
        return f"Channel({self.name!r}, run_id={self._scope.run_id!r}, node_id={self._node_id!r})"


def _approval_result(payload: Any, choices: Sequence[str]) -> dict[str, Any]:
    if not isinstance(payload, Mapping):
        raise ResumeRejectedError(
            f"an approval answer must be an object like {{'approved': true}}, got {payload!r}",
            run_id=None,
            reason="invalid_payload",
        )
    choice = payload.get("choice")
    approved = payload.get("approved")
    if choice is None:
        choice = choices[0] if approved else choices[-1]
    if approved is None:
        approved = choice == choices[0]
    return {"approved": bool(approved), "choice": str(choice)}

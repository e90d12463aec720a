"""``DualStageTool``: a tool split into ``setup`` and ``on_resume`` around a durable wait.

``setup`` runs once, starts the external work (submit a job, send a request
for review) and returns the :class:`~aethergraph.Wait` to wait on. The run
then releases its worker entirely. When a resume command answers the wait,
the run is replayed to this step and ``on_resume(resume, ...)`` runs with the
payload and the same arguments; ``setup`` is not run again.

.. code-block:: python

    class ReviewDraft(DualStageTool):
        name = "review_draft"
        outputs = ["approved", "notes"]

        async def setup(self, draft: str, *, context) -> Wait:
            ticket = await open_review_ticket(draft, key=context.idempotency_key())
            return Wait(kind="review", prompt=f"review ticket {ticket}",
                        schema={"type": "object", "required": ["approved"]})

        async def on_resume(self, resume, draft: str, *, context):
            return {"approved": resume["approved"], "notes": resume.get("notes", "")}

    review_draft = ReviewDraft()
    # inside a graph_fn:  result = await review_draft(draft=text)
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from aethergraph.core.api.callables import Tool
from aethergraph.core.context.node_context import NodeContext
from aethergraph.core.context.waits import Wait, wait_for
from aethergraph.core.errors import DecorationError, NotInRunError
from aethergraph.core.journal.scope import current_scope
from aethergraph.core.model.spec import build_spec

__all__ = ["DualStageTool"]

# The keys of a wait dict returned by setup (the original AetherGraph's WaitSpec).
_WAIT_KEYS = frozenset({"kind", "prompt", "resume_schema", "channel", "deadline"})


class DualStageTool(Tool):
    """Subclass it, define ``setup`` and ``on_resume``, and call an instance like a tool inside a run.

    ``name`` (default: the class name in snake case) and ``outputs`` are class
    attributes, or given as ``@tool(name=..., outputs=[...])`` on the class
    (which then names the tool instance). ``setup`` and ``on_resume`` must be
    ``async def``; the tool takes ``setup``'s parameters, and ``on_resume``
    takes ``resume`` (the payload) first, then those of the call's arguments
    it names (all of them with ``**kwargs``); ``context`` is optional in both.
    ``setup`` returns a :class:`~aethergraph.Wait`, ``None`` (a wait of kind
    ``name``), or a dict with ``kind``, ``prompt``, ``resume_schema`` (the
    payload's JSON Schema) and optionally ``channel`` and ``deadline``.
    """

    name: ClassVar[str | None] = None  # type: ignore[assignment]
    outputs: ClassVar[Sequence[str] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        where = f"DualStageTool subclass {cls.__qualname__}"
        for method in ("setup", "on_resume"):
            fn = cls.__dict__.get(method) or getattr(cls, method, None)
            if fn is None or fn is getattr(DualStageTool, method, None):
                raise DecorationError(f"{where} must define `async def {method}(self, ...)`")
            if not inspect.iscoroutinefunction(fn):
                raise DecorationError(f"{where}: {method} must be `async def`")
        resume_params = list(inspect.signature(cls.on_resume).parameters)
        if len(resume_params) < 2 or resume_params[1] != "resume":
            raise DecorationError(
                f"{where}: on_resume must take the payload first: `async def on_resume(self, resume, ...)`"
            )

    async def setup(self, *args: Any, **kwargs: Any) -> Wait | Mapping[str, Any] | None:
        raise NotImplementedError

    async def on_resume(self, resume: Any, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def as_tool(cls, *, name: str | None = None, outputs: Sequence[str] | None = None) -> DualStageTool:
        """The tool of this class, with ``name`` / ``outputs`` (if given) over the class attributes.

        ``@tool(name=..., outputs=[...])`` on the class calls this.
        """
        if name is not None:
            cls.name = name
        if outputs is not None:
            cls.outputs = outputs
        try:
            return cls()
        except TypeError as exc:
            raise DecorationError(
                f"@tool on DualStageTool subclass {cls.__qualname__} creates its tool as {cls.__qualname__}(), "
                f"which failed: {exc}. Give __init__ no required arguments, or create the instance yourself"
            ) from None

    def __init__(self) -> None:
        cls = type(self)
        name = cls.name or _snake(cls.__name__)
        vars(self)["name"] = name
        setup_sig = inspect.signature(self.setup)
        self._setup_context = _context_param(setup_sig)
        self._resume_context = _context_param(inspect.signature(self.on_resume))
        params = [p for p in setup_sig.parameters.values() if p.name != self._setup_context]
        params.append(inspect.Parameter("context", inspect.Parameter.KEYWORD_ONLY, annotation=NodeContext))

        async def dual_stage_body(**kwargs: Any) -> Any:
            return await self._execute(kwargs)

        dual_stage_body.__signature__ = setup_sig.replace(parameters=params)  # type: ignore[attr-defined]
        dual_stage_body.__name__ = name
        dual_stage_body.__doc__ = cls.__doc__
        super().__init__(build_spec(dual_stage_body, kind="tool", name=name, outputs=cls.outputs))

    async def _execute(self, kwargs: dict[str, Any]) -> Any:
        context = kwargs.pop("context")
        scope = current_scope()
        if not isinstance(context, NodeContext) or scope is None:
            raise NotInRunError(f"{self!r} waits durably, so it runs only inside a run (a graph_fn)")
        replay = scope.replaying()
        recorded = replay.peek_wait(context.node_id) if replay is not None else None
        if recorded is not None:
            wait = Wait(kind=recorded.kind, prompt=recorded.prompt)
        else:
            made = await self.setup(**_with_context(kwargs, self._setup_context, context))
            if made is None:
                made = Wait(kind=self.spec.name)
            elif isinstance(made, Mapping):
                made = self._wait_from_dict(made)
            if not isinstance(made, Wait):
                raise TypeError(
                    f"{type(self).__qualname__}.setup must return a Wait, a dict with kind / prompt / "
                    f"resume_schema, or None; got {type(made).__name__}"
                )
            wait = made
        payload = await wait_for(scope, context.node_id, wait)
        return await self.on_resume(payload, **self._resume_arguments(kwargs, context))

    def _wait_from_dict(self, spec: Mapping[str, Any]) -> Wait:
        """A wait given as the original AetherGraph's dict: ``{"kind", "prompt", "resume_schema", ...}``."""
        unknown = sorted(set(spec) - _WAIT_KEYS)
        if unknown:
            raise TypeError(
                f"{type(self).__qualname__}.setup returned a wait dict with unknown keys {unknown}; "
                f"it takes {sorted(_WAIT_KEYS)} (or return aethergraph.Wait(...))"
            )
        prompt = spec.get("prompt")
        return Wait(
            kind=str(spec.get("kind") or self.spec.name),
            prompt=prompt if isinstance(prompt, str) else "" if prompt is None else json.dumps(prompt),
            schema=spec.get("resume_schema") or {},
            deadline=spec.get("deadline"),
            channel=str(spec.get("channel") or "external"),
        )

    def _resume_arguments(self, kwargs: dict[str, Any], context: NodeContext) -> dict[str, Any]:
        """The call's arguments that ``on_resume`` takes (all of them if it takes ``**kwargs``), and the context."""
        params = inspect.signature(self.on_resume).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            kwargs = {key: value for key, value in kwargs.items() if key in params}
        return _with_context(kwargs, self._resume_context, context)

    def __repr__(self) -> str:
        return f"<dual-stage tool {self.name!r} outputs={list(self.spec.outputs)}>"


def _context_param(signature: inspect.Signature) -> str | None:
    for param in signature.parameters.values():
        if param.name == "context" or getattr(param.annotation, "__name__", param.annotation) in (
            "NodeContext",
            "'NodeContext'",
        ):
            return param.name
    return None


def _with_context(kwargs: dict[str, Any], param: str | None, context: NodeContext) -> dict[str, Any]:
    return {**kwargs, param: context} if param is not None else kwargs


def _snake(name: str) -> str:
    out = []
    for i, char in enumerate(name):
        if char.isupper() and i and not name[i - 1].isupper():
            out.append("_")
        out.append(char.lower())
    return "".join(out)

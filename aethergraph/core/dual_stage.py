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
from collections.abc import Sequence
from typing import Any, ClassVar

from .context import NodeContext
from .decorators import Tool
from .errors import DecorationError, NotInRunError
from .scope import current_scope
from .spec import build_spec
from .waits import Wait, wait_for

__all__ = ["DualStageTool"]


class DualStageTool(Tool):
    """Subclass it, define ``setup`` and ``on_resume``, and call an instance like a tool inside a run.

    ``name`` (default: the class name in snake case) and ``outputs`` are class
    attributes. ``setup`` and ``on_resume`` must be ``async def`` and take the
    same parameters (``on_resume`` first takes ``resume``, the payload);
    ``context`` is optional in both.
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

    async def setup(self, *args: Any, **kwargs: Any) -> Wait | None:
        raise NotImplementedError

    async def on_resume(self, resume: Any, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

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
            if not isinstance(made, Wait):
                raise TypeError(
                    f"{type(self).__qualname__}.setup must return a Wait (or None), got {type(made).__name__}"
                )
            wait = made
        payload = await wait_for(scope, context.node_id, wait)
        return await self.on_resume(payload, **_with_context(kwargs, self._resume_context, context))

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

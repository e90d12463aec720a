"""``@tool`` and ``@graph_fn``: decoration-time validation and error messages."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from aethergraph import GraphFunction, NodeContext, Tool, graph_fn, tool
from aethergraph.core.errors import AetherGraphError, DecorationError


def test_tool_without_parentheses() -> None:
    @tool
    def double(x: int) -> dict[str, int]:
        return {"result": x * 2}

    assert isinstance(double, Tool)
    assert double.name == "double"
    assert double.spec.outputs == ()
    assert double.spec.kind == "tool"
    assert double.spec.context_param is None
    assert double.__name__ == "double"  # functools.update_wrapper
    assert double(4) == {"result": 8}


def test_tool_with_empty_parentheses() -> None:
    @tool()
    def triple(x: int) -> int:
        return x * 3

    assert isinstance(triple, Tool)
    assert triple.name == "triple"
    assert triple(2) == {"result": 6}


def test_tool_with_name_and_outputs() -> None:
    @tool(name="analyze", outputs=["val"])
    def analyze(x: int) -> dict[str, int]:
        return {"val": x * 2}

    assert analyze.name == "analyze"
    assert analyze.spec.outputs == ("val",)
    assert analyze.spec.is_async is False
    assert list(analyze.spec.signature.parameters) == ["x"]
    assert repr(analyze) == "<tool 'analyze' outputs=['val']>"


def test_async_tool_and_graph_fn_specs() -> None:
    @tool(outputs=["a", "b"])
    async def pair(x: int) -> dict[str, int]:
        return {"a": x, "b": -x}

    @graph_fn
    async def plain() -> None:
        return None

    @graph_fn(name="named-graph", outputs=["answer"])
    async def other(*, context: NodeContext) -> dict[str, int]:
        return {"answer": 42}

    assert pair.spec.is_async is True
    assert pair.spec.outputs == ("a", "b")
    assert isinstance(plain, GraphFunction)
    assert plain.name == "plain"
    assert isinstance(other, GraphFunction)
    assert other.name == "named-graph"
    assert other.spec.kind == "graph_fn"
    assert other.spec.context_param == "context"
    assert repr(other) == "<graph_fn 'named-graph' outputs=['answer']>"


def test_decoration_error_is_a_type_error_and_an_aethergraph_error() -> None:
    assert issubclass(DecorationError, TypeError)
    assert issubclass(DecorationError, AetherGraphError)


def test_graph_fn_on_sync_def_says_to_make_it_async() -> None:
    with pytest.raises(DecorationError, match=r"change `def demo` to `async def demo`"):

        @graph_fn(name="demo")
        def demo() -> None:
            return None


def test_graph_fn_without_parentheses_on_sync_def() -> None:
    def plain() -> None:
        return None

    with pytest.raises(DecorationError, match="must be `async def`"):
        graph_fn(plain)


def test_star_args_is_rejected() -> None:
    with pytest.raises(DecorationError) as info:

        @tool
        def total(*numbers: int) -> int:
            return sum(numbers)

    message = str(info.value)
    assert "*numbers" in message
    assert "declare the parameters explicitly" in message
    assert "total" in message


def test_star_args_rejected_for_graph_fn_too() -> None:
    with pytest.raises(DecorationError, match=r"\*rest"):

        @graph_fn
        async def g(a: int, *rest: int) -> None:
            return None


def test_star_star_kwargs_is_allowed() -> None:
    @tool
    def opts(a: int, **extra: int) -> dict[str, int]:
        return {"a": a, **extra}

    assert opts(1, b=2) == {"a": 1, "b": 2}
    assert opts.spec.bind((1,), {"b": 2}) == {"a": 1, "b": 2}


def test_positional_only_params_are_rejected() -> None:
    with pytest.raises(DecorationError) as info:

        @tool
        def scale(x: int, /, factor: int = 2) -> int:
            return x * factor

    message = str(info.value)
    assert "'x' is positional-only" in message
    assert "remove the '/'" in message


def test_positional_only_context_is_rejected() -> None:
    with pytest.raises(DecorationError, match=r"must be keyword-capable; write `\*, context`"):

        @tool
        def needs(context: NodeContext, /, x: int) -> int:
            return x


def test_outputs_as_bare_string_says_to_use_a_list() -> None:
    with pytest.raises(DecorationError) as info:

        @tool(outputs="val")  # type: ignore[arg-type]
        def analyze(x: int) -> int:
            return x

    message = str(info.value)
    assert "outputs must be a list of names" in message
    assert "outputs=['val']" in message


def test_outputs_of_a_wrong_type() -> None:
    with pytest.raises(DecorationError, match="outputs must be a list of names, got dict"):

        @tool(outputs={"val": int})  # type: ignore[arg-type]
        def analyze(x: int) -> int:
            return x


@pytest.mark.parametrize("bad", ["1st", "has space", "a-b", "", "dotted.name", 7])
def test_invalid_output_names(bad: object) -> None:
    with pytest.raises(DecorationError) as info:

        @tool(outputs=["ok", bad])  # type: ignore[list-item]
        def f() -> None:
            return None

    message = str(info.value)
    assert repr(bad) in message
    assert "is not a Python identifier" in message
    assert "use names like" in message


def test_duplicate_outputs() -> None:
    with pytest.raises(DecorationError, match=r"outputs \['val'\] are declared more than once"):

        @tool(outputs=["val", "other", "val"])
        def f() -> None:
            return None


def test_tool_on_a_class_is_rejected() -> None:
    with pytest.raises(DecorationError) as info:

        @tool
        class Analyzer:
            def __call__(self, x: int) -> int:
                return x

    message = str(info.value)
    assert "@tool decorates functions" in message
    assert "Decorate a `def` or `async def` function" in message


def test_tool_on_a_non_callable_is_rejected() -> None:
    with pytest.raises(DecorationError, match="decorates functions"):
        tool(42)  # type: ignore[call-overload]


def test_tool_on_an_already_decorated_tool_is_rejected() -> None:
    @tool
    def once(x: int) -> int:
        return x

    with pytest.raises(DecorationError, match="already a tool or graph_fn"):
        tool(once)
    with pytest.raises(DecorationError, match="already a tool or graph_fn"):
        tool(name="again")(once)


def test_graph_fn_on_a_graph_fn_or_tool_is_rejected() -> None:
    @graph_fn
    async def g() -> None:
        return None

    @tool
    async def t() -> None:
        return None

    with pytest.raises(DecorationError, match=r"@graph_fn was applied to something that is already"):
        graph_fn(g)
    with pytest.raises(DecorationError, match=r"@graph_fn was applied to something that is already"):
        graph_fn(t)


def test_two_context_params_are_rejected() -> None:
    with pytest.raises(DecorationError) as info:

        @tool
        def f(ctx: NodeContext, *, context: NodeContext) -> None:
            return None

    message = str(info.value)
    assert "'ctx'" in message and "'context'" in message
    assert "keep one" in message


def test_generators_are_rejected() -> None:
    with pytest.raises(DecorationError, match="generators cannot be tools"):

        @tool
        def gen():  # type: ignore[no-untyped-def]
            yield 1

    with pytest.raises(DecorationError, match="generators cannot be graph_fns"):

        @graph_fn
        async def agen():  # type: ignore[no-untyped-def]
            yield 1


@pytest.mark.parametrize("bad", ["has space", "dotted.name", "", "9lives", "x" * 129])
def test_invalid_names_are_rejected(bad: str) -> None:
    with pytest.raises(DecorationError, match=r"is not valid; use 1-128 characters.*\(pass name=\.\.\.\)"):

        @tool(name=bad)
        def f() -> None:
            return None


def test_lambda_needs_a_name() -> None:
    with pytest.raises(DecorationError, match="'<lambda>' is not valid"):
        tool(lambda x: x)
    named = tool(name="ident")(lambda x: x)
    assert named.name == "ident"


def test_context_detected_by_name() -> None:
    @tool
    def by_name(x: int, *, context) -> int:  # type: ignore[no-untyped-def]
        return x

    assert by_name.spec.context_param == "context"
    assert list(by_name.spec.signature.parameters) == ["x"]


def test_context_detected_by_annotation() -> None:
    # This module uses `from __future__ import annotations`: the annotation arrives as the string "NodeContext".
    @tool
    def by_annotation(ctx: NodeContext, x: int) -> int:
        return x

    assert by_annotation.spec.context_param == "ctx"
    assert list(by_annotation.spec.signature.parameters) == ["x"]


def test_context_detected_by_evaluated_annotation() -> None:
    """Without postponed annotations the annotation is the NodeContext class itself."""
    source = "def by_class(x: int, ctx: NodeContext, y: int = 0) -> int:\n    return x\n"
    namespace: dict[str, object] = {"NodeContext": NodeContext}
    exec(compile(source, "<by_class>", "exec", dont_inherit=True), namespace)
    fn = namespace["by_class"]
    assert inspect.signature(fn).parameters["ctx"].annotation is NodeContext  # type: ignore[arg-type]
    spec = tool(fn).spec  # type: ignore[arg-type]
    assert spec.context_param == "ctx"
    assert list(spec.signature.parameters) == ["x", "y"]


def test_context_detected_by_dotted_string_annotation() -> None:
    def by_dotted_string(x: int, c: aethergraph.NodeContext) -> int:  # type: ignore[name-defined]  # noqa: F821
        return x

    assert tool(by_dotted_string).spec.context_param == "c"


def test_ordinary_params_are_not_context() -> None:
    @tool
    def f(ctx: int, contexts: str = "") -> None:
        return None

    assert f.spec.context_param is None
    assert list(f.spec.signature.parameters) == ["ctx", "contexts"]


def test_bind_leaves_out_the_context_and_applies_defaults() -> None:
    @tool
    def f(a: int, b: int = 5, *, context: NodeContext) -> None:
        return None

    assert f.spec.bind((1,), {"context": object()}) == {"a": 1, "b": 5}
    with pytest.raises(TypeError, match=r"tool 'f': .*missing a required argument: 'a'"):
        f.spec.bind((), {})


def test_signature_of_the_decorated_function_is_kept() -> None:
    @tool(outputs=["val"])
    def analyze(x: int, y: int = 1) -> dict[str, int]:
        """Doubles."""
        return {"val": x * 2}

    assert analyze.__doc__ == "Doubles."
    assert list(inspect.signature(analyze).parameters) == ["x", "y"]


def test_binding_without_inspect_agrees_with_inspect() -> None:
    """The hot path binds common calls without ``inspect``; every case must bind (or fail) as ``inspect`` does."""
    from aethergraph.core.model.spec import build_spec

    def plain(a: int, b: int = 2, *, c: int = 3, context: Any = None) -> dict[str, int]:
        return {"v": a + b + c}

    def with_kwargs(a: int, **more: Any) -> dict[str, int]:
        return {"v": a}

    spec = build_spec(plain, kind="tool", name="bind_plain", outputs=["v"])
    assert spec.fast_binding is not None
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((1,), {}),
        ((), {"a": 1}),
        ((1, 5), {"c": 7}),
        ((), {"a": 1, "b": 5, "c": 7, "context": object()}),
        ((), {"c": 7, "a": 1}),
        ((), {}),  # missing a
        ((1,), {"a": 2}),  # a twice
        ((), {"a": 1, "zz": 2}),  # unknown
        ((1, 2, 3), {}),  # too many positional
    ]
    for args, kwargs in calls:
        fast = spec._bind_fast(args, kwargs)
        try:
            slow: dict[str, Any] | str = spec._bind_slow(args, kwargs)
        except TypeError as exc:
            slow = str(exc)
        if fast is not None:
            assert fast == slow and list(fast) == list(slow), (args, kwargs)  # same values, same order
        assert (spec.bind(args, kwargs) if isinstance(slow, dict) else slow) == slow
    assert build_spec(with_kwargs, kind="tool", name="bind_kwargs", outputs=["v"]).fast_binding is None

"""The sandbox in which the marketers' words run: templates (followup.messages) and audience
rules (followup.domain.care). Jinja2's ImmutableSandboxedEnvironment, so that neither can read
files, the environment or Python internals, nor change the data it is given; and bounded
(followup.domain.limits), so that neither can run past its time, size or nesting limits.

How the limits reach the compiled code (`_LimitedCode`, Jinja2's code generator subclassed):
every `{% for %}` iterates through the `followup:loop` filter, which charges the iterations
and looks at the clock; inside loops, every `{{ ... }}`, text and included template's output
is charged as output; an include is one level deeper; `~` checks the joined length first. The
operators `*`, `**`, `%` and `+`, the filters and str methods that take a size (`center`,
`format`, `join`, `replace`, ...) check the size of their result before building it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from types import BuiltinMethodType, MethodType
from typing import Any

from jinja2 import nodes, pass_context, pass_environment, pass_eval_context
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.environment import Environment
from jinja2.exceptions import SecurityError
from jinja2.filters import (
    do_batch,
    do_center,
    do_format,
    do_indent,
    do_replace,
    do_tojson,
    do_urlize,
    do_wordwrap,
    make_attrgetter,
    sync_do_join,
    sync_do_map,
    sync_do_reject,
    sync_do_rejectattr,
    sync_do_select,
    sync_do_selectattr,
    sync_do_slice,
)
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, LoopContext, Macro, Undefined
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
)
from jinja2.utils import generate_lorem_ipsum
from markupsafe import Markup, soft_str

from followup.domain.limits import (
    Limits,
    check_binop,
    check_format_spec,
    check_join,
    check_printf,
    check_replace,
    current,
    loop_items,
    state,
    string_size,
)

#: Every name getattr() finds on a dict (its methods, object's): these go through the sandbox.
_DICT_ATTRIBUTES = frozenset(dir(dict))

#: The filter every loop iterates through: a name no template can write (`:`).
LOOP_FILTER = "followup:loop"


class _LimitedCode(CodeGenerator):
    """Jinja2's code generator, with the calls that charge a message's budget. Inside a
    loop, everything written out (a `{{ ... }}`, text, a block's or an include's events, a
    filter block, a call block) goes through `environment.emitted`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loops = 0

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        for loop in node.find_all(nodes.For):
            if not (isinstance(loop.iter, nodes.Filter) and loop.iter.name == LOOP_FILTER):
                loop.iter = nodes.Filter(
                    loop.iter, LOOP_FILTER, [], [], None, None, lineno=loop.iter.lineno
                )
        super().visit_Template(node, frame)

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        self._loops += 1
        try:
            super().visit_For(node, frame)
        finally:
            self._loops -= 1

    def _output_child_pre(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        if self._loops:
            self.write("environment.emitted(")
        super()._output_child_pre(node, frame, finalize)

    def _output_child_post(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        super()._output_child_post(node, frame, finalize)
        if self._loops:
            self.write(")")

    def _output_const_repr(self, group: Any) -> str:
        text = super()._output_const_repr(group)
        return f"environment.emitted({text})" if self._loops else text

    def start_write(self, frame: Frame, node: nodes.Node | None = None) -> None:
        super().start_write(frame, node)
        if self._loops:
            self.write("environment.emitted(")

    def end_write(self, frame: Frame) -> None:
        if self._loops:
            self.write(")")
        super().end_write(frame)

    def writeline(self, x: str, node: nodes.Node | None = None, extra: int = 0) -> None:
        """`yield from` a block or a module's body inside a loop: each event charged."""
        if self._loops and x.startswith("yield from "):
            x = f"for event in {x.removeprefix('yield from ')}: yield environment.emitted(event)"
        super().writeline(x, node, extra)

    def visit_Include(self, node: nodes.Include, frame: Frame) -> None:
        self.writeline("environment.descend()", node)
        self.writeline("try:")
        self.indent()
        super().visit_Include(node, frame)
        self.outdent()
        self.writeline("finally:")
        self.indent()
        self.writeline("environment.ascend()")
        self.outdent()

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"environment.joined({join}, (")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")


class _Formatter(SandboxedFormatter):
    """str.format in the sandbox: each field's spec and the running length checked."""

    def __init__(self, env: Environment, limits: Limits, **kwargs: Any) -> None:
        super().__init__(env, **kwargs)
        self._limits = limits
        self._size = 0

    def format_field(self, value: Any, format_spec: str) -> Any:
        check_format_spec(self._limits, format_spec)
        text = super().format_field(value, format_spec)
        self._size += len(text)
        string_size(self._limits, self._size, "a formatted string")
        return text


class _EscapeFormatter(_Formatter, SandboxedEscapeFormatter):
    pass


_METHODS = (MethodType, BuiltinMethodType)

#: str methods whose result can be much longer than the string: checked before they run.
_SIZED_METHODS = frozenset(
    {"center", "ljust", "rjust", "zfill", "expandtabs", "replace", "join", "translate"}
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_method(limits: Limits, text: str, name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Refuse `text.name(*args)` when its result would be too long; the arguments to call
    it with (join's iterable as a list)."""
    first: Any = args[0] if args else None
    if name in ("center", "ljust", "rjust", "zfill") and _is_int(first):
        string_size(limits, first)
    elif name == "expandtabs":
        size = first if _is_int(first) else 8
        string_size(limits, len(text) + text.count("\t") * size)
    elif name == "replace" and len(args) >= 2 and all(isinstance(a, str) for a in args[:2]):
        check_replace(limits, text, args[0], args[1], args[2] if len(args) > 2 else None)
    elif name == "join" and args:
        items = list(first)
        check_join(limits, items, text)
        return (items, *args[1:])
    elif name == "translate" and isinstance(first, Mapping):
        longest = max((len(v) for v in first.values() if isinstance(v, str)), default=1)
        string_size(limits, len(text) * max(longest, 1))
    return args


def _charged(function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that calls something for each item (`map`, `select`, ...): its items
    charged to the budget as a loop's."""

    @pass_context
    def charged(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        return function(context, loop_items(value), *args, **kwargs)

    return charged


def _list_filters(limits: Limits) -> dict[str, Callable[..., Any]]:
    """`batch`, `slice` and `tojson`, refusing a result over the limits first."""

    def batch(value: Any, linecount: int, fill_with: Any = None) -> Any:
        string_size(limits, linecount if _is_int(linecount) else 0, "a batch")
        return do_batch(value, linecount, fill_with)

    def slice_(value: Any, slices: int, fill_with: Any = None) -> Any:
        string_size(limits, slices if _is_int(slices) else 0, "a list of slices")
        return sync_do_slice(value, slices, fill_with)

    @pass_eval_context
    def tojson(context: EvalContext, value: Any, indent: Any = None) -> Markup:
        size = indent if _is_int(indent) else len(indent) if isinstance(indent, str) else 0
        if size > 1:
            flat = do_tojson(context, value, 1)
            spaces = sum(len(line) - len(line.lstrip(" ")) for line in flat.splitlines())
            string_size(limits, len(flat) + (size - 1) * spaces)
        return do_tojson(context, value, indent)

    return {"batch": batch, "slice": slice_, "tojson": tojson}


def _checked_filters(limits: Limits) -> dict[str, Callable[..., Any]]:
    """Jinja2's filters that take a size, each refusing a result over the limits first."""

    def center(value: Any, width: int = 80) -> str:
        if _is_int(width):
            string_size(limits, width)
        return do_center(value, width)

    def format_(value: Any, *args: Any, **kwargs: Any) -> str:
        check_printf(limits, soft_str(value), kwargs or args)
        return do_format(value, *args, **kwargs)

    def indent(s: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
        text = soft_str(s)
        pad = len(width) if isinstance(width, str) else width if _is_int(width) else 0
        string_size(limits, len(text) + pad * (text.count("\n") + 1))
        return do_indent(s, width, first, blank)

    @pass_eval_context
    def replace(context: EvalContext, s: Any, old: Any, new: Any, count: Any = None) -> str:
        check_replace(limits, soft_str(s), soft_str(old), soft_str(new), count)
        return do_replace(context, s, old, new, count)

    @pass_eval_context
    def join(context: EvalContext, value: Any, d: str = "", attribute: Any = None) -> str:
        items = list(value)
        if attribute is not None:
            items = list(map(make_attrgetter(context.environment, attribute), items))
        check_join(limits, items, soft_str(d))
        return sync_do_join(context, items, d)

    @pass_environment
    def wordwrap(environment: Environment, s: Any, width: int = 79, *args: Any) -> str:
        text = soft_str(s)
        wrapstring = args[1] if len(args) > 1 and isinstance(args[1], str) else "\n"
        lines = len(text.split()) + len(text) // max(width, 1) + text.count("\n") + 1
        string_size(limits, len(text) + lines * len(wrapstring))
        return do_wordwrap(environment, s, width, *args)

    @pass_eval_context
    def urlize(context: EvalContext, value: Any, *args: Any, **kwargs: Any) -> str:
        text = soft_str(value)
        extra = sum(len(soft_str(v)) for v in (*args, *kwargs.values()) if isinstance(v, str))
        string_size(limits, 2 * len(text) + len(text.split()) * (64 + extra))
        return do_urlize(context, value, *args, **kwargs)

    iterating = {
        name: _charged(function)
        for name, function in (
            ("map", sync_do_map),
            ("select", sync_do_select),
            ("reject", sync_do_reject),
            ("selectattr", sync_do_selectattr),
            ("rejectattr", sync_do_rejectattr),
        )
    }
    return {
        **iterating,
        **_list_filters(limits),
        "center": center,
        "format": format_,
        "indent": indent,
        "replace": replace,
        "join": join,
        "wordwrap": wordwrap,
        "urlize": urlize,
        LOOP_FILTER: loop_items,
    }


def _checked_lipsum(limits: Limits) -> Callable[..., str]:
    def lipsum(*args: Any, **kwargs: Any) -> str:
        """Jinja2's `lipsum(n=5, html=True, min=20, max=100)`, refused when it would be too
        long (about 12 characters a word)."""
        n = args[0] if args else kwargs.get("n", 5)
        most = args[3] if len(args) > 3 else kwargs.get("max", 100)
        if _is_int(n) and _is_int(most):
            string_size(limits, n * most * 12, "lorem ipsum")
        return generate_lorem_ipsum(*args, **kwargs)

    return lipsum


class Sandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, stricter in two ways: reaching an unsafe attribute is an
    error at once, and the template runs under `limits` (followup.domain.limits). Jinja2
    returns an undefined value for an unsafe attribute, which StrictUndefined turns into an
    error only when printed; through a filter chain (`map('attr', '__class__')|list`) it
    would render silently. A template that tries is broken, and says so."""

    code_generator_class = _LimitedCode
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, *args: Any, limits: Limits | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits or Limits()
        self.filters.update(_checked_filters(self.limits))
        self.globals["lipsum"] = _checked_lipsum(self.limits)

    def getattr(self, obj: Any, attribute: str) -> Any:
        """`client.name` on a plain dict without the AttributeError Jinja2 raises and catches
        before falling back to the item: the same result, since a name that is not an
        attribute of dict is never an attribute of a dict."""
        if type(obj) is dict and type(attribute) is str and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        """A template's globals over the environment's, as one dict in ChainMap's key order.
        Jinja2 returns a ChainMap, which it iterates in Python twice per context (five
        contexts a message: three parts, two includes). The environment's globals are set
        once, before any template is loaded."""
        return {**self.globals, **(d or {})}

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe."
        )

    # ------------------------------------------------------------------------- the limits

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        check_binop(self.limits, operator, left, right)
        return self.binop_table[operator](left, right)

    def call(
        __self,  # Jinja2's names, so that no keyword argument of the call clashes
        __context: Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """A macro call (`caller` too) or a recursive loop's `loop(...)` is one level
        deeper; the recursive loop's items are charged as any loop's."""
        if not __self.is_safe_callable(__obj):
            raise SecurityError(f"{__obj!r} is not safely callable")
        kind = type(__obj)
        if kind is Macro or kind is LoopContext:
            budget = current()
            if budget is not None:
                if kind is LoopContext and args:
                    args = (loop_items(args[0]), *args[1:])
                budget.descend()
                try:
                    return __context.call(__obj, *args, **kwargs)
                finally:
                    budget.depth -= 1
        return __context.call(__obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """str.format and format_map through a formatter that checks each field; the str
        methods of _SIZED_METHODS through a check of their result's size."""
        if not isinstance(value, _METHODS):
            return None
        owner = value.__self__
        if not isinstance(owner, str):
            return None
        name = value.__name__
        if name in ("format", "format_map"):
            return self._format_method(owner, name == "format_map")
        if name in _SIZED_METHODS:
            limits = self.limits

            def checked(*args: Any, **kwargs: Any) -> str:
                result: str = value(*_check_method(limits, owner, name, args), **kwargs)
                return result

            return checked
        return None

    def _format_method(self, owner: str, is_format_map: bool) -> Callable[..., str]:
        formatter: _Formatter
        if isinstance(owner, Markup):
            formatter = _EscapeFormatter(self, self.limits, escape=owner.escape)
        else:
            formatter = _Formatter(self, self.limits)

        def formatted(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                kwargs, args = args[0], ()
            formatter._size = 0
            return type(owner)(formatter.vformat(owner, args, kwargs))

        return formatted

    def concat(self, pieces: Any) -> str:
        """A macro's or a captured block's text: its length checked before it is joined."""
        parts = pieces if type(pieces) is list else list(pieces)
        string_size(self.limits, sum(map(len, parts)), "a macro's or block's text")
        return "".join(parts)

    def joined(self, join: Callable[[Any], str], parts: tuple[Any, ...]) -> str:
        """`a ~ b`: the joined length checked before joining."""
        total, most = 0, self.limits.max_string_chars
        for part in parts:
            total += len(part) if isinstance(part, str) else len(str(part))
            if total > most:
                string_size(self.limits, total)
        return join(parts)

    def emitted(self, value: str) -> str:
        """Output inside a loop, charged to the message's budget."""
        budget = state.budget
        if budget is not None:
            budget.emit(len(value))
        return value

    def descend(self) -> None:
        """An include: one level deeper (every message renders two, so the checks are
        written out here rather than in Budget.descend)."""
        budget = state.budget
        if budget is not None:
            budget.depth += 1
            if budget.depth > self.limits.max_depth or budget.clock() > budget.deadline:
                budget.depth -= 1
                budget.descend()

    def ascend(self) -> None:
        budget = state.budget
        if budget is not None:
            budget.depth -= 1

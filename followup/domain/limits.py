"""The limits a template runs under, so that no template can take the process down: a
wall-clock budget per message, caps on its output, on the strings, lists and numbers it
builds, on loop iterations and on nesting (macros calling macros, includes).

`Limits` are the configured values ([templates] in config.toml). A `Budget` is one message's
running account of them: the messages layer opens one per message (`begin`) with the clock it
is given (the domain reads no clock), and the sandbox's hooks (followup.domain.sandbox) charge
it from the compiled template code. Sizes are checked *before* a value is built: `"x" * 10**9`
is refused without allocating a byte, `9 ** (9 ** 9)` without computing it.

A limit exceeded raises `RenderLimitError`, a `RenderError`: that message fails (or is held),
never the run; the templates boundary adds the file and line.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from followup.errors import RenderError


@dataclass(frozen=True, slots=True)
class Limits:
    """[templates] in config.toml; see docs/templates.md for what each one bounds."""

    #: Wall-clock seconds one message (its three parts) may take to render.
    render_seconds: float = 1.0
    #: Characters a message may output (its three parts), and output inside loops.
    max_output_chars: int = 1_000_000
    #: Characters of one string (items of one list) a template may build.
    max_string_chars: int = 1_000_000
    #: Loop iterations of one message, all loops together.
    max_loop_iterations: int = 100_000
    #: Nested macro calls, recursive loop calls and includes.
    max_depth: int = 32
    #: Decimal digits of one number (Python prints at most 4,300).
    max_number_digits: int = 4_300


class RenderLimitError(RenderError):
    """A template went over one of its limits. `limit` is the setting's name in [templates],
    `value` its configured value; `str()` names the file and line once the templates boundary
    knows them (`at`)."""

    def __init__(
        self,
        limit: str,
        value: float,
        what: str,
        *,
        file: str | None = None,
        line: int | None = None,
    ) -> None:
        detail = f"{what}: over the template limit {limit} = {value} ([templates] {limit})"
        where = f"{file}:{line}" if file and line else file
        super().__init__(
            f"{where}: {detail}" if where else detail, file=file, line=line, detail=detail
        )
        self.limit = limit
        self.value = value
        self.what = what

    def at(self, file: str, line: int | None) -> RenderLimitError:
        """The same error, located in a template file."""
        return RenderLimitError(self.limit, self.value, self.what, file=file, line=line)


class Budget:
    """One message's account: the time left, loop iterations left, the nesting depth, the
    characters output inside loops and those of its finished parts."""

    __slots__ = ("clock", "deadline", "depth", "iterations", "limits", "output", "written")

    def __init__(self, limits: Limits, clock: Callable[[], float]) -> None:
        self.limits = limits
        self.clock = clock
        self.deadline = clock() + limits.render_seconds
        self.iterations = limits.max_loop_iterations
        self.depth = 0
        self.output = 0
        self.written = 0

    def check_time(self) -> None:
        if self.clock() > self.deadline:
            raise RenderLimitError(
                "render_seconds", self.limits.render_seconds, "rendering took too long"
            )

    def take(self, iterations: int) -> None:
        """Charge `iterations` loop iterations, and look at the clock."""
        self.iterations -= iterations
        if self.iterations < 0:
            limit = self.limits.max_loop_iterations
            raise RenderLimitError("max_loop_iterations", limit, "too many loop iterations")
        self.check_time()

    def descend(self) -> None:
        """One level deeper (a macro call, a recursive loop, an include)."""
        self.depth += 1
        if self.depth > self.limits.max_depth:
            raise RenderLimitError(
                "max_depth", self.limits.max_depth, "macros or includes nested too deep"
            )
        self.check_time()

    def emit(self, size: int) -> None:
        """Charge `size` characters output inside a loop."""
        self.output += size
        if self.output > self.limits.max_output_chars:
            raise RenderLimitError(
                "max_output_chars", self.limits.max_output_chars, "the output is too long"
            )

    def write(self, size: int) -> None:
        """Charge a finished part of `size` characters, before it is joined."""
        self.written += size
        if self.written > self.limits.max_output_chars:
            raise RenderLimitError(
                "max_output_chars", self.limits.max_output_chars, "the message is too long"
            )


class _State(threading.local):
    #: The budget of the message this thread is rendering, if any (read as an attribute on
    #: the hot path: no function call).
    budget: Budget | None = None


state = _State()


def current() -> Budget | None:
    """The budget of the message this thread is rendering, if any."""
    return state.budget


def begin(limits: Limits, clock: Callable[[], float]) -> tuple[Budget, Budget | None]:
    """Open a message's budget in this thread: (it, the one it replaces, for `end`)."""
    previous = state.budget
    budget = state.budget = Budget(limits, clock)
    return budget, previous


def end(previous: Budget | None) -> None:
    state.budget = previous


def loop_items(iterable: Any) -> Any:
    """What a `{% for %}` loop (or `map`, `select`, `reject`, ...) iterates: its items charged
    to the budget, the clock looked at before each one."""
    budget = current()
    if budget is None:
        return iterable
    try:
        size = len(iterable)
    except TypeError:
        return _counted(iterable, budget)
    budget.take(size)
    return _timed(iterable, budget)


def _counted(iterable: Iterable[Any], budget: Budget) -> Iterator[Any]:
    """An iterable without a length (a filter's generator): charged as it goes."""
    for item in iterable:
        budget.take(1)
        yield item


def _timed(iterable: Iterable[Any], budget: Budget) -> Iterator[Any]:
    clock, deadline = budget.clock, budget.deadline
    for item in iterable:
        if clock() > deadline:
            budget.check_time()
        yield item


# ----------------------------------------------------------------------------- sizes


def string_size(limits: Limits, size: int, what: str = "a string") -> None:
    """Refuse a string (or list) of `size` items before it is built."""
    if size > limits.max_string_chars:
        raise RenderLimitError(
            "max_string_chars", limits.max_string_chars, f"{what} of {size:,} characters"
        )


_LOG10_2 = math.log10(2)


def number_digits(limits: Limits, digits: float) -> None:
    if digits > limits.max_number_digits:
        raise RenderLimitError(
            "max_number_digits", limits.max_number_digits, f"a number of {digits:,.0f} digits"
        )


def _digits(value: int) -> float:
    return value.bit_length() * _LOG10_2


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_binop(limits: Limits, operator: str, left: Any, right: Any) -> None:
    """Refuse `left operator right` when its result would be over a limit."""
    if operator == "**":
        if _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
            number_digits(limits, right * math.log10(abs(left)))
    elif operator == "*":
        if _is_int(left) and _is_int(right):
            number_digits(limits, _digits(left) + _digits(right))
        elif _is_int(right) and isinstance(left, str | list | tuple):
            string_size(limits, len(left) * right)
        elif _is_int(left) and isinstance(right, str | list | tuple):
            string_size(limits, len(right) * left)
    elif operator == "+":
        if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
            string_size(limits, len(left) + len(right))
    elif operator == "%" and isinstance(left, str):
        check_printf(limits, left, right)


#: A printf-style conversion: its key, width and precision (digits or `*`), and its type.
_PRINTF = re.compile(
    r"%(?:\(([^)]*)\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([diouxXeEfFgGcrsab%])"
)


def check_printf(limits: Limits, template: str, values: Any) -> None:
    """`template % values` (and the `format` filter): no width or precision over
    max_string_chars (those given as `*` too), nor a result longer."""
    named = values if isinstance(values, Mapping) else None
    given = iter(values if isinstance(values, tuple) else (values,))
    total = len(template)
    for key, width, precision, kind in _PRINTF.findall(template):
        widest = 0
        for number in (width, precision):
            if number == "*":
                star = next(given, 0)
                widest = max(widest, star if _is_int(star) else 0)
            elif number:
                widest = max(widest, int(number))
            string_size(limits, widest, "a formatted field")
        if kind == "%":
            continue
        value = named.get(key) if named is not None and key else next(given, None)
        total += max(widest, len(value) if isinstance(value, str) else 0)
        string_size(limits, total, "a formatted string")


_SPEC_NUMBERS = re.compile(r"\d+")


def check_format_spec(limits: Limits, spec: str) -> None:
    """A str.format field's spec (`>999999999`, `.999999999f`): no width or precision over
    max_string_chars."""
    for number in _SPEC_NUMBERS.findall(spec):
        string_size(limits, int(number), "a formatted field")


def check_replace(limits: Limits, text: str, old: str, new: str, count: Any = None) -> None:
    found = text.count(old) if old else len(text) + 1
    if _is_int(count) and count >= 0:
        found = min(found, count)
    string_size(limits, len(text) + found * max(0, len(new) - len(old)))


def check_join(limits: Limits, items: list[Any], separator: str) -> None:
    """The joined length, items converted one by one and given up as soon as it is over."""
    total = len(separator) * max(0, len(items) - 1)
    string_size(limits, total)
    for item in items:
        total += len(item) if isinstance(item, str) else len(str(item))
        string_size(limits, total)

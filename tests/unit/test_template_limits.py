"""Templates run under limits (followup.domain.limits): each bomb a marketer's template can
hold is refused, quickly and before it builds anything, with a RenderLimitError (a
RenderError) that names the file, the line and the limit; a normal template is unaffected.
Rendered through the real templates boundary (Templates.render), as the dispatcher does."""

from __future__ import annotations

import re
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from jinja2 import DictLoader, FileSystemLoader, StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from followup.config import load_settings
from followup.domain import limits as budgets
from followup.domain.care import AudienceError, in_audience
from followup.domain.limits import Limits, RenderLimitError
from followup.domain.sandbox import Sandbox
from followup.errors import ConfigError, RenderError
from followup.messages.templates import Templates
from tests.support.settings import ROOT


def _write(root: Path, message: str, text: str, **files: str) -> None:
    folder = root / message / "en"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "subject.txt").write_text("Subject", encoding="utf-8")
    (folder / "html.html").write_text("<p>HTML</p>", encoding="utf-8")
    (folder / "text.txt").write_text(text, encoding="utf-8")
    for name, source in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(source, encoding="utf-8")


def _render(root: Path, message: str = "bomb", limits: Limits | None = None) -> str:
    context = {"client": {"first_name": "Ann"}, "items": list(range(10))}
    return Templates(root, limits=limits).render(message, "en", context).text


#: The issue's bombs and a few more, each on line 3 of a text part: (source, limit).
BOMBS: dict[str, tuple[str, str]] = {
    "nested_loops": (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "max_loop_iterations",
    ),
    "huge_power": ("{{ (9**(9**9)) > 1 }}", "max_number_digits"),
    "huge_product": ("{{ 10**4000 * 10**4000 }}", "max_number_digits"),
    "string_times": ('{{ "x" * 10**9 }}', "max_string_chars"),
    "list_times": ("{{ ([1] * 10**9)|length }}", "max_string_chars"),
    "center": ('{{ "x"|center(10**9) }}', "max_string_chars"),
    "printf_width": ('{{ "%0999999999d"|format(1) }}', "max_string_chars"),
    "printf_star": ('{{ "%s%*d" % ("a", 10**9, 1) }}', "max_string_chars"),
    "format_width": ('{{ "{:>999999999}".format(1) }}', "max_string_chars"),
    "format_nested": ('{{ "{:>{}}".format(1, 10**9) }}', "max_string_chars"),
    "format_map": ('{{ "{a:.999999999f}".format_map({"a": 1.0}) }}', "max_string_chars"),
    "ljust": ('{{ "x".ljust(10**9) }}', "max_string_chars"),
    "str_replace": ('{{ ("x" * 1000000).replace("x", "yy") }}', "max_string_chars"),
    "replace_filter": ('{{ ("x" * 1000)|replace("x", "y" * 2000) }}', "max_string_chars"),
    "str_join": ('{{ ("x" * 1000000).join(["a", "b", "c"]) }}', "max_string_chars"),
    "join_filter": ('{{ (["x" * 1000000] * 1000)|join }}', "max_string_chars"),
    "indent": ('{{ ("a\\n" * 1000)|indent(10**6) }}', "max_string_chars"),
    "batch": ("{{ [1]|batch(10**9, 0)|list|length }}", "max_string_chars"),
    "slice": ("{{ [1]|slice(10**9)|list|length }}", "max_string_chars"),
    "lipsum": ("{{ lipsum(10**6) }}", "max_string_chars"),
    "doubling": (
        '{% set ns = namespace(s="x") %}{% for i in range(40) %}'
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
        "max_string_chars",
    ),
    "loop_output": (
        '{% set big = "x" * 1000000 %}{% for i in range(100000) %}{{ big }}{% endfor %}',
        "max_output_chars",
    ),
    "loop_of_text": (
        "{% for i in range(100000) %}" + "y" * 100 + "{% endfor %}",
        "max_output_chars",
    ),
    "recursive_macro": ("{% macro m(n) %}{{ m(n) }}{% endmacro %}{{ m(1) }}", "max_depth"),
    "caller": (
        "{% macro m() %}{% call m() %}{% endcall %}{{ caller() }}{% endmacro %}{{ m() }}",
        "max_depth",
    ),
    "self_include": ('{% include "bomb/en/text.txt" %}', "max_depth"),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_each_bomb_is_refused_naming_file_line_and_limit(tmp_path: Path, name: str) -> None:
    source, limit = BOMBS[name]
    root = tmp_path / "templates"
    _write(root, "bomb", f"Dear {{{{ client.first_name }}}},\n\n{source}\n")

    with pytest.raises(RenderLimitError) as caught:
        _render(root)

    error = caught.value
    assert isinstance(error, RenderError)
    assert (error.file, error.line, error.limit) == ("templates/bomb/en/text.txt", 3, limit)
    assert str(error).startswith("templates/bomb/en/text.txt:3: ")
    value = getattr(Limits(), limit)
    assert f"over the template limit {limit} = {value} ([templates] {limit})" in str(error)


def test_a_self_include_names_the_include_line(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    _write(
        root, "bomb", "Hello\n", **{"_partials/loop.txt": 'a\n\n{% include "_partials/loop.txt" %}'}
    )
    (root / "bomb" / "en" / "text.txt").write_text('Hi\n{% include "_partials/loop.txt" %}\n')

    with pytest.raises(RenderLimitError) as caught:
        _render(root)

    assert (caught.value.file, caught.value.line) == ("templates/_partials/loop.txt", 3)
    assert caught.value.limit == "max_depth"


def test_a_recursive_loop_is_bounded_by_depth(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    source = (
        "{% set ns = namespace() %}{% set ns.me = ns %}\n"
        "{% for x in [ns] recursive %}{{ loop([x.me]) }}{% endfor %}\n"
    )
    _write(root, "bomb", source)

    with pytest.raises(RenderLimitError, match=r"text\.txt:2: .*max_depth = 32"):
        _render(root)


def test_output_of_an_include_in_a_loop_counts(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    partial = '{{ "z" * 1000 }}'
    _write(
        root,
        "bomb",
        "{% for i in range(2000) %}{% include '_p.txt' %}{% endfor %}\n",
        **{"_p.txt": partial},
    )

    with pytest.raises(RenderLimitError) as caught:
        _render(root)

    assert caught.value.limit == "max_output_chars"


NORMAL = """Dear {{ client.first_name }},
{% for i in items %}{{ i }}{{ loop.index }} {% endfor %}
{% macro row(n) %}[{{ "%03d"|format(n) }}|{{ "{:>4}".format(n) }}]{% endmacro %}
{%- for n in range(3) %}{{ row(n) }}{% include "_p.txt" %}{% endfor %}
{{ "ab" * 3 }} {{ 2 ** 10 }} {{ "x"|center(7) }} {{ ["a", "b"]|join(", ") }}
{{ "a-b"|replace("-", "+") }}
{{ ("w " * 50)|wordwrap(20) }} {{ "q".ljust(3) }}| {{ "t" ~ 1 ~ "u" }} {{ "%s-%s" % (1, 2) }}
{% for row in items|batch(4) %}{{ row|length }}{% endfor %} {{ {"a": [1, 2]}|tojson(2) }}
{{ "a\nb"|indent(2, true) }} {{ "x\ty".expandtabs(4) }} {{ [1, 2] + [3] }} {{ 7 * 6 }}
{% for x in [[1, [2]]] recursive %}{{ x }}{% if x is iterable %}{{ loop(x) }}{% endif %}{% endfor %}
{% for c in "abc" %}{{ loop.length }}{{ loop.revindex }}{{ loop.last }}{% endfor %}
{{ items|map("string")|select("ne", "3")|reject("eq", "4")|join }}
{{ lipsum(1, false, 3, 4)|length > 0 }} {{ items|slice(3)|list|length }} {{ "http://a.b"|urlize }}
"""


def test_a_normal_template_renders_as_in_jinja2s_own_sandbox(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    _write(root, "normal", NORMAL, **{"_p.txt": "({{ n }})"})
    context = {"client": {"first_name": "Ann"}, "items": list(range(10))}
    plain = ImmutableSandboxedEnvironment(
        loader=FileSystemLoader(str(root)), undefined=StrictUndefined
    )

    ours = _render(root, "normal")

    assert ours == plain.get_template("normal/en/text.txt").render(context).strip() + "\n"
    assert "[000|   0](0)[001|   1](1)[002|   2](2)" in ours


def test_the_loop_limit_counts_loops_over_generators_and_items_through_map(
    tmp_path: Path,
) -> None:
    """Each `range(30)|map('string')` charges 30 items to map and 30 iterations to its loop:
    60 + 30 x 60 = 1,860 in all."""
    root = tmp_path / "templates"
    source = "{% for i in range(30)|map('string') %}{% for j in range(30)|map('string') %}"
    _write(root, "gen", f"a\n{source}{{% endfor %}}{{% endfor %}}")

    assert _render(root, "gen", Limits(max_loop_iterations=1860)) == "a\n"
    with pytest.raises(RenderLimitError, match=r"text\.txt:2: .*max_loop_iterations = 1859"):
        _render(root, "gen", Limits(max_loop_iterations=1859))


def test_the_limits_are_per_message_and_configurable(tmp_path: Path) -> None:
    """A budget of 50 iterations refuses a loop of 60, and each message gets its own: two
    loops of 40 in two messages are fine."""
    root = tmp_path / "templates"
    _write(root, "forty", "{% for i in range(40) %}{% endfor %}ok")
    _write(root, "sixty", "{% for i in range(60) %}{% endfor %}ok")
    small = Limits(max_loop_iterations=50)
    templates = Templates(root, limits=small)

    context: dict[str, Any] = {}
    assert templates.render("forty", "en", context).text == "ok\n"
    assert templates.render("forty", "en", context).text == "ok\n"
    with pytest.raises(RenderLimitError, match="max_loop_iterations = 50"):
        templates.render("sixty", "en", context)
    assert budgets.current() is None


def test_the_whole_message_counts_toward_max_output_chars(tmp_path: Path) -> None:
    root = tmp_path / "templates"
    _write(root, "long", "t" * 700)
    (root / "long" / "en" / "html.html").write_text("h" * 700)

    with pytest.raises(RenderLimitError) as caught:
        _render(root, "long", Limits(max_output_chars=1000))

    assert caught.value.limit == "max_output_chars"
    assert caught.value.file == "templates/long/en/html.html"


def _ticking_clock(step: float) -> Iterator[float]:
    return (step * n for n in count())


def test_the_wall_clock_is_looked_at_inside_loops() -> None:
    """A fake clock that moves 0.1 s each time it is read: a long loop goes past 1 s."""
    env = Sandbox(
        loader=DictLoader({"slow.txt": "a\n{% for i in range(5000) %}{{ i }}{% endfor %}"})
    )
    template = env.get_template("slow.txt")
    clock = _ticking_clock(0.1)
    _, previous = budgets.begin(Limits(), lambda: next(clock))
    try:
        with pytest.raises(RenderLimitError, match=r"render_seconds = 1\.0"):
            template.render()
    finally:
        budgets.end(previous)


def test_a_macro_call_looks_at_the_clock_too() -> None:
    source = "{% macro m() %}x{% endmacro %}{% for i in range(3) %}{{ m() }}{% endfor %}"
    env = Sandbox(loader=DictLoader({"m.txt": source}), undefined=StrictUndefined)
    readings: list[float] = []

    def clock() -> float:
        readings.append(0.0)
        return 0.0

    _, previous = budgets.begin(Limits(), clock)
    try:
        assert env.get_template("m.txt").render() == "xxx"
    finally:
        budgets.end(previous)
    # One at the start, one as the loop starts, one before each item and each macro call.
    assert len(readings) == 8


def test_without_a_budget_sizes_are_still_checked() -> None:
    env = Sandbox()
    with pytest.raises(RenderLimitError, match="max_string_chars"):
        env.from_string('{{ "x" * 10**9 }}').render()
    assert env.from_string("{% for i in range(3) %}{{ i }}{% endfor %}").render() == "012"


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ('("%0999999999d" % 1) == ""', "max_string_chars"),
        ('("{:>999999999}".format(1)) == ""', "max_string_chars"),
        ('("x"|center(1000000000)) == ""', "max_string_chars"),
        ("(9 ** (9 ** 9)) > 1", "the ** operator is not allowed"),
    ],
)
def test_an_audience_rule_cannot_build_a_huge_value(rule: str, reason: str) -> None:
    with pytest.raises(AudienceError, match=re.escape(reason)):
        in_audience(rule, {"tier": "vip"})


def test_an_audience_rule_still_adds_and_formats() -> None:
    assert in_audience('client.tier + "!" == "vip!" and "%d" % 3 == "3"', {"tier": "vip"})


def test_the_error_message_names_the_setting() -> None:
    error = RenderLimitError("max_depth", 32, "macros or includes nested too deep")
    located = error.at("templates/a/en/text.txt", 7)

    assert str(located) == (
        "templates/a/en/text.txt:7: macros or includes nested too deep: over the template "
        "limit max_depth = 32 ([templates] max_depth)"
    )
    assert (located.file, located.line, located.limit, located.value) == (
        "templates/a/en/text.txt",
        7,
        "max_depth",
        32,
    )


# ----------------------------------------------------------------------------- settings


def test_templates_settings_have_safe_defaults_and_reach_the_limits() -> None:
    settings = load_settings(ROOT / "config.toml", {})
    assert settings.templates.limits() == Limits()
    text = (ROOT / "config.toml").read_text(encoding="utf-8")
    assert "[templates]" in text
    for key in type(settings.templates).model_fields:
        assert re.search(rf"^{key} = ", text, re.M), key


def test_templates_settings_come_from_the_environment_too() -> None:
    env = {"FOLLOWUP_TEMPLATES_RENDER_SECONDS": "2.5", "FOLLOWUP_TEMPLATES_MAX_DEPTH": "8"}
    limits = load_settings(ROOT / "config.toml", env).templates.limits()
    assert (limits.render_seconds, limits.max_depth) == (2.5, 8)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("RENDER_SECONDS", "inf"),
        ("RENDER_SECONDS", "0"),
        ("MAX_DEPTH", "1"),
        ("MAX_STRING_CHARS", "1e12"),
        ("MAX_LOOP_ITERATIONS", "many"),
    ],
)
def test_bad_templates_settings_are_refused_naming_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(ROOT / "config.toml", {f"FOLLOWUP_TEMPLATES_{key}": value})
    assert f"[templates] {key.lower()} (from FOLLOWUP_TEMPLATES_{key})" in str(caught.value)


@pytest.mark.parametrize(
    "body",
    [
        "{% block b %}{{ big|upper }}{% endblock %}",
        "{% filter upper %}{{ big }}{% endfilter %}",
        "{% macro m() %}{{ caller() }}{% endmacro %}{% call m() %}{{ big|upper }}{% endcall %}",
        "{% include '_p.txt' %}",
        "{% include '_p.txt' without context %}",
    ],
)
def test_every_kind_of_output_inside_a_loop_counts(tmp_path: Path, body: str) -> None:
    root = tmp_path / "templates"
    source = f'{{% set big = "b" * 100000 %}}\n{{% for i in range(1000) %}}{body}{{% endfor %}}'
    _write(root, "bomb", source, **{"_p.txt": '{{ "p" * 100000 }}'})

    with pytest.raises(RenderLimitError) as caught:
        _render(root)

    assert (caught.value.limit, caught.value.line) == ("max_output_chars", 2)


@pytest.mark.parametrize(
    "source",
    ['{% extends "bomb/en/text.txt" %}', '{% import "bomb/en/text.txt" as me %}{{ me }}'],
)
def test_a_template_extending_or_importing_itself_is_refused(tmp_path: Path, source: str) -> None:
    root = tmp_path / "templates"
    _write(root, "bomb", f"Hi\n{source}\n")

    with pytest.raises(RenderLimitError) as caught:
        _render(root)

    assert (caught.value.file, caught.value.limit) == ("templates/bomb/en/text.txt", "max_depth")
    assert str(caught.value).startswith("templates/bomb/en/text.txt:2: endless recursion: ")


@pytest.mark.parametrize(
    "source",
    ["{% for i in range(3) %}{{ i }}{% endfor %}", "{{ range(5)|map('string')|join }}"],
)
def test_the_clock_is_looked_at_before_each_item(source: str) -> None:
    """A clock moving 0.4 s at each reading: past 1 s by the third item, however few."""
    template = Sandbox().from_string(source)
    clock = _ticking_clock(0.4)
    _, previous = budgets.begin(Limits(), lambda: next(clock))
    try:
        with pytest.raises(RenderLimitError, match="render_seconds"):
            template.render()
    finally:
        budgets.end(previous)


def test_loading_a_template_is_not_charged_to_the_message(tmp_path: Path) -> None:
    """An include loaded (read and compiled) while the message renders: the time it takes is
    given back to the budget's deadline."""
    root = tmp_path / "templates"
    _write(root, "inc", 'a\n{% include "_p.txt" %}', **{"_p.txt": "p"})
    templates = Templates(root)
    _, previous = budgets.begin(Limits(), lambda: 0.0)
    try:
        budget = budgets.current()
        assert budget is not None
        before = budget.deadline
        templates.env.get_template("_p.txt")
        assert budget.deadline > before
        templates.env.get_template("_p.txt")  # kept: nothing to give back
    finally:
        budgets.end(previous)
    assert templates.render("inc", "en", {}).text == "a\np\n"

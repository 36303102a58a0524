"""The templates boundary: a sandboxed Jinja2 environment over templates/, its output
escaping, locale fallback and rendering of a message's three parts.

Templates are the marketers' files and are not trusted: they run in an
ImmutableSandboxedEnvironment with StrictUndefined, so a template cannot read files, the
environment or Python internals, and a missing variable is an error, never an empty string.

Layout (see docs/templates.md):

    templates/_layouts/base.html            the shared HTML layout, with blocks
    templates/_partials/*.html              pieces included by messages ({% include %})
    templates/_variants.toml                the design variants (followup.messages.variants)
    templates/<message>/<locale>/subject.txt
    templates/<message>/<locale>/text.txt
    templates/<message>/<locale>/html.html  (usually extends the layout)
    templates/<message>/<locale>/html.<variant>.html   optional: one variant's own part
    templates/<message>/variants.toml       optional: this message's own variants

A client whose locale is fr-CA gets fr-CA, else fr, else the default locale. Every message
renders in every variant: the layout takes its colours from the `variant` object.
"""

from __future__ import annotations

import functools
import time
import traceback
from collections.abc import Callable, Collection, Mapping, MutableMapping
from pathlib import Path
from types import CodeType
from typing import Any

import css_inline
from jinja2 import (
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
    select_autoescape,
)
from jinja2.utils import internalcode
from markupsafe import escape

from followup.domain import limits as budgets
from followup.domain.limits import Limits, RenderLimitError
from followup.domain.locales import language, locale_chain
from followup.domain.sandbox import Sandbox
from followup.errors import RenderError
from followup.messages import inline
from followup.messages.filters import date_filter, money_filter, number_filter
from followup.messages.mime import RenderedParts, header_safe
from followup.messages.variants import (
    DEFAULT_VARIANTS,
    MESSAGE_VARIANTS_FILE,
    VARIANTS_FILE,
    Variant,
    parse_variants,
)


def _escaped_text(value: str) -> str:
    """markupsafe.escape(value) as a plain str: the public way, for a MarkupSafe without the
    private function below (it is MarkupSafe 3's; its tests pin the equivalence)."""
    return str(escape(value))


try:
    from markupsafe._speedups import _escape_inner
except ImportError:  # MarkupSafe without its C extension, or another version
    try:
        from markupsafe._native import _escape_inner
    except ImportError:
        _escape_inner = _escaped_text


PARTS = ("subject.txt", "text.txt", "html.html")


def _output_escape(value: Any) -> str:
    """markupsafe.escape as a compiled template's `{{ ... }}` calls it: a str's escaped text as a
    str. escape() wraps it in Markup, whose Python-level __new__ cost several times the escaping
    itself (about 20 values a message). Jinja2 only joins what these calls return (into the
    output, a block, a macro's or a captured block's text, wrapped in Markup there), so the
    type makes no difference; anything else (Markup, numbers, objects) goes to escape()."""
    if type(value) is str:
        return _escape_inner(value)
    return escape(value)


class _Template(Template):
    """A Template whose output escapes through _output_escape."""

    @classmethod
    def from_code(
        cls,
        environment: Any,
        code: CodeType,
        globals: MutableMapping[str, Any],
        uptodate: Callable[[], bool] | None = None,
    ) -> Template:
        template = super().from_code(environment, code, globals, uptodate)
        # The compiled module's namespace: its functions look `escape` up there when they run.
        namespace = getattr(template.root_render_func, "__globals__", None)
        if isinstance(namespace, dict) and namespace.get("escape") is escape:
            namespace["escape"] = _output_escape
        return template


class TemplateSandbox(Sandbox):
    """The sandbox of the marketers' templates: output escaped through _output_escape, and
    templates once loaded kept in a plain dict."""

    template_class = _Template

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loaded: dict[str, Template] = {}

    @internalcode
    def _load_template(self, name: str, globals: MutableMapping[str, Any] | None) -> Template:
        """Without auto_reload, a template once loaded comes from a plain dict: Jinja2's cache
        takes a weak reference and a locked LRU lookup on every include."""
        if self.auto_reload or globals:
            return self._timed_load(name, globals)
        template = self._loaded.get(name)
        if template is None:
            template = self._loaded[name] = self._timed_load(name, globals)
        return template

    def _timed_load(self, name: str, globals: MutableMapping[str, Any] | None) -> Template:
        """Reading and compiling a template is not its own doing: the time it takes is given
        back to the message's wall-clock budget (followup.domain.limits)."""
        began = time.monotonic()
        try:
            return super()._load_template(name, globals)
        finally:
            budget = budgets.state.budget
            if budget is not None:
                budget.deadline += time.monotonic() - began


#: (locale folder, variant, its colours for templates, locale the filters use, language of
#: the folder, template of each part in PARTS' order)
_Plan = tuple[str, Variant, dict[str, str], str, str, tuple[str, ...]]
#: Plans kept (all are dropped when full): messages x client locales x variants.
PLANS_SIZE = 4096


class Templates:
    """The sandboxed environment over one templates/ folder. Compiled templates are cached;
    with `auto_reload` (the studio), a template saved on disk is compiled again."""

    def __init__(
        self,
        root: Path,
        default_locale: str = "en",
        *,
        auto_reload: bool = False,
        limits: Limits | None = None,
    ):
        self.root = root
        self.default_locale = default_locale
        self.limits = limits or Limits()
        self.env = TemplateSandbox(
            limits=self.limits,
            loader=FileSystemLoader(str(root)),
            undefined=StrictUndefined,
            # Asked for every context (five a message): the answer for each name is kept.
            autoescape=functools.lru_cache(maxsize=1024)(
                select_autoescape(["html", "htm"], default_for_string=False)
            ),
            keep_trailing_newline=False,
            auto_reload=auto_reload,
        )
        self.env.filters.update(date=date_filter, money=money_filter, number=number_filter)
        self.auto_reload = auto_reload
        self._variants: dict[Path, tuple[float, tuple[Variant, ...]]] = {}
        #: Without auto_reload (the dispatcher), what exists on disk is looked up once.
        self._files: dict[str, bool] = {}
        self._message_variants: dict[str, tuple[Variant, ...]] = {}
        #: Without auto_reload, each part's compiled template (Jinja2 would give the same one
        #: from its cache, through a weak reference and a locked LRU on every call).
        self._compiled: dict[str, Template] = {}
        #: Without auto_reload, (message, client locale) -> the locale folder it gets.
        self._locales: dict[tuple[str, str], str] = {}
        #: Without auto_reload, (message, client locale, variant asked) -> its _Plan.
        self._plans: dict[tuple[str, str, str | None], _Plan] = {}

    def _is_file(self, relative: str) -> bool:
        if self.auto_reload:
            return (self.root / relative).is_file()
        found = self._files.get(relative)
        if found is None:
            found = self._files[relative] = (self.root / relative).is_file()
        return found

    def messages(self) -> list[str]:
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("_")
        )

    def locales(self, message: str) -> list[str]:
        """The locale folders of one message that hold a subject."""
        folder = self.root / message
        return sorted(p.name for p in folder.iterdir() if (p / "subject.txt").is_file())

    def variants(self, message: str) -> tuple[Variant, ...]:
        """The message's own variants.toml, else templates/_variants.toml, else one default."""
        if not self.auto_reload and message in self._message_variants:
            return self._message_variants[message]
        found = self._read_variants(message)
        if not self.auto_reload:
            self._message_variants[message] = found
        return found

    def _read_variants(self, message: str) -> tuple[Variant, ...]:
        for path in (self.root / message / MESSAGE_VARIANTS_FILE, self.root / VARIANTS_FILE):
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                continue
            cached = self._variants.get(path)
            if cached is None or cached[0] != mtime:
                cached = (mtime, parse_variants(path, self._where(str(path))))
                self._variants[path] = cached
            return cached[1]
        return DEFAULT_VARIANTS

    def variant(self, message: str, name: str | None) -> Variant:
        """A variant by name (None: the first)."""
        variants = self.variants(message)
        if name is None:
            return variants[0]
        for variant in variants:
            if variant.name == name:
                return variant
        raise RenderError(
            f"{self._where(str(self.root / message))}: no variant {name!r} "
            f"(known: {', '.join(v.name for v in variants)})",
            detail=f"no variant {name!r}",
        )

    def resolve_locale(self, message: str, locale: str) -> str:
        if not self.auto_reload:
            found = self._locales.get((message, locale))
            if found is None:
                found = self._locales[(message, locale)] = self._resolve_locale(message, locale)
            return found
        return self._resolve_locale(message, locale)

    def _resolve_locale(self, message: str, locale: str) -> str:
        for tag in locale_chain(locale, self.default_locale):
            if self._is_file(f"{message}/{tag}/subject.txt"):
                return tag
        raise RenderError(
            f"{self._where(str(self.root / message))}: no templates for locale {locale!r} "
            f"nor its fallbacks ({', '.join(locale_chain(locale, self.default_locale))})"
        )

    def part_name(self, message: str, tag: str, part: str, variant: str) -> str:
        """The template of one part: html.<variant>.html when the variant has its own."""
        stem, dot, ext = part.partition(".")
        own = f"{message}/{tag}/{stem}.{variant}{dot}{ext}"
        return own if self._is_file(own) else f"{message}/{tag}/{part}"

    def render(
        self,
        message: str,
        locale: str,
        context: Mapping[str, Any],
        variant: str | None = None,
    ) -> RenderedParts:
        plan = self._plans.get((message, locale, variant)) if not self.auto_reload else None
        if plan is None:
            plan = self._plan(message, locale, variant)
            if not self.auto_reload:
                if len(self._plans) >= PLANS_SIZE:
                    self._plans.clear()
                self._plans[(message, locale, variant)] = plan
        tag, chosen, colours, shown_locale, folder_language, names = plan
        # With the environment's globals: the three parts read this dict as it is (see
        # _render_one), where Template.render copied it twice for each.
        values = {
            **self.env.globals,
            "variant": dict(colours),
            **context,
            "locale": shown_locale,
            "language": folder_language,
        }
        # One budget for the message's three parts (followup.domain.limits).
        previous = budgets.state.budget
        budgets.state.budget = budgets.Budget(self.limits, time.monotonic)
        try:
            rendered = [self._render_one(name, values) for name in names]
        finally:
            budgets.state.budget = previous
        try:
            html = inline.inline(rendered[2])
        except (css_inline.InlineError, ValueError) as exc:
            where = self._where(str(self.root / message / tag / "html.html"))
            raise RenderError(f"{where}: CSS: {exc}", file=where, detail=f"CSS: {exc}") from exc
        return RenderedParts(
            locale=tag,
            subject=header_safe(rendered[0]),
            text=rendered[1].strip() + "\n",
            html=html,
            variant=chosen.name,
        )

    def _plan(self, message: str, locale: str, variant: str | None) -> _Plan:
        """What rendering `message` for `locale` in `variant` needs besides the client's
        values: the same for every message of that kind (kept without auto_reload)."""
        tag = self.resolve_locale(message, locale)
        chosen = self.variant(message, variant)
        # Format dates and money in the client's locale only when the words around them are in
        # its language: a de client served the English fallback gets an all-English message.
        same_language = language(tag) == language(locale)
        return (
            tag,
            chosen,
            chosen.context(),
            locale if same_language else tag,
            # The language of the template folder: picks the layout's partials (footer).
            language(tag),
            tuple(self.part_name(message, tag, part, chosen.name) for part in PARTS),
        )

    def _render_one(self, name: str, values: dict[str, Any]) -> str:
        """One template file, with every error turned into a RenderError naming file and line.

        `values` holds the environment's globals under the message's own: what
        Template.render(values) would give its context, built once for the three parts.
        Templates only read their context's parent (what they set goes into the context's
        own vars), so all three share it."""
        try:
            template = self._compiled.get(name)
            if template is None:
                template = self.env.get_template(name)
                if not self.auto_reload:
                    self._compiled[name] = template
            try:
                pieces = list(template.root_render_func(template.new_context(values, True)))
            except Exception:
                # As Template.render: the traceback gets the template's file and line.
                self.env.handle_exception()
            budget = budgets.state.budget
            if budget is not None:
                budget.written += sum(map(len, pieces))
                if budget.written > self.limits.max_output_chars:
                    budget.write(0)
            return "".join(pieces)
        except RenderLimitError as exc:
            if exc.file:
                raise
            file, line = self._locate(exc, name)
            raise exc.at(file, line) from exc
        except RecursionError as exc:
            file, line = self._locate(exc, name)
            error = RenderLimitError("max_depth", self.limits.max_depth, "endless recursion")
            raise error.at(file, line) from None
        except TemplateSyntaxError as exc:
            raise self._error(
                self._where(exc.filename or name), exc.lineno, exc.message or str(exc)
            ) from exc
        except TemplateNotFound as exc:
            where = self._where(str(self.root / name))
            raise RenderError(
                f"{where}: template not found: {exc.name}",
                file=where,
                detail=f"template not found: {exc.name}",
            ) from exc
        except TemplateError as exc:
            file, line = self._locate(exc, name)
            raise self._error(file, line, str(exc)) from exc
        except (ValueError, TypeError, LookupError, ArithmeticError) as exc:
            # A filter given bad data (an unknown locale or currency, a wrong type).
            file, line = self._locate(exc, name)
            raise self._error(file, line, f"{type(exc).__name__}: {exc}") from exc

    def compile_all(self, messages: Collection[str] | None = None) -> list[RenderError]:
        """Compile every template file under the root (syntax only): one error per bad file.
        With `messages`, only theirs and the shared ones (`_layouts/`, `_partials/`...)."""
        errors: list[RenderError] = []
        for path in sorted(self.root.rglob("*")):
            if not path.is_file() or path.suffix not in (".txt", ".html", ".htm"):
                continue
            name = path.relative_to(self.root).as_posix()
            top = name.partition("/")[0]
            if messages is not None and not top.startswith("_") and top not in messages:
                continue
            try:
                source = path.read_text(encoding="utf-8")
                self.env.parse(source, name, str(path))
            except TemplateSyntaxError as exc:
                errors.append(
                    self._error(self._where(str(path)), exc.lineno, exc.message or str(exc))
                )
            except UnicodeError as exc:
                where = self._where(str(path))
                errors.append(RenderError(f"{where}: {exc}", file=where, detail=str(exc)))
        return errors

    @staticmethod
    def _error(file: str, line: int | None, detail: str) -> RenderError:
        where = f"{file}:{line}" if line else file
        return RenderError(f"{where}: {detail}", file=file, line=line, detail=detail)

    def _where(self, filename: str) -> str:
        path = Path(filename)
        try:
            return str(path.resolve().relative_to(self.root.resolve().parent))
        except ValueError:
            return str(path)

    def _locate(self, exc: BaseException, fallback: str) -> tuple[str, int | None]:
        """file and line of the template frame where `exc` was raised (Jinja2 rewrites
        tracebacks so that template frames carry the template's file name and line)."""
        root = str(self.root.resolve())
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            if frame.filename and str(Path(frame.filename).resolve()).startswith(root):
                return self._where(frame.filename), frame.lineno
        return self._where(str(self.root / fallback)), None


def stamp(root: Path) -> tuple[int, int, int]:
    """A cheap stamp of the files under `root`: (how many, the latest mtime in ns, their total
    size), directories' mtimes included (a file removed or renamed changes its folder's). A
    template saved, added or removed changes it."""
    count = latest = size = 0
    for path in (root, *root.rglob("*")):
        try:
            info = path.stat()
        except OSError:
            continue  # removed while walking: the next stamp sees it
        count += 1
        latest = max(latest, info.st_mtime_ns)
        size += info.st_size
    return count, latest, size

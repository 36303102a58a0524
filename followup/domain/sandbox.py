"""The sandbox in which the marketers' words run: templates (followup.messages) and audience
rules (followup.domain.care). Jinja2's ImmutableSandboxedEnvironment, so that neither can read
files, the environment or Python internals, nor change the data it is given."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from jinja2.exceptions import SecurityError
from jinja2.runtime import Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

#: Every name getattr() finds on a dict (its methods, object's): these go through the sandbox.
_DICT_ATTRIBUTES = frozenset(dir(dict))


class Sandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, stricter in one way: reaching an unsafe attribute is an
    error at once. Jinja2 returns an undefined value there, which StrictUndefined turns into
    an error only when printed; through a filter chain (`map('attr', '__class__')|list`) it
    would render silently. A template that tries is broken, and says so."""

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

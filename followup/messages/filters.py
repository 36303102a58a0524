"""The Babel filters of the templates: `date`, `money` and `number`, in the client's locale.

They run several times in every message, and the values they format repeat from one message
to the next (the same purchase dates, amounts and locales): parsed locales and formatted
values are cached.
"""

from __future__ import annotations

import functools
from datetime import date, datetime

from babel import Locale
from babel.dates import format_date
from babel.dates import format_datetime as babel_datetime
from babel.numbers import format_currency, format_decimal
from jinja2 import pass_context
from jinja2.runtime import Context

from followup.domain.money import minor_digits


def _babel_locale(context: Context) -> str:
    return str(context.get("locale", "en")).replace("-", "_")


@functools.lru_cache(maxsize=256)
def _parsed_locale(tag: str) -> Locale:
    """babel.Locale.parse, once per locale string (the filters run several times a message)."""
    return Locale.parse(tag)


def _locale(tag: str) -> Locale | str:
    # An empty tag is passed on as is: Babel reads it as its default locale.
    return _parsed_locale(tag) if tag else tag


# Formatted values repeat across messages (same purchase dates, amounts, locales): the
# filters' results are cached for the exact types whose equality implies the same output.
@functools.lru_cache(maxsize=4096)
def _cached_date(value: date, format: str, tag: str) -> str:
    return format_date(value, format=format, locale=_locale(tag))


@functools.lru_cache(maxsize=4096)
def _cached_money(minor: int, currency: str, tag: str) -> str:
    amount = minor / 10 ** minor_digits(currency)
    return format_currency(amount, currency, locale=_locale(tag))


@functools.lru_cache(maxsize=4096)
def _cached_number(value: int, tag: str) -> str:
    return format_decimal(value, locale=_locale(tag))


@pass_context
def date_filter(context: Context, value: date | datetime, format: str = "long") -> str:
    """`{{ day | date }}`, `{{ day | date("short") }}`: a date or a date and time."""
    tag = _babel_locale(context)
    if type(value) is date and type(format) is str:
        return _cached_date(value, format, tag)
    if isinstance(value, datetime):
        return babel_datetime(value, format=format, locale=_locale(tag))
    return format_date(value, format=format, locale=_locale(tag))


@pass_context
def money_filter(context: Context, minor: int, currency: str) -> str:
    """`{{ amount | money(currency) }}`: an amount stored in minor units (cents)."""
    tag = _babel_locale(context)
    if type(minor) is int and type(currency) is str:
        return _cached_money(minor, currency, tag)
    amount = minor / 10 ** minor_digits(currency)
    return format_currency(amount, currency, locale=_locale(tag))


@pass_context
def number_filter(context: Context, value: float | int) -> str:
    """`{{ count | number }}`: a number with the locale's separators."""
    tag = _babel_locale(context)
    if type(value) is int:
        return _cached_number(value, tag)
    return format_decimal(value, locale=_locale(tag))

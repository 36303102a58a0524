"""The pure parsers of one cell each (docs/clients.md): a value is returned in its stored form,
or FieldError names the column and the reason. The parsers of the few values a column repeats
(locales, currencies) keep their answers: Babel's parsing was a third of an import."""

from __future__ import annotations

import enum
import functools
import re
import unicodedata
import zoneinfo
from datetime import UTC, date, datetime, time
from decimal import Context, Decimal, InvalidOperation

from babel import Locale, UnknownLocaleError
from babel.numbers import is_currency

from followup.domain.money import minor_digits
from followup.domain.territories import countries


class FieldError(ValueError):
    """A cell's value is invalid; raised by the pure parsers below."""

    def __init__(self, column: str, reason: str) -> None:
        super().__init__(f"{column}: {reason}")
        self.column = column
        self.reason = reason


_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
# Control characters and the other line breaks of str.splitlines() (U+0085, U+2028, U+2029).
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
_TRUE = {"true", "yes", "1", "y"}
_FALSE = {"false", "no", "0", "n"}


def parse_email(value: str, column: str = "email") -> str:
    value = value.strip()
    if len(value) > 254 or not _EMAIL.fullmatch(value) or ".." in value:
        raise FieldError(column, f"{value!r} is not a valid e-mail address")
    local = value.split("@", 1)[0]
    if len(local) > 64 or local.startswith(".") or local.endswith("."):
        raise FieldError(column, f"{value!r} is not a valid e-mail address")
    return value


def parse_text(value: str, column: str, max_length: int, *, required: bool = True) -> str:
    value = value.strip()
    if required and not value:
        raise FieldError(column, "is required")
    if _CONTROL.search(value):
        raise FieldError(column, "contains control characters (line breaks, tabs, ...)")
    if len(value) > max_length:
        raise FieldError(column, f"is longer than {max_length} characters")
    return value


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def parse_timezone(value: str, column: str = "timezone") -> str:
    value = value.strip()
    if value not in _zones():
        raise FieldError(column, f"{value!r} is not an IANA time zone (e.g. Europe/Paris)")
    return value


@functools.lru_cache(maxsize=4096)
def parse_locale(value: str, column: str = "locale") -> str:
    """A BCP 47 tag (fr, en-US, fr-CA); returned in its canonical form."""
    value = value.strip()
    try:
        locale = Locale.parse(value.replace("_", "-"), sep="-")
    except (UnknownLocaleError, ValueError, TypeError):
        raise FieldError(column, f"{value!r} is not a known locale (e.g. en, en-US, fr)") from None
    tag = locale.language
    if locale.script:
        tag += "-" + locale.script
    if locale.territory:
        tag += "-" + locale.territory
    return tag


@functools.lru_cache(maxsize=1024)
def parse_country(value: str, column: str = "country") -> str:
    code = value.strip().upper()
    if code not in countries():
        raise FieldError(column, f"{value.strip()!r} is not an ISO 3166 alpha-2 country code")
    return code


def parse_birthday(value: str, column: str = "birthday") -> tuple[int | None, int, int]:
    """YYYY-MM-DD, or --MM-DD without a year. Returns (year, month, day)."""
    value = value.strip()
    match = re.fullmatch(r"([0-9]{4}|-)-([0-9]{2})-([0-9]{2})", value)
    if not match:
        raise FieldError(column, f"{value!r} is not YYYY-MM-DD or --MM-DD")
    year = None if match[1] == "-" else int(match[1])
    month, day = int(match[2]), int(match[3])
    try:
        # A year-less birthday may be 29 February: check it against a leap year.
        date(year if year is not None else 2000, month, day)
    except ValueError:
        raise FieldError(column, f"{value!r} is not a date") from None
    if year is not None and not 1850 <= year <= 2100:
        raise FieldError(column, f"{value!r}: year out of range")
    return year, month, day


def parse_signature(value: str, column: str = "signature") -> str:
    """Several lines are allowed; other control characters (NUL, ...) are not."""
    value = value.replace("\r\n", "\n").strip()
    if re.search(r"[\x00-\x08\x0b-\x1f\x7f]", value):
        raise FieldError(column, "contains control characters")
    if len(value) > 2000:
        raise FieldError(column, "is longer than 2000 characters")
    return value


def parse_bool(value: str, column: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise FieldError(column, f"{value!r} is not true/false")


#: The words of a marketing consent cell (any case): yes, no, unknown and their usual
#: spellings in exports (true/false, 1/0, y/n).
_CONSENT = {
    **dict.fromkeys(("yes", "y", "true", "1"), "yes"),
    **dict.fromkeys(("no", "n", "false", "0"), "no"),
    "unknown": "unknown",
}


def parse_consent(value: str, column: str = "marketing_consent") -> str:
    """A marketing consent cell -> yes, no or unknown."""
    found = _CONSENT.get(value.strip().lower())
    if found is None:
        raise FieldError(
            column, f"{value.strip()!r} is not yes, no or unknown (or true/false, 1/0, y/n)"
        )
    return found


@functools.cache
def _choices(choices: type[enum.StrEnum]) -> tuple[str, ...]:
    return tuple(c.value for c in choices)


def parse_choice(value: str, column: str, choices: type[enum.StrEnum]) -> str:
    lowered = value.strip().lower()
    allowed = _choices(choices)
    if lowered not in allowed:
        raise FieldError(column, f"{value.strip()!r} is not one of {', '.join(allowed)}")
    return lowered


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@functools.lru_cache(maxsize=4096)
def parse_instant(value: str, zone: str, column: str = "purchased_at") -> datetime:
    """ISO 8601; a date alone is midnight, and a time without offset is local, in `zone`.
    Kept for the dates a file repeats (a day's orders)."""
    value = value.strip()
    try:
        if _DATE.fullmatch(value):
            naive = datetime.combine(date.fromisoformat(value), time())
        else:
            naive = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise FieldError(column, f"{value!r} is not an ISO 8601 date or date-time") from None
    if naive.tzinfo is None:
        naive = naive.replace(tzinfo=zoneinfo.ZoneInfo(zone))
    if not 1900 <= naive.year <= 2200:
        raise FieldError(column, f"{value!r}: year out of range (1900..2200)")
    return naive.astimezone(UTC)


#: The spaces that may group thousands: the space, the no-break space and the narrow one.
_SPACES = " \u00a0\u202f"
#: A number plain_number returns as it is with the decimal point ".".
_PLAIN = re.compile(r"[0-9]+(?:\.[0-9]+)?")
#: How to name the setting of a file's decimal mark in an error.
DECIMAL_OPTION = '--decimal , (or decimal = "," in the import mapping)'


def plain_number(value: str, column: str = "amount", decimal: str = ".") -> str:
    """A number as the file writes it -> the same number with "." as decimal point and no
    thousands separators (docs/clients.md#amounts).

    `decimal` is the file's decimal mark, "." or ",". The other mark and spaces may group
    thousands by three ("1,234.50", "1 234,50", "1.234.567,00"). With the default ".", one
    comma before exactly three digits and nothing else ("1,234") is ambiguous: it is refused,
    naming the option, rather than guessed. A currency symbol is refused (the currency is a
    column of its own). A value that is not made of digits and marks is returned as it is,
    for parse_amount to judge."""
    text = value.strip()
    if decimal == "." and _PLAIN.fullmatch(text):
        # Digits with at most a decimal point: the same number (the common case, fast).
        return text
    return number_rules(text, column, decimal)


def number_rules(text: str, column: str, decimal: str) -> str:
    """plain_number of a stripped `text`, by every rule (plain_number skips them for plain
    digits with a decimal point, which they return as they are)."""
    if any(unicodedata.category(c) == "Sc" for c in text):
        raise FieldError(
            column, f"{text!r}: remove the currency symbol (the currency has its own column)"
        )
    if not re.fullmatch(r"[0-9][0-9.,\u0020\u00a0\u202f]*", text):
        return text
    group = "," if decimal == "." else "."
    number = re.fullmatch(
        rf"([0-9]{{1,3}}([{re.escape(group)}{_SPACES}])[0-9]{{3}}(?:\2[0-9]{{3}})*|[0-9]+)"
        rf"(?:{re.escape(decimal)}([0-9]+))?",
        text,
    )
    if number is None:
        if decimal == "." and ("," in text or text.count(".") > 1):
            raise FieldError(
                column,
                f"{text!r} is not a number with a decimal point; "
                f"for a decimal comma, import with {DECIMAL_OPTION}",
            )
        raise FieldError(
            column,
            f"{text!r} is not a number (decimal mark {decimal!r}, thousands grouped by three)",
        )
    whole, separator, fraction = number[1], number[2], number[3]
    if decimal == "." and separator == "," and fraction is None and text.count(",") == 1:
        raise FieldError(
            column,
            f"{text!r} is ambiguous (1234 or 1.234?): write it without the comma, or with "
            f"its decimals ({text}.00), or import with {DECIMAL_OPTION} if the comma is the "
            "decimal mark",
        )
    digits = re.sub(rf"[{re.escape(group)}{_SPACES}]", "", whole)
    return digits if fraction is None else f"{digits}.{fraction}"


@functools.lru_cache(maxsize=4096)
def parse_amount(value: str, currency: str, column: str = "amount", decimal: str = ".") -> int:
    """A decimal amount -> minor units of `currency` (cents); the file's number format as
    plain_number reads it.

    With the default decimal point, one dot before exactly three digits ("14.450", "1.000") is
    ambiguous for a currency of fewer decimals: 14.45, or 14450 from a file whose dots group
    thousands? It is refused, naming the option, unless the currency has three decimals. Kept
    for the prices a file repeats."""
    text = plain_number(value, column, decimal)
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise FieldError(column, f"{text!r} is not a number") from None
    if not amount.is_finite() or amount < 0:
        raise FieldError(column, f"{text!r} is not a non-negative amount")
    if amount != 0 and amount.adjusted() > 15:
        raise FieldError(column, f"{text!r} is too large")
    precision = minor_digits(currency)
    # Exact arithmetic: a wide context, and equality to decide whether anything was dropped.
    exact = Context(prec=60)
    quantized = amount.quantize(Decimal(1).scaleb(-precision), context=exact)
    if quantized != amount:
        raise FieldError(column, f"{text!r} has more than {precision} decimals for {currency}")
    if decimal == "." and re.fullmatch(r"[0-9]{1,3}\.[0-9]{3}", text) and precision < 3:
        raise FieldError(
            column,
            f"{text!r} is ambiguous for {currency} ({text.replace('.', '')} with a dot that "
            f"groups thousands?): write it with {precision} decimals, or import "
            f"with {DECIMAL_OPTION} if the file's decimal mark is the comma",
        )
    minor = quantized.scaleb(precision, context=exact)
    if minor > 10**15:
        raise FieldError(column, f"{text!r} is too large")
    return int(minor)


@functools.lru_cache(maxsize=1024)
def parse_currency(value: str, column: str = "currency") -> str:
    code = value.strip().upper()
    if not re.fullmatch(r"[A-Z]{3}", code) or not is_currency(code):
        raise FieldError(column, f"{value.strip()!r} is not an ISO 4217 currency code")
    return code

"""A CSV row -> a validated record of reps, clients or purchases (docs/clients.md): every
column a kind of file has, and the record each row becomes. Pure: references to other rows
(a client's rep, a purchase's client) stay external ids for the importer to resolve."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from followup.domain.statuses import ClientStatus, Consent, PurchaseStatus
from followup.domain.territories import NO_DEFAULTS, NoValue, TerritoryDefaults
from followup.importing.fields import (
    FieldError,
    parse_amount,
    parse_birthday,
    parse_bool,
    parse_choice,
    parse_consent,
    parse_country,
    parse_currency,
    parse_email,
    parse_instant,
    parse_locale,
    parse_signature,
    parse_text,
    parse_timezone,
)


class _Fields:
    """A record built a column at a time, collecting every column's error (not only the
    first): `done` returns the record, or raises the error (ManyErrors for several)."""

    def __init__(self) -> None:
        self.record: dict[str, Any] = {}
        self.errors: list[FieldError] = []

    def take(self, key: str, parse: Callable[[], Any]) -> Any:
        """The parsed value, stored under `key`; None (and the error kept) if invalid."""
        try:
            value = parse()
        except FieldError as exc:
            self.errors.append(exc)
            return None
        self.record[key] = value
        return value

    def done(self) -> dict[str, Any]:
        if self.errors:
            raise self.errors[0] if len(self.errors) == 1 else ManyErrors(self.errors)
        return self.record


def rep_record(row: Mapping[str, str]) -> dict[str, Any]:
    fields = _Fields()
    fields.take("external_id", lambda: parse_text(row["id"], "id", 128))
    fields.take("name", lambda: parse_text(row["name"], "name", 256))
    fields.take("email", lambda: parse_email(row["email"]))
    fields.take("signature", lambda: parse_signature(row.get("signature", "")))
    active = row.get("active", "")
    fields.take("active", lambda: True if not active.strip() else parse_bool(active, "active"))
    return fields.done()


def client_record(
    row: Mapping[str, str], defaults: TerritoryDefaults = NO_DEFAULTS, now: datetime | None = None
) -> dict[str, Any]:
    """A validated client; `rep` stays an external id for the store to resolve. A zone or
    locale the row does not give is inferred from the country (`defaults`, as of `now`), and
    `inferred` names those columns ("timezone,locale"; "" when both were given)."""
    errors: list[FieldError] = []
    record: dict[str, Any] = {}

    def take(key: str, fn: Callable[[], Any]) -> None:
        try:
            record[key] = fn()
        except FieldError as exc:
            errors.append(exc)

    take("external_id", lambda: parse_text(row["id"], "id", 128))
    take("email", lambda: parse_email(row["email"]))
    take("first_name", lambda: parse_text(row["first_name"], "first_name", 256))
    take("last_name", lambda: parse_text(row["last_name"], "last_name", 256, required=False))
    try:
        country: str | None = parse_country(row["country"])
    except FieldError:
        country = None  # reported below, after the zone and locale (the columns' order)
    inferred = _zone_and_locale(row, country, record, errors, defaults, now or datetime.now(UTC))
    record["inferred"] = ",".join(inferred)
    take("country", lambda: parse_country(row["country"]))
    birthday = row.get("birthday", "").strip()
    if birthday:
        take("birthday", lambda: parse_birthday(birthday))
    else:
        record["birthday"] = (None, None, None)
    take("rep", lambda: parse_text(row.get("rep", ""), "rep", 128, required=False))
    # Lower-cased before its length is checked: a lower-cased letter may be longer (İ).
    take("tier", lambda: parse_text(row.get("tier", "").lower(), "tier", 64, required=False))
    take("tags", lambda: parse_text(row.get("tags", ""), "tags", 1024, required=False))
    status = row.get("status", "").strip()
    record["status"] = ClientStatus.ACTIVE.value
    if status:
        take("status", lambda: parse_choice(status, "status", ClientStatus))
    if "marketing_consent" in row:
        zone = record.get("timezone", "UTC")
        take("consent", lambda: consent_cells(row, zone))
    if errors:
        raise errors[0] if len(errors) == 1 else ManyErrors(errors)
    year, month, day = record.pop("birthday")
    record.update(birthday_year=year, birthday_month=month, birthday_day=day)
    return record


def _zone_and_locale(
    row: Mapping[str, str],
    country: str | None,
    record: dict[str, Any],
    errors: list[FieldError],
    defaults: TerritoryDefaults,
    now: datetime,
) -> list[str]:
    """The row's locale and zone into `record`, each given or else inferred from `country`;
    returns the columns inferred, in the order "timezone", "locale". Without a valid country
    nothing is inferred (the country's error is the row's)."""
    inferred: list[str] = []
    for column, parse in (("locale", parse_locale), ("timezone", parse_timezone)):
        given = row.get(column, "")
        if given.strip():
            try:
                record[column] = parse(given)
            except FieldError as exc:
                errors.append(exc)
            continue
        if country is None:
            continue
        try:
            found = defaults.infer(column, country, now)
        except NoValue as exc:
            errors.append(FieldError(column, str(exc)))
            continue
        record[column] = found.value
        inferred.insert(0, column)
    return inferred


#: A client's marketing consent as a file gives it: (state, source, date), each None when its
#: cell is empty (or its column absent).
GivenConsent = tuple[str | None, str | None, datetime | None]
#: The consent stored for a client (marketing_consent, consent_source, consent_at).
StoredConsent = tuple[str, str | None, datetime | None]


def consent_cells(row: Mapping[str, str], zone: str) -> GivenConsent:
    """The marketing_consent, consent_source and consent_at cells of a row (a date alone is
    midnight, a time without offset local, in the client's `zone`). A date without a state is
    an error: it would date a consent to nothing. A source without a state says nothing and is
    left aside (a preset names its platform as the source of every row, a blank state
    included)."""
    state = row.get("marketing_consent", "").strip()
    source = parse_text(row.get("consent_source", ""), "consent_source", 128, required=False)
    at_text = row.get("consent_at", "").strip()
    at = parse_instant(at_text, zone, "consent_at") if at_text else None
    if not state:
        if at is not None:
            raise FieldError("consent_at", "is given without a marketing_consent value")
        return None, None, None
    return parse_consent(state), source or None, at


def settle_consent(
    given: GivenConsent, stored: StoredConsent | None, origin: str, now: datetime
) -> StoredConsent:
    """The consent to store for a client, from what the file gives and what is stored
    (None: a new client). An empty state keeps what is stored (a new client's is unknown).
    The stored state itself keeps its source and date, so that importing the same file every
    night changes nothing. A "no" stored (an unsubscribe, `followup consent`, an earlier file)
    is lifted only by a file that dates its consent after it: a nightly export that still says
    "yes" never undoes a client's "no". A file's "no" always applies. A state without a source
    or a date takes them from the import (`origin`, "import:clients.csv", and `now`)."""
    state, source, at = given
    if state is None:
        return stored if stored is not None else (Consent.UNKNOWN.value, None, None)
    if stored is not None and stored[0] == state:
        return stored
    lifted = at is not None and (stored is None or stored[2] is None or at > stored[2])
    if stored is not None and stored[0] == Consent.NO.value and not lifted:
        return stored
    return state, source or origin, at or now


def purchase_record(row: Mapping[str, str], client_zone: str | None) -> dict[str, Any]:
    """A validated purchase; `client` stays an external id. `client_zone` is None when the
    client is unknown, which is an error of the row; its date is then still checked (read in
    UTC), so that every error of the row is reported. An amount is checked against its
    currency's decimals, so only when the currency is valid."""
    fields = _Fields()
    fields.take("external_id", lambda: parse_text(row["id"], "id", 128))
    client = fields.take("client", lambda: parse_text(row["client"], "client", 128))
    if client is not None and client_zone is None:
        fields.errors.append(
            FieldError("client", f"no client with id {client!r} (import clients first)")
        )
    zone = client_zone or "UTC"
    fields.take("purchased_at", lambda: parse_instant(row["purchased_at"], zone))
    fields.take("product", lambda: parse_text(row["product"], "product", 512))
    currency = fields.take("currency", lambda: parse_currency(row["currency"]))
    if currency is not None:
        fields.take("amount_minor", lambda: parse_amount(row["amount"], currency))
    fields.record["status"] = PurchaseStatus.PAID.value
    status = row.get("status", "").strip()
    if status:
        fields.take("status", lambda: parse_choice(status, "status", PurchaseStatus))
    return fields.done()


class ManyErrors(ValueError):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors

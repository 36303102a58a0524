"""The pure parts of erasure (tests/integration/test_erase.py erases in real databases): the
suppression list's keyed hash, and the days an erased client's touches are moved to."""

from __future__ import annotations

import hashlib
from datetime import date

from followup.storage.privacy import KEYED, _Kept, _occurrences, keyed_hash

KEY, OTHER_KEY = b"k" * 32, b"o" * 32


def test_the_keyed_hash_is_the_same_for_any_spelling_and_differs_by_key() -> None:
    digest = keyed_hash(KEY, "Ann@Example.com ")
    assert digest == keyed_hash(KEY, "ann@example.com")
    assert digest != keyed_hash(OTHER_KEY, "ann@example.com")
    assert digest.startswith(KEYED) and len(digest) == len(KEYED) + 64
    # Neither the address nor its plain SHA-256 (checkable against a list) is in it.
    assert "ann" not in digest.removeprefix(KEYED)
    assert hashlib.sha256(b"ann@example.com").hexdigest() not in digest


def test_erased_touches_move_to_the_first_days_of_their_year_one_per_campaign_and_day() -> None:
    kept = [
        _Kept(1, "thank_you", date(2026, 11, 21)),
        _Kept(2, "thank_you", date(2026, 3, 14)),
        _Kept(3, "birthday", date(2026, 8, 23)),
        _Kept(4, "thank_you", date(2027, 8, 23)),
        _Kept(5, "thank_you", date(2026, 1, 1)),
    ]
    moved = _occurrences(kept)
    assert moved == {
        5: date(2026, 1, 1),
        2: date(2026, 1, 2),
        1: date(2026, 1, 3),
        3: date(2026, 1, 1),
        4: date(2027, 1, 1),
    }

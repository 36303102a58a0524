"""Currency amounts in minor units: how many decimals each currency's amounts are stored with.

Purchases are stored as integers in the currency's minor unit (cents, pence, fils). What the
integer means must never change once it is stored, so the number of decimals is followup's
own, not read from the installed Babel: CLDR changes its currency digits from one release to
the next (CLDR 48, in Babel 2.18, went from 2 to 0 for COP, HUF and IDR and from 0 to 2 for
RSD), which would show every stored rupiah amount a hundred times too large.

The table is CLDR 47's (Babel 2.17), the data followup's amounts have been stored with. A
currency not listed has 2. Babel still decides how an amount is written (symbol, grouping,
the decimals shown).
"""

from __future__ import annotations

#: Currencies whose amounts are stored without decimals, with 3 and with 4 (others: 2).
_NONE = (
    "ADP AFN ALL BIF BYR CLP DJF ESP GNF IQD IRR ISK ITL JPY KMF KPW KRW LAK LBP LUF "
    "MGA MGF MMK MRO PYG RSD RWF SLL SOS STD SYP TMM TRL UGX UYI VND VUV XAF XOF XPF "
    "YER ZMK ZWD"
)
_THREE = "BHD JOD KWD LYD OMR TND"
_FOUR = "CLF UYW"
DIGITS: dict[str, int] = {
    **dict.fromkeys(_NONE.split(), 0),
    **dict.fromkeys(_THREE.split(), 3),
    **dict.fromkeys(_FOUR.split(), 4),
}


def minor_digits(currency: str) -> int:
    """How many decimals `currency`'s amounts are stored with (its minor unit)."""
    return DIGITS.get(currency.upper(), 2)

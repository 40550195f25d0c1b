"""Read and write sizes, bandwidths, durations and FLOP rates with SI or binary suffixes.

Every ``parse_*`` function takes the value as the user wrote it (a string such as ``"16GiB"``,
or a bare YAML number) and the name of the field it came from, and returns a float in one
fixed unit: bytes, bytes/s, seconds or FLOP/s. A bare number is read in the field's stated
unit. A value that cannot be read raises `RlplaceError` naming the field and the value, e.g.
``memory: cannot read '16 GX' as a size; use e.g. 16GB or 16GiB``.

Suffixes:
    sizes       ``B``, ``KB`` ``MB`` ``GB`` ``TB`` ``PB`` (powers of 1000),
                ``KiB`` ``MiB`` ``GiB`` ``TiB`` ``PiB`` (powers of 1024).
    bandwidths  a size per second (``GB/s``, ``GiB/s``, ``TB/s``, ``GBps``), or bits per second
                (``Gbps``, ``Gbit/s``, ``Gb/s``; 1 Gbit/s = 0.125 GB/s). A capital ``B`` is a byte,
                a small ``b`` a bit.
    durations   ``s``, ``ms``, ``us`` (also ``µs``, ``μs``), ``ns``.
    FLOP rates  ``FLOPS`` or ``FLOP/s`` with an SI prefix (``TFLOPS``, ``TFLOP/s``, ``GFLOPS``).

Arithmetic runs in `decimal.Decimal`, so ``parse_bytes("1.5GiB")`` is exactly 1610612736 and
``parse_flops("15.7TFLOPS")`` is the float nearest to 15.7e12, as the literal would be. The
``format_*`` functions write a value back in a readable unit that parses to the same float;
``show_bytes`` and ``show_time`` write values for people (messages and tables), rounded. This
module is the one owner of byte and time formatting.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

from rlplace.errors import RlplaceError

_SI = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
_BINARY = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}
_DURATIONS = {"s": Decimal(1), "ms": Decimal("1e-3"), "us": Decimal("1e-6"), "µs": Decimal("1e-6"), "μs": Decimal("1e-6"), "ns": Decimal("1e-9")}

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_QUANTITY = re.compile(rf"^\s*(?P<number>{_NUMBER})\s*(?P<unit>\S*)\s*$")
# prefix, optional "i" (binary), then a byte ("B", "byte", "bytes") or a bit ("b", "bit", "bits").
_DATA_UNIT = re.compile(r"^(?P<prefix>[kKMGTP]?)(?P<binary>i?)(?P<base>B|bytes?|b|bits?)$")
_RATE_SUFFIX = re.compile(r"(/s|ps)$")
_FLOPS_UNIT = re.compile(r"^(?P<prefix>[kKMGTP]?)(?:FLOPS|FLOP/s)$", re.IGNORECASE)
_UNLIMITED = ("unlimited", "inf", "infinity")

_SIZE_HINT = "use e.g. 16GB or 16GiB"
_BANDWIDTH_HINT = "use e.g. 900GB/s, 12.5GiB/s or 100Gbps"
_DURATION_HINT = "use e.g. 5us, 2ms or 0.001s"
_FLOPS_HINT = "use e.g. 15.7 (TFLOPS) or 15.7TFLOPS"


def parse_bytes(text: str | int | float, field: str, *, allow_unlimited: bool = False) -> float:
    """A size in bytes: ``"16GB"`` -> 16e9, ``"16GiB"`` -> 17179869184.0, a bare number is bytes.

    With ``allow_unlimited``, ``"unlimited"`` (or ``inf``) reads as ``math.inf``.
    Returns: bytes, a positive float.
    """
    if allow_unlimited and _is_unlimited(text):
        return math.inf
    number, unit = _split(text, field, "a size", _SIZE_HINT)
    scale = _data_scale(unit, per_second=False)
    if scale is None:
        raise _cannot_read(text, field, "a size", _SIZE_HINT)
    return _positive(number * scale, text, field)


def parse_bandwidth(text: str | int | float, field: str, *, allow_unlimited: bool = False) -> float:
    """A bandwidth in bytes/s: ``"900GB/s"`` -> 9e11, ``"100Gbps"`` -> 1.25e10; a bare number is bytes/s.

    With ``allow_unlimited``, ``"unlimited"`` (or ``inf``) reads as ``math.inf`` (free transfers).
    Returns: bytes per second, a positive float.
    """
    if allow_unlimited and _is_unlimited(text):
        return math.inf
    number, unit = _split(text, field, "a bandwidth", _BANDWIDTH_HINT)
    scale = _data_scale(unit, per_second=True)
    if scale is None:
        raise _cannot_read(text, field, "a bandwidth", _BANDWIDTH_HINT)
    return _positive(number * scale, text, field)


def parse_duration(text: str | int | float, field: str) -> float:
    """A duration in seconds: ``"5us"`` -> 5e-06, ``"2ms"`` -> 0.002; a bare number is seconds.

    Returns: seconds, a non-negative float (a zero latency is allowed).
    """
    number, unit = _split(text, field, "a duration", _DURATION_HINT)
    if unit and unit not in _DURATIONS:
        raise _cannot_read(text, field, "a duration", _DURATION_HINT)
    value = _to_float(number * _DURATIONS.get(unit, Decimal(1)), text, field)
    if value < 0:
        raise RlplaceError(f"{field}: {_show(text)} must not be negative")
    return value


def parse_flops(text: str | int | float, field: str, *, bare_unit: float = 1e12) -> float:
    """A FLOP rate in FLOP/s: ``"15.7TFLOPS"`` -> 1.57e13, ``"900GFLOP/s"`` -> 9e11.

    A bare number is in ``bare_unit`` FLOP/s (TFLOPS by default, as in the ``tflops`` fields).
    Returns: FLOP per second, a positive float.
    """
    number, unit = _split(text, field, "a FLOP rate", _FLOPS_HINT)
    if not unit:
        return _positive(number * Decimal(repr(float(bare_unit))), text, field)
    match = _FLOPS_UNIT.match(unit)
    if match is None:
        raise _cannot_read(text, field, "a FLOP rate", _FLOPS_HINT)
    return _positive(number * _SI[match["prefix"].upper()], text, field)


def format_bytes(value: float) -> str:
    """``value`` bytes as text that `parse_bytes` reads back exactly (``"16GiB"``, ``"40GB"``)."""
    if math.isinf(value):
        return "unlimited"
    return _format(value, [("GiB", 2**30), ("GB", 10**9), ("MiB", 2**20), ("MB", 10**6), ("KiB", 2**10), ("B", 1)], lambda t: parse_bytes(t, "value"))


def show_bytes(value: float) -> str:
    """``value`` bytes for people (messages, tables): SI units, 3 significant digits
    (``"20 GB"``, ``"1.5 MB"``, ``"512 B"``), ``"unlimited"`` for an uncapped device.
    Not exact: use `format_bytes` for text that must read back."""
    if not math.isfinite(value):
        return "unlimited"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} B"


def show_time(value: float | None, unit: str) -> str:
    """A duration for people: seconds as s/ms/us, other units (profiled graphs) as plain
    numbers with their unit, ``—`` for none."""
    if value is None or not math.isfinite(value):
        return "—"
    if unit != "s":
        return f"{value:.6g} {unit}"
    if value >= 1:
        return f"{value:.3f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.3f} ms"
    return f"{value * 1e6:.1f} us"


def format_bandwidth(value: float) -> str:
    """``value`` bytes/s as text that `parse_bandwidth` reads back exactly (``"900GB/s"``)."""
    if math.isinf(value):
        return "unlimited"
    return _format(value, [("TB/s", 10**12), ("GB/s", 10**9), ("MB/s", 10**6), ("B/s", 1)], lambda t: parse_bandwidth(t, "value"))


def format_duration(value: float) -> str:
    """``value`` seconds as text that `parse_duration` reads back exactly (``"5us"``)."""
    units = [("s", Decimal(1)), ("ms", Decimal("1e-3")), ("us", Decimal("1e-6")), ("ns", Decimal("1e-9"))]
    return _format(value, units, lambda t: parse_duration(t, "value"))


def format_tflops(value: float) -> str:
    """``value`` FLOP/s as a bare number of TFLOPS that `parse_flops` reads back exactly."""
    return _format(value, [("", 10**12)], lambda t: parse_flops(t, "value"), fallback_unit="FLOPS")


def _is_unlimited(text: str | int | float) -> bool:
    if isinstance(text, float) and math.isinf(text) and text > 0:
        return True
    return isinstance(text, str) and text.strip().lower() in _UNLIMITED


def _split(text: str | int | float, field: str, what: str, hint: str) -> tuple[Decimal, str]:
    """(number, unit) of ``text``; a bare YAML number has the unit ``""``."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise _cannot_read(text, field, what, hint)
    if isinstance(text, (int, float)):
        if not math.isfinite(text):
            raise _cannot_read(text, field, what, hint)
        return Decimal(repr(text)), ""
    match = _QUANTITY.match(text)
    if match is None:
        raise _cannot_read(text, field, what, hint)
    try:
        number = Decimal(match["number"])
    except InvalidOperation:
        raise _cannot_read(text, field, what, hint) from None
    return number, match["unit"]


def _data_scale(unit: str, *, per_second: bool) -> int | Decimal | None:
    """Bytes per unit (per second for a rate); None when ``unit`` is not one we read."""
    if not unit:
        return 1
    if per_second:
        rate = _RATE_SUFFIX.search(unit)
        if rate is None:
            return None
        unit = unit[: rate.start()]
    match = _DATA_UNIT.match(unit)
    if match is None:
        return None
    prefix = match["prefix"].upper()
    is_bit = match["base"] in ("b", "bit", "bits")
    if match["binary"]:
        if not prefix:
            return None
        multiplier = _BINARY[prefix]
    else:
        multiplier = _SI[prefix]
    if is_bit:
        # Memory sizes in bits are almost always a typo for bytes ("16Gb" meant "16GB").
        return Decimal(multiplier) / 8 if per_second else None
    return multiplier


def _positive(value: Decimal, text: str | int | float, field: str) -> float:
    result = _to_float(value, text, field)
    if not result > 0:
        raise RlplaceError(f"{field}: {_show(text)} must be positive")
    return result


def _to_float(value: Decimal, text: str | int | float, field: str) -> float:
    result = float(value)
    if math.isinf(result):
        raise RlplaceError(f"{field}: {_show(text)} is too large")
    return result


def _cannot_read(text: object, field: str, what: str, hint: str) -> RlplaceError:
    return RlplaceError(f"{field}: cannot read {_show(text)} as {what}; {hint}")


def _show(text: object) -> str:
    return repr(text) if isinstance(text, str) else repr(str(text))


def _format(value: float, units: list[tuple[str, int | Decimal]], parse: Callable[[str], float], fallback_unit: str = "") -> str:
    """The shortest ``f"{number}{unit}"`` with ``number >= 1`` that ``parse`` reads back as ``value``."""
    exact = Decimal(repr(float(value)))
    if exact == 0:
        return "0" + units[0][0]
    candidates = []
    for position, (unit, scale) in enumerate(units):
        number = exact / Decimal(scale)
        if abs(number) < 1 and position < len(units) - 1:
            continue
        text = _plain(number) + unit
        if parse(text) == value:
            candidates.append(text)
    return min(candidates, key=len) if candidates else _plain(exact) + fallback_unit


def _plain(number: Decimal) -> str:
    """``number`` without exponent or trailing zeros (``Decimal("5.000")`` -> ``"5"``)."""
    text = format(number.normalize(), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text

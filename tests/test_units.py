"""Tests for rlplace.units: exact values of every suffix, error messages, exact write-back."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlplace.errors import RlplaceError
from rlplace.units import format_bandwidth, format_bytes, format_duration, format_tflops, parse_bandwidth, parse_bytes, parse_duration, parse_flops


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100B", 100),
        ("1KB", 1000),
        ("1kB", 1000),
        ("1KiB", 1024),
        ("1MB", 10**6),
        ("1MiB", 2**20),
        ("16GB", 16 * 10**9),
        ("16GiB", 16 * 2**30),
        ("16 GiB", 16 * 2**30),
        ("1.5GiB", 1610612736),
        ("0.5MiB", 524288),
        ("2TB", 2 * 10**12),
        ("1TiB", 2**40),
        ("1e3MB", 10**9),
        ("40 bytes", 40),
        (4096, 4096),
        (1.5e9, 1.5e9),
    ],
)
def test_parse_bytes(text: str | int | float, expected: float) -> None:
    assert parse_bytes(text, "memory") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("900GB/s", 900e9),
        ("900 GB/s", 900e9),
        ("3.35TB/s", 3.35e12),
        ("1555GB/s", 1555e9),
        ("12.5GiB/s", 12.5 * 2**30),
        ("25GBps", 25e9),
        ("100Gbps", 12.5e9),
        ("100Gbit/s", 12.5e9),
        ("100Gb/s", 12.5e9),
        ("800Mbps", 100e6),
        ("1Kibit/s", 128),
        ("8bps", 1),
        (1e9, 1e9),
    ],
)
def test_parse_bandwidth(text: str | int | float, expected: float) -> None:
    assert parse_bandwidth(text, "bandwidth") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5us", 5e-6),
        ("5µs", 5e-6),  # micro sign U+00B5
        ("5μs", 5e-6),  # Greek mu U+03BC
        ("20 us", 20e-6),
        ("2ms", 2e-3),
        ("0.001s", 1e-3),
        ("10ns", 1e-8),
        ("0s", 0.0),
        (0, 0.0),
        (1.5, 1.5),
    ],
)
def test_parse_duration(text: str | int | float, expected: float) -> None:
    assert parse_duration(text, "latency") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15.7TFLOPS", 15.7e12),
        ("15.7 TFLOP/s", 15.7e12),
        ("15.7", 15.7e12),
        (15.7, 15.7e12),
        (125, 125e12),
        ("900GFLOPS", 900e9),
        ("1PFLOPS", 1e15),
        ("2e12FLOPS", 2e12),
        ("19.5tflops", 19.5e12),
    ],
)
def test_parse_flops(text: str | int | float, expected: float) -> None:
    # Exact equality: the decimal arithmetic gives the float nearest the true product, like the literal.
    assert parse_flops(text, "tflops") == expected


def test_bare_flops_unit_can_be_changed() -> None:
    assert parse_flops("2", "gflops", bare_unit=1e9) == 2e9


def test_unlimited_only_where_allowed() -> None:
    assert parse_bytes("unlimited", "memory", allow_unlimited=True) == math.inf
    assert parse_bytes(math.inf, "memory", allow_unlimited=True) == math.inf
    assert parse_bandwidth("inf", "bandwidth", allow_unlimited=True) == math.inf
    with pytest.raises(RlplaceError, match="memory"):
        parse_bytes("unlimited", "memory")


def test_error_message_names_field_value_and_example() -> None:
    with pytest.raises(RlplaceError) as info:
        parse_bytes("16 GX", "memory")
    assert str(info.value) == "memory: cannot read '16 GX' as a size; use e.g. 16GB or 16GiB"


@pytest.mark.parametrize(
    ("parser", "value", "fragment"),
    [
        (parse_bytes, "16 GX", "cannot read '16 GX' as a size"),
        (parse_bytes, "16Gb", "cannot read '16Gb' as a size"),  # gigabits: almost surely a typo
        (parse_bytes, "16G", "cannot read '16G'"),
        (parse_bytes, "16iB", "cannot read '16iB'"),
        (parse_bytes, "-1GB", "'-1GB' must be positive"),
        (parse_bytes, 0, "'0' must be positive"),
        (parse_bytes, "nan", "cannot read 'nan'"),
        (parse_bytes, math.nan, "cannot read 'nan'"),
        (parse_bytes, True, "cannot read 'True'"),
        (parse_bytes, None, "cannot read 'None'"),
        (parse_bytes, [16], "cannot read '[16]'"),
        (parse_bytes, "1e400GB", "'1e400GB' is too large"),
        (parse_bytes, "", "cannot read ''"),
        (parse_bandwidth, "900GB", "cannot read '900GB' as a bandwidth"),
        (parse_bandwidth, "fast", "cannot read 'fast' as a bandwidth"),
        (parse_bandwidth, "-5GB/s", "'-5GB/s' must be positive"),
        (parse_bandwidth, "5 GB/min", "cannot read '5 GB/min'"),
        (parse_duration, "5 minutes", "cannot read '5 minutes' as a duration"),
        (parse_duration, "5 Ms", "cannot read '5 Ms' as a duration"),
        (parse_duration, "-1us", "'-1us' must not be negative"),
        (parse_flops, "15.7 GB", "cannot read '15.7 GB' as a FLOP rate"),
        (parse_flops, "-3", "'-3' must be positive"),
    ],
)
def test_bad_values_raise_with_field_and_value(parser, value, fragment: str) -> None:
    with pytest.raises(RlplaceError) as info:
        parser(value, "devices[2].field")
    message = str(info.value)
    assert message.startswith("devices[2].field: ")
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("formatter", "value", "expected"),
    [
        (format_bytes, 16 * 2**30, "16GiB"),
        (format_bytes, 40e9, "40GB"),
        (format_bytes, 512 * 2**20, "512MiB"),
        (format_bytes, 123, "123B"),
        (format_bytes, math.inf, "unlimited"),
        (format_bandwidth, 900e9, "900GB/s"),
        (format_bandwidth, 3.35e12, "3.35TB/s"),
        (format_bandwidth, 12.5e9, "12.5GB/s"),
        (format_bandwidth, math.inf, "unlimited"),
        (format_duration, 5e-6, "5us"),
        (format_duration, 2e-3, "2ms"),
        (format_duration, 0.0, "0s"),
        (format_duration, 1.5, "1.5s"),
        (format_tflops, 15.7e12, "15.7"),
    ],
)
def test_format_is_readable(formatter, value: float, expected: str) -> None:
    assert formatter(value) == expected


positive_floats = st.floats(min_value=1e-6, max_value=1e18, allow_nan=False, allow_infinity=False)


@given(positive_floats)
def test_format_bytes_reads_back_exactly(value: float) -> None:
    assert parse_bytes(format_bytes(value), "memory") == value


@given(positive_floats)
def test_format_bandwidth_reads_back_exactly(value: float) -> None:
    assert parse_bandwidth(format_bandwidth(value), "bandwidth") == value


@given(st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False))
def test_format_duration_reads_back_exactly(value: float) -> None:
    assert parse_duration(format_duration(value), "latency") == value


@given(positive_floats)
def test_format_tflops_reads_back_exactly(value: float) -> None:
    assert parse_flops(format_tflops(value), "tflops") == value

"""The ``x-mlops-timings`` header: stage visits as the gateway saw them."""

from __future__ import annotations

import pytest

from testbed.api import StageTiming, decode_timings, encode_timings


def test_timings_round_trip_with_and_without_the_servers_receive_time() -> None:
    visits = [
        StageTiming("denoise", "denoise-0", "d-small", 1, 0.5, 1.0, 0.2),
        StageTiming("encoder", "encoder-0", "e-large", 3, 0.25, 9.0, 0.3, 1796506270.123456),
    ]
    header = encode_timings(visits)
    assert header.count(":") == 6 + 7  # the stamp only where the server gave one
    assert decode_timings(header) == visits


def test_a_timing_with_too_few_or_too_many_fields_is_refused() -> None:
    with pytest.raises(ValueError, match="malformed stage timing"):
        decode_timings("denoise:denoise-0:d-small:1:0.5:1.0")
    with pytest.raises(ValueError, match="malformed stage timing"):
        decode_timings("denoise:denoise-0:d-small:1:0.5:1.0:0.2:1.0:9")

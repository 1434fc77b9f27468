"""QA cases for the capacity simulator (issue 17) with traffic profiles its builders did not
try, each guarding a defect found running ``python -m bench.capacity`` by hand: every call the
same length (``--length-sigma 0``) or a length window in the lognormal's far tail hung the
simulator, and bad traffic input ended in a traceback instead of one line."""

from __future__ import annotations

import numpy as np
import pytest

from bench.capacity.__main__ import main
from bench.capacity.traffic import TrafficProfile, call_lengths


@pytest.mark.timeout(20)
def test_every_call_sixty_minutes_long() -> None:
    # exp(log(60)) is 60.000000000000007: rejection sampling never accepted a draw.
    profile = TrafficProfile(
        length_median_minutes=60.0, length_sigma=0.0, length_min_minutes=60, length_max_minutes=60
    )
    lengths = call_lengths(profile, 1000, np.random.default_rng(1))
    assert lengths.shape == (1000,)
    assert set(lengths.tolist()) == {60.0}


@pytest.mark.timeout(20)
def test_a_length_window_in_the_far_tail_is_sampled_not_rejected_forever() -> None:
    # 55-60 minute calls around a 5-minute median (sigma 0.3): 8 sigmas out, about one draw in
    # 10^15 falls inside.
    profile = TrafficProfile(
        length_median_minutes=5.0, length_sigma=0.3, length_min_minutes=55, length_max_minutes=60
    )
    lengths = call_lengths(profile, 20_000, np.random.default_rng(1))
    assert lengths.min() >= 55.0 and lengths.max() <= 60.0
    # The truncated lognormal's density falls across the window: more short than long ones.
    assert (lengths < 57.5).sum() > (lengths >= 57.5).sum()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--agents", "-5"], "positive numbers"),
        (["--agents", "abc"], "comma-separated numbers"),
        (["--hourly-weights", "1,2,3"], "24 non-negative numbers"),
        (["--length-min", "10", "--length-max", "5"], "--length-min <= --length-max"),
        (["--upload-delay-min", "100", "--upload-delay-max", "10"], "--upload-delay-max"),
        (["--contacts-per-day", "-3"], "must not be negative"),
    ],
)
def test_bad_traffic_is_one_line_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    assert main([*args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("capacity: ") and message in err[0], err

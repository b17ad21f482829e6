"""The A/B comparison's two-proportion z-test and the ROI arithmetic, against values worked out by hand (and a
textbook example), with no statistics library."""

from __future__ import annotations

import math

import pytest

from voicebot.campaigns.stats import compare, rate, roi, two_proportion_z_test


def normal_cdf(x: float) -> float:
    """Phi(x) from the error function: the same quantity as erfc, written the other way round."""
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_the_z_test_matches_the_worked_example() -> None:
    # 45 of 100 against 60 of 100: pooled p = 105/200 = 0.525, se = sqrt(0.525 * 0.475 * (1/100 + 1/100)).
    se = math.sqrt(0.525 * 0.475 * 0.02)
    z = (0.60 - 0.45) / se
    test = two_proportion_z_test(45, 100, 60, 100)
    assert test is not None
    assert test.z == pytest.approx(z, abs=1e-12) and test.z == pytest.approx(2.1240, abs=1e-4)
    assert test.p_value == pytest.approx(2 * (1 - normal_cdf(z)), abs=1e-12)
    assert test.p_value == pytest.approx(0.0337, abs=1e-4) and test.significant


def test_small_differences_are_not_significant_and_sign_follows_b_minus_a() -> None:
    test = two_proportion_z_test(30, 100, 25, 100)  # B worse than A by 5 points
    assert test is not None and test.z < 0 and not test.significant
    pooled = 55 / 200
    assert test.z == pytest.approx(-0.05 / math.sqrt(pooled * (1 - pooled) * 0.02), abs=1e-12)
    assert test.p_value == pytest.approx(2 * normal_cdf(test.z), abs=1e-12)


def test_degenerate_arms() -> None:
    assert two_proportion_z_test(0, 0, 3, 10) is None  # nobody in arm A
    same = two_proportion_z_test(0, 20, 0, 30)
    assert same is not None and (same.z, same.p_value, same.significant) == (0.0, 1.0, False)
    assert two_proportion_z_test(5, 5, 9, 9) is not None
    with pytest.raises(ValueError):
        two_proportion_z_test(6, 5, 1, 9)


def test_compare_reports_rates_difference_and_significance() -> None:
    out = compare("A", "B", contacts=(100, 100), reached=(45, 60), converted=(10, 11))
    reached = out["reached"]
    assert isinstance(reached, dict)
    assert (reached["rate_a"], reached["rate_b"], reached["difference"], reached["significant"]) == (
        0.45, 0.6, 0.15, True)
    assert reached["p_value"] == round(math.erfc(abs(0.15 / math.sqrt(0.525 * 0.475 * 0.02)) / math.sqrt(2)), 6)
    conversion = out["conversion"]
    assert isinstance(conversion, dict) and conversion["significant"] is False
    empty = compare("A", "B", contacts=(0, 4), reached=(0, 1), converted=(0, 0))["reached"]
    assert isinstance(empty, dict) and (empty["rate_a"], empty["difference"], empty["p_value"]) == (None, None, None)
    assert rate(1, 3) == 0.3333 and rate(0, 0) is None


def test_roi_arithmetic() -> None:
    # 40 attempts at 0.05, 90 answered seconds at 0.02 a minute; 3 conversions at 25.
    out = roi(attempts=40, answered_seconds=90, conversions=3, cost_per_attempt=0.05, cost_per_minute=0.02,
              value_per_conversion=25)
    assert out == {"answered_minutes": 1.5, "cost": 2.03, "value": 75.0, "net": 72.97,
                   "roi": round(72.97 / 2.03, 4), "cost_per_conversion": round(2.03 / 3, 2)}
    free = roi(attempts=3, answered_seconds=0, conversions=0, cost_per_attempt=0, cost_per_minute=0,
               value_per_conversion=10)
    assert (free["cost"], free["roi"], free["cost_per_conversion"]) == (0.0, None, None)

"""Campaign statistics, pure: the A/B comparison of two arms (a two-proportion z-test) and the return on
investment.

:func:`two_proportion_z_test` is the textbook pooled test: with ``p = (x_a + x_b) / (n_a + n_b)``,
``z = (x_b/n_b - x_a/n_a) / sqrt(p (1 - p) (1/n_a + 1/n_b))`` and the two-sided p-value ``erfc(|z| / sqrt 2)``
(twice the normal tail beyond ``|z|``).  Two arms whose rates are both 0 or both 1 differ by nothing: z 0, p 1.
The normal approximation needs enough contacts: with fewer than about 5 successes and 5 failures per arm the
p-value is rough, and ``significant`` (p < 0.05) should be read with that in mind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class ZTest:
    z: float
    p_value: float

    @property
    def significant(self) -> bool:
        return self.p_value < SIGNIFICANCE


def two_proportion_z_test(successes_a: int, total_a: int, successes_b: int, total_b: int) -> ZTest | None:
    """Whether arm B's rate differs from arm A's (see the module); None when an arm has no one to compare."""
    if total_a <= 0 or total_b <= 0:
        return None
    if not (0 <= successes_a <= total_a and 0 <= successes_b <= total_b):
        raise ValueError("successes must be between 0 and the total")
    pooled = (successes_a + successes_b) / (total_a + total_b)
    variance = pooled * (1 - pooled) * (1 / total_a + 1 / total_b)
    if variance == 0:
        return ZTest(0.0, 1.0)
    z = (successes_b / total_b - successes_a / total_a) / math.sqrt(variance)
    return ZTest(z, math.erfc(abs(z) / math.sqrt(2)))


def rate(successes: int, total: int) -> float | None:
    return round(successes / total, 4) if total else None


def compare(name_a: str, name_b: str, *, contacts: tuple[int, int], reached: tuple[int, int],
            converted: tuple[int, int]) -> dict[str, object]:
    """Arm B against arm A: each arm's reached and conversion rates (per contact), B - A, and the z-test of each."""
    out: dict[str, object] = {"a": name_a, "b": name_b}
    for metric, counts in (("reached", reached), ("conversion", converted)):
        rate_a, rate_b = rate(counts[0], contacts[0]), rate(counts[1], contacts[1])
        test = two_proportion_z_test(counts[0], contacts[0], counts[1], contacts[1])
        out[metric] = {
            "rate_a": rate_a, "rate_b": rate_b,
            "difference": round(counts[1] / contacts[1] - counts[0] / contacts[0], 4)
            if contacts[0] and contacts[1] else None,
            "z": round(test.z, 4) if test else None, "p_value": round(test.p_value, 6) if test else None,
            "significant": bool(test and test.significant),
        }
    return out


def roi(*, attempts: int, answered_seconds: float, conversions: int, cost_per_attempt: float,
        cost_per_minute: float, value_per_conversion: float) -> dict[str, float | None]:
    """Cost (attempts placed or sent x their price + answered minutes x the minute price), value (conversions x
    their value), net (value - cost), ``roi`` (net / cost; None without a cost) and the cost per conversion."""
    minutes = answered_seconds / 60
    cost = attempts * cost_per_attempt + minutes * cost_per_minute
    value = conversions * value_per_conversion
    return {
        "answered_minutes": round(minutes, 2), "cost": round(cost, 2), "value": round(value, 2),
        "net": round(value - cost, 2), "roi": round((value - cost) / cost, 4) if cost > 0 else None,
        "cost_per_conversion": round(cost / conversions, 2) if conversions else None,
    }

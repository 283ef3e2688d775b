"""Honest statistics for refusal rates, pure and dependency-free.

- `wilson`: the 95% Wilson score interval of a proportion;
- `p_value`: two-sided p-value of two proportions — Fisher's exact test when any cell of the
  2×2 table is under 5, else the pooled two-proportion z-test.
"""

from __future__ import annotations

import math
from functools import lru_cache

Z_95 = 1.959963984540054  # the 97.5th percentile of the standard normal distribution
SMALL_CELL = 5  # below this in any cell, the normal approximation is not trusted


def wilson(*, successes: int, trials: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval of successes ÷ trials; None when there are no trials."""
    if trials < 0 or successes < 0 or successes > trials:
        raise ValueError("need 0 <= successes <= trials")
    if trials == 0:
        return None
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


@lru_cache(maxsize=4096)
def _log_factorial(n: int) -> float:
    return math.lgamma(n + 1)


def _log_hypergeom(*, a: int, row1: int, row2: int, col1: int) -> float:
    """log P(top-left cell = a) for a 2×2 table with fixed margins."""
    n = row1 + row2
    return (
        _log_factorial(row1)
        + _log_factorial(row2)
        + _log_factorial(col1)
        + _log_factorial(n - col1)
        - _log_factorial(n)
        - _log_factorial(a)
        - _log_factorial(row1 - a)
        - _log_factorial(col1 - a)
        - _log_factorial(row2 - col1 + a)
    )


def fisher_exact(*, a: int, b: int, c: int, d: int) -> float:
    """Two-sided Fisher exact p-value of [[a, b], [c, d]] (as scipy: tables no likelier than the one seen)."""
    row1, row2, col1 = a + b, c + d, a + c
    low, high = max(0, col1 - row2), min(row1, col1)
    observed = _log_hypergeom(a=a, row1=row1, row2=row2, col1=col1)
    tolerance = 1e-7  # relative, as scipy, so equal probabilities are not lost to rounding
    total = 0.0
    for x in range(low, high + 1):
        log_p = _log_hypergeom(a=x, row1=row1, row2=row2, col1=col1)
        if log_p <= observed + math.log1p(tolerance):
            total += math.exp(log_p)
    return min(1.0, total)


def z_test(*, x1: int, n1: int, x2: int, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test."""
    pooled = (x1 + x2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance == 0:
        return 1.0  # both arms all refused or none refused: no difference to see
    z = (x1 / n1 - x2 / n2) / math.sqrt(variance)
    return math.erfc(abs(z) / math.sqrt(2))


def p_value(*, refused: int, trials: int, base_refused: int, base_trials: int) -> float | None:
    """Two-sided p-value of an arm's refusal rate against the first arm's; None when either arm is empty."""
    for x, n in ((refused, trials), (base_refused, base_trials)):
        if n < 0 or x < 0 or x > n:
            raise ValueError("need 0 <= refused <= trials")
    if trials == 0 or base_trials == 0:
        return None
    cells = (refused, trials - refused, base_refused, base_trials - base_refused)
    if min(cells) < SMALL_CELL:
        return fisher_exact(a=cells[0], b=cells[1], c=cells[2], d=cells[3])
    return z_test(x1=refused, n1=trials, x2=base_refused, n2=base_trials)

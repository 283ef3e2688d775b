"""The statistics module against reference values.

The reference values were computed once with scipy 1.x (`scipy.stats.fisher_exact`) and
statsmodels (`proportion_confint(method="wilson")`, `proportions_ztest`) and are hard-coded here,
so the test suite does not need either library.
"""

from __future__ import annotations

import pytest

from services.outcomes.statistics import fisher_exact, p_value, wilson, z_test

# (refused, trials, low, high) from statsmodels.stats.proportion.proportion_confint(x, n, 0.05, "wilson")
WILSON = [
    (0, 10, 0.0, 0.27753279986288926),  # zero refusals
    (10, 10, 0.7224672001371106, 1.0),  # all refusals
    (1, 1, 0.2065493143772374, 1.0),  # n = 1
    (0, 1, 0.0, 0.7934506856227627),  # n = 1
    (3, 20, 0.052368745896216595, 0.36041886474075696),
    (37, 120, 0.23272736988916298, 0.39582997723800684),
    (500, 1000, 0.4690696003681042, 0.5309303996318958),
]

# (arm refused, arm trials, first arm refused, first arm trials, reference p)
FISHER = [  # scipy.stats.fisher_exact([[a, n1 - a], [c, n2 - c]]).pvalue
    (0, 10, 0, 10, 1.0),  # zero refusals in both
    (10, 10, 10, 10, 1.0),  # all refusals in both
    (1, 1, 0, 1, 1.0),  # n = 1
    (3, 20, 8, 20, 0.15518744551002617),
    (0, 12, 6, 12, 0.013729977116704808),
    (2, 7, 9, 11, 0.049113876319758665),
]
Z = [  # statsmodels.stats.proportion.proportions_ztest([a, c], [n1, n2])[1]
    (30, 100, 45, 100, 0.02845973691631055),
    (120, 400, 150, 380, 0.005438436947928838),
    (12, 40, 20, 45, 0.17008357653458606),
]


@pytest.mark.parametrize(("refused", "trials", "low", "high"), WILSON)
def test_wilson_matches_statsmodels(refused: int, trials: int, low: float, high: float) -> None:
    assert wilson(successes=refused, trials=trials) == pytest.approx((low, high), abs=1e-12)


def test_wilson_of_an_empty_arm_is_none() -> None:
    assert wilson(successes=0, trials=0) is None


def test_wilson_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError):
        wilson(successes=3, trials=2)


@pytest.mark.parametrize(("a", "n1", "c", "n2", "reference"), FISHER)
def test_small_cells_use_fisher_exact_as_scipy(a: int, n1: int, c: int, n2: int, reference: float) -> None:
    assert p_value(refused=a, trials=n1, base_refused=c, base_trials=n2) == pytest.approx(reference, rel=1e-9)
    assert fisher_exact(a=a, b=n1 - a, c=c, d=n2 - c) == pytest.approx(reference, rel=1e-9)


@pytest.mark.parametrize(("a", "n1", "c", "n2", "reference"), Z)
def test_large_cells_use_the_z_test_as_statsmodels(a: int, n1: int, c: int, n2: int, reference: float) -> None:
    assert p_value(refused=a, trials=n1, base_refused=c, base_trials=n2) == pytest.approx(reference, rel=1e-9)
    assert z_test(x1=a, n1=n1, x2=c, n2=n2) == pytest.approx(reference, rel=1e-9)


def test_the_choice_of_test_follows_the_smallest_cell() -> None:
    # 12/40 vs 20/45 has every cell >= 5: the z-test's value, not Fisher's (which differs here)
    assert fisher_exact(a=12, b=28, c=20, d=25) != pytest.approx(0.17008357653458606, rel=1e-3)
    # 0/12 vs 6/12 has an empty cell: Fisher's value, not the z-test's
    assert z_test(x1=0, n1=12, x2=6, n2=12) != pytest.approx(0.013729977116704808, rel=1e-3)


def test_p_value_is_symmetric_in_the_arms() -> None:
    for a, n1, c, n2, _ in FISHER + Z:
        assert p_value(refused=a, trials=n1, base_refused=c, base_trials=n2) == pytest.approx(
            p_value(refused=c, trials=n2, base_refused=a, base_trials=n1), rel=1e-9
        )


def test_an_empty_arm_has_no_p_value() -> None:
    assert p_value(refused=0, trials=0, base_refused=3, base_trials=10) is None
    assert p_value(refused=3, trials=10, base_refused=0, base_trials=0) is None

"""Means and 95% intervals over tasks."""

import numpy as np
import pytest

from tfmeta.evaluation import estimate


def test_estimate_is_mean_and_normal_interval():
    values = np.array([0.2, 0.4, 0.9, 0.5])
    result = estimate(values)
    assert result.mean == pytest.approx(0.5)
    assert result.ci95 == pytest.approx(1.96 * np.std(values, ddof=1) / 2)
    assert result.diverged == 0


def test_diverged_tasks_are_counted_not_averaged():
    result = estimate(np.array([1.0, np.inf, 3.0, np.nan]))
    assert result.mean == pytest.approx(2.0) and result.diverged == 2
    assert np.isnan(estimate(np.array([np.nan])).mean)

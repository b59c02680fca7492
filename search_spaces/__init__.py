"""What to search: DM's spaces as data, the samplers that search them, the fixed baselines."""

from __future__ import annotations

from search_spaces._baselines import BASELINES, DEFAULT_BASELINES
from search_spaces._samplers import SAMPLERS, make_sampler
from search_spaces._spaces import (EXTRA_KNOBS, SPACES, define_by_run, get_space, grid_size,
                                   grid_values, is_grid, suggest, to_lam_beta)

__all__ = [
    "BASELINES", "DEFAULT_BASELINES", "EXTRA_KNOBS", "SAMPLERS", "SPACES", "define_by_run",
    "get_space", "grid_size", "grid_values", "is_grid", "make_sampler", "suggest", "to_lam_beta",
]

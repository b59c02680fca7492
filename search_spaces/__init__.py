"""What to search: DM's spaces as data, the samplers that search them, the fixed baselines."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dm_tune._lazy import lazy_exports

_EXPORTS = {
    "BASELINES": "dm_tune.search_spaces._baselines",
    "DEFAULT_BASELINES": "dm_tune.search_spaces._baselines",
    "SL_OFFICIAL": "dm_tune.search_spaces._baselines",
    "SAMPLERS": "dm_tune.search_spaces._samplers",
    "make_sampler": "dm_tune.search_spaces._samplers",
    "resumed_sampler": "dm_tune.search_spaces._samplers",
    "startup_trials": "dm_tune.search_spaces._samplers",
    "EXTRA_KNOBS": "dm_tune.search_spaces._spaces",
    "SPACES": "dm_tune.search_spaces._spaces",
    "define_by_run": "dm_tune.search_spaces._spaces",
    "get_space": "dm_tune.search_spaces._spaces",
    "grid_size": "dm_tune.search_spaces._spaces",
    "grid_values": "dm_tune.search_spaces._spaces",
    "is_grid": "dm_tune.search_spaces._spaces",
    "suggest": "dm_tune.search_spaces._spaces",
    "to_lam_beta": "dm_tune.search_spaces._spaces",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:
    from dm_tune.search_spaces._baselines import (BASELINES, DEFAULT_BASELINES, SL_OFFICIAL)
    from dm_tune.search_spaces._samplers import (SAMPLERS, make_sampler, resumed_sampler, startup_trials)
    from dm_tune.search_spaces._spaces import (EXTRA_KNOBS, SPACES, define_by_run, get_space, grid_size, grid_values, is_grid, suggest, to_lam_beta)

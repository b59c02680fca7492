"""reports: turn the MLflow outcomes of ``dm-tune search`` into DM selection guidelines.

Loading (``load_runs``, ``load_histories``) is the only I/O; everything after it is a pure
DataFrame -> dict / figure function. ``write_report`` writes index.html, guidelines.md,
guidelines.json and figures/; ``recommend`` answers "which lambda and beta for my data?" from a
guidelines file (``load_guidelines``). Accuracies in every output are percentage points.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dm_tune._lazy import lazy_exports

_EXPORTS = {
    "analyse_setting": "dm_tune.reports._analysis",
    "analyse_settings": "dm_tune.reports._analysis",
    "best_dm_arm": "dm_tune.reports._analysis",
    "compare_baselines": "dm_tune.reports._analysis",
    "param_importance": "dm_tune.reports._analysis",
    "recommended_run_ids": "dm_tune.reports._analysis",
    "region": "dm_tune.reports._analysis",
    "sensitivity": "dm_tune.reports._analysis",
    "status_counts": "dm_tune.reports._analysis",
    "summarize_arms": "dm_tune.reports._analysis",
    "add_recommend_parser": "dm_tune.reports._cli",
    "add_report_parser": "dm_tune.reports._cli",
    "SCHEMA_VERSION": "dm_tune.reports._guidelines",
    "build_guidelines": "dm_tune.reports._guidelines",
    "guidelines_markdown": "dm_tune.reports._guidelines",
    "setting_sentence": "dm_tune.reports._guidelines",
    "render_html": "dm_tune.reports._html",
    "write_report": "dm_tune.reports._html",
    "arm_label": "dm_tune.reports._load",
    "load_histories": "dm_tune.reports._load",
    "load_runs": "dm_tune.reports._load",
    "compare_with_paper": "dm_tune.reports._paper",
    "paper_guidance": "dm_tune.reports._paper",
    "Recommendation": "dm_tune.reports._recommend",
    "recommend": "dm_tune.reports._recommend",
    "correct_for_multiplicity": "dm_tune.reports._rules",
    "factor_trends": "dm_tune.reports._rules",
    "fit_line": "dm_tune.reports._rules",
    "lambda_beta_rule": "dm_tune.reports._rules",
    "noise_rate_rules": "dm_tune.reports._rules",
    "default_guidelines_path": "dm_tune.reports._schema",
    "load_guidelines": "dm_tune.reports._schema",
    "validate_guidelines": "dm_tune.reports._schema",
    "fit_surface": "dm_tune.reports._surface",
    "leave_one_setting_out": "dm_tune.reports._loso",
    "recommend_from_surface": "dm_tune.reports._surface",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)

if TYPE_CHECKING:
    from dm_tune.reports._analysis import (analyse_setting, analyse_settings, best_dm_arm, compare_baselines, param_importance, recommended_run_ids, region, sensitivity, status_counts, summarize_arms)
    from dm_tune.reports._cli import (add_recommend_parser, add_report_parser)
    from dm_tune.reports._guidelines import (SCHEMA_VERSION, build_guidelines, guidelines_markdown, setting_sentence)
    from dm_tune.reports._html import (render_html, write_report)
    from dm_tune.reports._load import (arm_label, load_histories, load_runs)
    from dm_tune.reports._paper import (compare_with_paper, paper_guidance)
    from dm_tune.reports._recommend import (Recommendation, recommend)
    from dm_tune.reports._rules import (correct_for_multiplicity, factor_trends, fit_line, lambda_beta_rule, noise_rate_rules)
    from dm_tune.reports._schema import (default_guidelines_path, load_guidelines, validate_guidelines)
    from dm_tune.reports._loso import leave_one_setting_out
    from dm_tune.reports._surface import fit_surface, recommend_from_surface

"""reports: turn the MLflow outcomes of ``dm-tune search`` into DM selection guidelines.

Loading (``load_runs``, ``load_histories``) is the only I/O; everything after it is a pure
DataFrame -> dict / figure function. ``write_report`` writes index.html, guidelines.md,
guidelines.json and figures/; ``recommend`` answers "which lambda and beta for my data?" from a
guidelines file (``load_guidelines``). Accuracies in every output are percentage points.
"""

from __future__ import annotations

from reports._analysis import (analyse_setting, analyse_settings, best_dm_arm, compare_baselines,
                               param_importance, recommended_run_ids, region, sensitivity, status_counts,
                               summarize_arms)
from reports._cli import add_recommend_parser, add_report_parser
from reports._guidelines import SCHEMA_VERSION, build_guidelines, guidelines_markdown, setting_sentence
from reports._html import render_html, write_report
from reports._load import arm_label, load_histories, load_runs
from reports._paper import compare_with_paper, paper_guidance
from reports._recommend import Recommendation, recommend
from reports._rules import factor_trends, fit_line, lambda_beta_rule, noise_rate_rules
from reports._schema import default_guidelines_path, load_guidelines, validate_guidelines

__all__ = [
    "Recommendation", "SCHEMA_VERSION", "add_recommend_parser", "add_report_parser", "analyse_setting",
    "analyse_settings", "arm_label", "best_dm_arm", "build_guidelines", "compare_baselines",
    "compare_with_paper", "default_guidelines_path", "factor_trends", "fit_line", "guidelines_markdown",
    "lambda_beta_rule", "load_guidelines", "load_histories", "load_runs", "noise_rate_rules",
    "paper_guidance", "param_importance", "recommend", "recommended_run_ids", "region", "render_html",
    "sensitivity", "setting_sentence", "status_counts", "summarize_arms", "validate_guidelines",
    "write_report",
]

"""Segmentation metrics (method section 10): DSC, sensitivity, precision, HD95 in mm, per case
and per label or region, and the evaluation of a folder of predictions against references
(``jcsaugment evaluate``).  Plain numpy + SimpleITK; no torch."""

from .metrics import (
    METRIC_KEYS,
    EvaluationError,
    binary_metrics,
    case_metrics,
    default_labels,
    surface_distances,
    surface_mask,
)
from .evaluate_folders import (
    add_evaluate_arguments,
    evaluate_folders,
    format_table,
    parse_labels,
    run_evaluate_from_args,
)

__all__ = [
    "METRIC_KEYS",
    "EvaluationError",
    "binary_metrics",
    "case_metrics",
    "default_labels",
    "surface_distances",
    "surface_mask",
    "add_evaluate_arguments",
    "evaluate_folders",
    "format_table",
    "parse_labels",
    "run_evaluate_from_args",
]

"""The MMoE paper's (Ma et al., KDD 2018) published numbers, as data.

Census-income test AUC (section 6.3, table from docs/paper-facts.md): per method and task group,
the main task's best and mean AUC over runs and the marital task's AUC (mean over runs).
Keys of ``CENSUS_TABLE`` are model names as in ``keras_mmoe.models.BUILDERS``.

Example:
    >>> CENSUS_TABLE["mmoe"][1]["main_best"]
    0.941
"""

CENSUS_TABLE = {
    # name: {group: {"main_best", "main_mean", "marital"}}
    "single_task": {1: {"main_best": 0.9398, "main_mean": 0.9337, "marital": 0.9933},
                    2: {"main_best": 0.8843, "main_mean": 0.8792, "marital": 0.9933}},
    "shared_bottom": {1: {"main_best": 0.9361, "main_mean": 0.9295, "marital": 0.9915},
                      2: {"main_best": 0.8836, "main_mean": 0.8813, "marital": 0.9927}},
    "l2_constrained": {1: {"main_best": 0.9389, "main_mean": 0.9359, "marital": 0.9922},
                       2: {"main_best": 0.8855, "main_mean": 0.8823, "marital": 0.9923}},
    "cross_stitch": {1: {"main_best": 0.9406, "main_mean": 0.9361, "marital": 0.9917},
                     2: {"main_best": 0.8855, "main_mean": 0.8819, "marital": 0.9919}},
    "tensor_factorization": {1: {"main_best": 0.7460, "main_mean": 0.6765, "marital": 0.8175},
                             2: {"main_best": 0.7367, "main_mean": 0.7256, "marital": 0.7453}},
    "omoe": {1: {"main_best": 0.9387, "main_mean": 0.9319, "marital": 0.9928},
             2: {"main_best": 0.8852, "main_mean": 0.8813, "marital": 0.9915}},
    "mmoe": {1: {"main_best": 0.9410, "main_mean": 0.9359, "marital": 0.9926},
             2: {"main_best": 0.8860, "main_mean": 0.8826, "marital": 0.9932}},
}

PAPER_METHOD_NAMES = {
    "single_task": "Single-Task", "shared_bottom": "Shared-Bottom", "l2_constrained": "L2-Constrained",
    "cross_stitch": "Cross-Stitch", "tensor_factorization": "Tensor-Factorization", "omoe": "OMoE",
    "mmoe": "MMoE",
}

# Section 5 synthetic setup (no published numbers, plots only).
SYNTHETIC_SETUP = {
    "dim": 100, "num_experts": 8, "expert_units": 16, "tower_units": 8,
    "shared_bottom_units": 113, "approx_params": 13056,
    "learning_rates": (1e-4, 1e-3, 1e-2), "runs": 200, "correlations": (0.5, 0.9, 1.0),
}

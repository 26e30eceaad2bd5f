"""The MMoE paper's published numbers (Ma et al., KDD 2018), as data for the reproduce tables.

Census-income, Table 2 / Table 3 of the paper (the marital column is the mean over runs):
per method, the main task's AUC (best run and mean over runs) and the auxiliary task's
(marital status) AUC. Group 1: income + never married; group 2: education + never married.
"""

#: {group: {model key: (main best, main mean, marital)}}; model keys follow keras_mmoe.models.BUILDERS.
CENSUS_AUC = {
    1: {
        "single_task": (0.9398, 0.9337, 0.9933),
        "shared_bottom": (0.9361, 0.9295, 0.9915),
        "l2_constrained": (0.9389, 0.9359, 0.9922),
        "cross_stitch": (0.9406, 0.9361, 0.9917),
        "tensor_factorization": (0.7460, 0.6765, 0.8175),
        "omoe": (0.9387, 0.9319, 0.9928),
        "mmoe": (0.9410, 0.9359, 0.9926),
    },
    2: {
        "single_task": (0.8843, 0.8792, 0.9933),
        "shared_bottom": (0.8836, 0.8813, 0.9927),
        "l2_constrained": (0.8855, 0.8823, 0.9923),
        "cross_stitch": (0.8855, 0.8819, 0.9919),
        "tensor_factorization": (0.7367, 0.7256, 0.7453),
        "omoe": (0.8852, 0.8813, 0.9915),
        "mmoe": (0.8860, 0.8826, 0.9932),
    },
}

#: Display names of the paper's methods.
METHOD_NAMES = {
    "single_task": "Single-Task",
    "shared_bottom": "Shared-Bottom",
    "l2_constrained": "L2-Constrained",
    "cross_stitch": "Cross-Stitch",
    "tensor_factorization": "Tensor-Factorization",
    "omoe": "OMoE",
    "mmoe": "MMoE",
}

#: This project's targets (issue 4): census MMoE mean test AUC per group and task.
CENSUS_TARGETS = {1: {"income": 0.940, "marital": 0.992}, 2: {"education": 0.883}}

#: Section 5 of the paper (synthetic study): the setup, for the record.
SYNTHETIC_SETUP = {
    "dim": 100,
    "num_experts": 8,
    "expert_units": 16,
    "tower_units": 8,
    "shared_bottom_units": 113,
    "params": 13056,
    "learning_rates": (1e-4, 1e-3, 1e-2),
    "runs": 200,
    "correlations": (0.5, 0.9, 1.0),
}

"""The papers' published numbers, as data for the reproduce tables.

MMoE paper (Ma et al., KDD 2018), census-income, Table 2 / Table 3 (the marital column is the
mean over runs): per method, the main task's AUC (best run and mean over runs) and the auxiliary
task's (marital status) AUC. Group 1: income + never married; group 2: education + never married.

PLE paper (Tang et al., RecSys 2020): census-income with the tasks of group 1 (income, marital
status) in their own setup, one AUC per method and task; and, on synthetic data of controlled
task correlation, a finding without numbers (:data:`PLE_SYNTHETIC_FINDING`).
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

#: Display names of every model the reproduce tables show: the MMoE paper's methods, then CGC and PLE
#: (CGC is PLE with one extraction level; ``ple`` is :func:`keras_mmoe.models.build_ple`'s default 2 levels).
DISPLAY_NAMES = {**METHOD_NAMES, "cgc": "CGC (PLE, 1 level)", "ple": "PLE (2 levels)"}

#: PLE paper, census-income with income and marital status as the tasks (our group 1), in the PLE
#: paper's setup (not the MMoE paper's: its MMoE scores 0.9493, the MMoE paper's best run 0.9410):
#: {group: {model key: (income AUC, marital AUC)}}. The paper's table prints MMoE's income AUC as
#: 0.9393; the gain over MMoE the paper states for PLE implies 0.9493, used here.
PLE_CENSUS_AUC = {1: {"mmoe": (0.9493, 0.9928), "ple": (0.9522, 0.9945)}}

#: PLE paper, synthetic data with controlled task correlation: the finding our synthetic study checks.
PLE_SYNTHETIC_FINDING = "PLE's edge over MMoE grows as the task correlation falls"

#: This project's targets (issue 4): census MMoE mean test AUC per group and task.
CENSUS_TARGETS = {1: {"income": 0.940, "marital": 0.992}, 2: {"education": 0.883}}

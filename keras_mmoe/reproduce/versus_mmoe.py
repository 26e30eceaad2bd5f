"""CGC and PLE against MMoE in the census and synthetic studies, beside the PLE paper's anchors.

Run ``r`` of every model in a study uses the same seed (and, in the synthetic study, the same
data draw), so each CGC/PLE run is compared with the MMoE run of its seed: the tables show the
mean and sample std of these paired differences, how many runs the model wins, and the PLE
paper's numbers (:data:`keras_mmoe.reproduce.paper.PLE_CENSUS_AUC`,
:data:`~keras_mmoe.reproduce.paper.PLE_SYNTHETIC_FINDING`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from keras_mmoe.reproduce import paper, report

#: The model the others are compared with, and the models compared with it.
REFERENCE = "mmoe"
COMPARED = ("cgc", "ple")


def _paired(values: list) -> dict:
    """``{"mean", "std", "n", "better"}`` of paired differences (positive = better than MMoE)."""
    stats = report.aggregate(values)
    return {"mean": stats["mean"], "std": stats["std"], "n": stats["n"], "better": int(sum(v > 0 for v in values))}


def _compared(runs: list) -> list:
    present = {r["model"] for r in runs}
    return [m for m in COMPARED if m in present] if REFERENCE in present else []


def census(runs: list, task_names: Sequence[str], group: int) -> dict | None:
    """Test AUC of CGC/PLE minus MMoE's, paired by seed, per task; with the PLE paper's numbers
    for ``group`` (when it has them). None when the runs hold no MMoE or no CGC/PLE."""
    models = _compared(runs)
    if not models:
        return None
    reference = {r["seed"]: r for r in runs if r["model"] == REFERENCE}
    result = {"reference": REFERENCE, "models": {}}
    for name in models:
        mine = [r for r in runs if r["model"] == name and r["seed"] in reference]
        if not mine:
            continue
        result["models"][name] = {
            task: _paired([r["test_auc"][task] - reference[r["seed"]]["test_auc"][task] for r in mine])
            for task in task_names
        }
    published = paper.PLE_CENSUS_AUC.get(group)
    if published:
        result["paper"] = {name: dict(zip(task_names, values)) for name, values in published.items()}
    return result


def census_markdown(comparison: dict, summary: dict, task_names: Sequence[str]) -> str:
    """The census comparison table: our mean AUC, the paired difference to MMoE, the runs won,
    and the PLE paper's AUC (with its difference to its MMoE) per task."""
    published = comparison.get("paper", {})
    header = ["method", "runs"]
    for task in task_names:
        header += [f"{task} AUC mean", f"{task} − MMoE (paired)", "better in", f"PLE paper {task}"]
    rows = []
    for name in [REFERENCE] + list(comparison["models"]):
        entry = summary[name]
        cells = [entry["method"], entry["runs"]]
        for task in task_names:
            cells.append(f"{entry['test_auc'][task]['mean']:.4f}")
            d = comparison["models"].get(name, {}).get(task)
            cells += [f"{d['mean']:+.4f} ± {d['std']:.4f}", f"{d['better']}/{d['n']}"] if d else ["", ""]
            ours, theirs = published.get(name, {}).get(task), published.get(REFERENCE, {}).get(task)
            if ours is None:
                cells.append("-")
            elif name == REFERENCE:
                cells.append(f"{ours:.4f}")
            else:
                cells.append(f"{ours:.4f} ({ours - theirs:+.4f})")
        rows.append(cells)
    title = ("\nCGC and PLE against MMoE: test AUC minus MMoE's, paired by seed (run r of every model shares "
             "seed r), mean ± sample std over runs, and the runs where the model beats MMoE.")
    if published:
        anchors = "; ".join(
            f"{paper.DISPLAY_NAMES.get(n, n).split(' (')[0]} " + " / ".join(f"{v:.4f}" for v in values.values())
            for n, values in published.items()
        )
        title += (f" PLE paper (Tang et al., RecSys 2020; {' + '.join(task_names)}, its own setup): {anchors} AUC; "
                  "compare the differences, not the absolute AUC, across setups.")
    return title + "\n\n" + report.markdown_table(header, rows)


def synthetic(runs: list) -> dict | None:
    """Final loss of MMoE minus CGC's/PLE's, paired by (correlation, seed), per correlation, and
    whether the edge grows as the correlation falls. None without MMoE or CGC/PLE runs."""
    models = _compared(runs)
    if not models:
        return None
    reference = {(r["correlation"], r["seed"]): r["final_loss"] for r in runs if r["model"] == REFERENCE}
    result = {"reference": REFERENCE, "paper": paper.PLE_SYNTHETIC_FINDING, "models": {}}
    for name in models:
        by_corr = {}
        for corr in sorted({r["correlation"] for r in runs if r["model"] == name}, reverse=True):
            diffs = [reference[(corr, r["seed"])] - r["final_loss"] for r in runs
                     if r["model"] == name and r["correlation"] == corr and (corr, r["seed"]) in reference]
            if diffs:
                by_corr[f"{corr:g}"] = _paired(diffs)
        edges = [s["mean"] for s in by_corr.values()]  # correlations from high to low
        grows = bool(np.all(np.diff(edges) > 0)) if len(edges) > 1 else None
        result["models"][name] = {"edge": by_corr, "grows_as_correlation_falls": grows}
    return result


def synthetic_markdown(comparison: dict) -> str:
    """The synthetic comparison table: per correlation, MMoE's loss minus the model's (paired)."""
    corrs = sorted({c for m in comparison["models"].values() for c in m["edge"]}, key=float, reverse=True)
    header = ["method"] + [f"p = {c}: MMoE − model (better in)" for c in corrs] + ["edge grows as p falls"]
    rows = []
    for name, entry in comparison["models"].items():
        cells = [paper.DISPLAY_NAMES.get(name, name)]
        for c in corrs:
            d = entry["edge"].get(c)
            cells.append(f"{d['mean']:+.4f} ± {d['std']:.4f} ({d['better']}/{d['n']})" if d else "-")
        grows = entry["grows_as_correlation_falls"]
        cells.append("-" if grows is None else ("yes" if grows else "no"))
        rows.append(cells)
    title = ("\nCGC and PLE against MMoE: MMoE's final held-out loss minus the model's, paired by run (same data "
             "draw and seed), mean ± sample std, and the runs where the model has the lower loss; positive = better "
             f"than MMoE. PLE paper (Tang et al., RecSys 2020): {comparison['paper']}.")
    return title + "\n\n" + report.markdown_table(header, rows)

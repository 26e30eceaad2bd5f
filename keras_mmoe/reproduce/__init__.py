"""Reproductions of the papers' experiments, as plain functions.

* :mod:`keras_mmoe.reproduce.census`: the census-income benchmark of the MMoE paper (section 6.3)
  with its seven models, test AUC per task beside the paper's table (and, on request, CGC and PLE).
* :mod:`keras_mmoe.reproduce.synthetic`: the task-correlation study (sections 3.2 and 5):
  MMoE, OMoE and Shared-Bottom (and, on request, CGC and PLE) at correlations 0.5, 0.9, 1.0;
  loss curves and final-loss spread.
* :mod:`keras_mmoe.reproduce.synthetic_converged`: the same study under a converged protocol
  (learning rate chosen on validation, early stopping, paired runs, bootstrap intervals), its
  JSON written as it goes and continued when started again (``--protocol converged``).
* :mod:`keras_mmoe.reproduce.census_tuned`: the census benchmark with every method tuned (learning
  rate x width chosen on the main task's validation AUC), paired runs of each choice and bootstrap
  intervals of MMoE's differences, resumable (``reproduce census --protocol tuned``).
* :mod:`keras_mmoe.reproduce.versus_mmoe`: CGC and PLE against MMoE in those two studies, run by
  run, beside the PLE paper's numbers.
* :mod:`keras_mmoe.reproduce.polarization`: gate polarization with and without expert dropout
  (the YouTube fix).

Their pieces: :mod:`~keras_mmoe.reproduce.replicas` (K runs trained as one vectorized model),
:mod:`~keras_mmoe.reproduce.store` (a study's resumable JSON), :mod:`~keras_mmoe.reproduce.stats`
(summaries and paired bootstrap intervals), :mod:`~keras_mmoe.reproduce.report` (tables, records).

Each study module has ``study(**settings, progress=None) -> record`` (the converged and tuned studies
also take the path of their JSON first) (a dict of every run, the
summary, the settings and the environment; ``progress`` is called with one line per step) and
``write_outputs(record, out_dir)`` (Markdown and JSON tables, PNG plots). ``keras-mmoe reproduce``
(:mod:`keras_mmoe.cli.reproduce`) is the command line over them.
"""

#: Study modules under keras_mmoe.reproduce, in the order `keras-mmoe reproduce --help` lists them.
STUDIES = ("census", "synthetic", "polarization")

"""cmi: filter pruning with conditional mutual information (arXiv 2411.18578), reproducibly.

Reading order (docs/usage.md, "Layout", has every module):
  entropy, grams, ranking   the matrix-based Rényi estimator and the greedy CMI order (method §2-§3)
  cutoffs, plans, planner   where each layer is cut, and a plan made from an order (method §4-§7)
  config, run, train        one config object per run; the prepared run (baseline, data, activations)
  criteria, evaluation      importance criteria as pluggable classes; the accuracy of a kept set
  controls, verdict         the criteria at equal counts; the claim table, one function per question
"""
__version__ = "0.1.0"

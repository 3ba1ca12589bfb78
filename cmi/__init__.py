"""cmi: filter pruning with conditional mutual information (arXiv 2411.18578), reproducibly.

Modules, in pipeline order:
  config   one config object per run (profiles in configs/, overrides)
  data     datasets as uint8 tensors, batch augmentation
  models   VGG16-BN with a width multiplier
  train    training, evaluation, the cached baseline
  store    atomic writes and the stage cache
"""
__version__ = "0.1.0"

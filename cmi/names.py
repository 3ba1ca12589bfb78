"""Every name a config may use, and the defaults the engine shares with it, in one leaf module: the
config validates against these, and the modules that implement them (entropy, cutoffs, models,
protocols, criteria, evaluation, ranking) import them from here, so each has one home and the config
sits below the engine.
"""
from __future__ import annotations

DATASETS = ("cifar10", "fashion-mnist", "synthetic")
#: Images in each dataset's (training, test) split, to check a config's sizes before any work starts.
DATASET_SIZES = {"cifar10": (50000, 10000), "fashion-mnist": (60000, 10000), "synthetic": (2000, 500)}
HEADS = ("mlp", "linear")                             #: classifier heads of cmi.models.VGG16
#: Filters per conv layer of VGG16 at width 1; "M" is a 2x2 max-pool (cmi.models builds from it).
VGG16_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
SMALLEST_LAYER = min(c for c in VGG16_PLAN if c != "M")   #: filters of the narrowest layer at width 1
DEVICES = ("auto", "cpu", "cuda")                     #: or "cuda:N"
SCHEDULES = ("cosine", "onecycle")                    #: learning-rate schedules of cmi.train

SIGMA_RULES = ("paper", "silverman", "median")        #: kernel-width rules (cmi.entropy.kernel_width)
FORMULATIONS = ("per-layer", "compact", "full")       #: what a layer's ranking is conditioned on
CUTOFFS = ("scree", "xmeans", "ptest")                #: how a ranking is cut
DIRECTIONS = ("forward", "bidirectional")             #: the order layers are pruned in
FALLBACKS = ("largest", "unpruned")                   #: no candidate cut within max_drop: what a layer keeps
REFERENCES = ("network", "chain")                     #: max_drop measured from the unpruned network or the chain

PROTOCOLS = ("paper", "authors")                      #: the paper's text | the authors' code (docs/method.md §9)
#: The authors' code paths that differ from the paper's text, each by the cmi.protocols.Protocol fields it
#: sets. ``paper+<path>`` is the text with that one path switched on, ``authors-<path>`` their code with it off.
PATHS: dict[str, tuple[str, ...]] = {
    "scree-on-indices": ("cutoffs",),                 # scree ratios on channel indices, not CMI values
    "shifted-kept": ("kept",),                        # every kept index shifted by -1
    "chosen-on-test": ("choose_on",),                 # candidate cuts scored on test images
    "unconditioned-shuffles": ("permute_condition",),  # the permutation test leaves Z out of its shuffles
    "compact-previous-only": ("compact_scores_previous_only",),
    "full-one-chain": ("full_bidirectional_one_chain",),
    "exact-ranking": ("exact_ranking",),              # every greedy pick, no saturation stop
}
#: The nine plans the authors' code defines (one script each): (formulation, cutoff, direction).
AUTHORS_PLANS = (("per-layer", "scree", "bidirectional"), ("per-layer", "xmeans", "bidirectional"),
                 ("per-layer", "ptest", "bidirectional"), ("compact", "scree", "bidirectional"),
                 ("compact", "xmeans", "bidirectional"), ("compact", "ptest", "bidirectional"),
                 ("full", "scree", "bidirectional"), ("compact", "scree", "forward"), ("full", "scree", "forward"))

#: Default relative tolerance of the saturation stop: CMI_t <= SATURATION_TOL x I(Y; L ∪ Z).
#: Chosen from the measured curves (figures/bench/saturation-quick-fashion-mnist.md): below it CMI_t
#: decays geometrically without a plateau, and on the trained quick network the exact order past
#: this point keeps no more accurate filters than the tail rule or a random choice, while each
#: further pick costs 2(C - t) eigendecompositions. 0 runs the exact full greedy ranking.
SATURATION_TOL = 1e-3      #: cmi.saturation_tol's default

#: Channel-importance criteria (cmi.criteria registers one class per name).
CRITERIA = ("cmi", "cmi-median", "l1", "hrank", "random", "gamma", "constant-first")
#: How a pruned network is evaluated (cmi.evaluation registers one function per name).
MODES = ("masked", "removed", "recalibrated", "finetuned")
#: Repairs of a removed network that need no gradient step (cmi.repair), evaluated as modes too.
REPAIRS = ("compensated", "reconstructed", "merged")
ALL_MODES = MODES + REPAIRS


def protocol_names() -> list[str]:
    """Every protocol name, in the path ablation's order: both end points, then each path switched on
    alone in the paper's text (``paper+<path>``) and off alone in the authors' code (``authors-<path>``)."""
    return ["paper", "authors", *(f"{b}{p}" for p in PATHS for b in ("paper+", "authors-"))]


#: A plan's specification: (formulation, cutoff, direction), one name each of FORMULATIONS, CUTOFFS, DIRECTIONS.
Spec = tuple[str, str, str]


def plan_name(spec: Spec) -> str:
    """``(formulation, cutoff, direction)`` -> ``"formulation-cutoff-direction"``."""
    return "-".join(spec)

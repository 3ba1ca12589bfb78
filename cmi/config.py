"""One config object describing a run, loaded from a profile in ``configs/`` plus overrides.

A profile is a YAML file with one mapping per section (``data``, ``model``, ``train``, ...).
Overrides are ``"key=value"`` strings (command line) or a ``{key: value}`` mapping (papermill),
where ``key`` is ``section.field``, or a bare ``field`` when that name is unique across sections,
or the alias ``dataset`` for ``data.name``. Values are parsed as YAML and type-checked.

Each pipeline stage is cached under a hash of only the sections it depends on
(:meth:`Config.payload`, hashed by :func:`cmi.store.digest`), so changing a pruning option never retrains the baseline.
"""
from __future__ import annotations

import dataclasses
import math
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import yaml

from .device import resolve_device
from .errors import ConfigError
from .names import (AUTHORS_PLANS, CRITERIA, CUTOFFS, DATASET_SIZES, DATASETS, DEVICES, DIRECTIONS, FALLBACKS,
                    FORMULATIONS, HEADS, ALL_MODES, PATHS, PROTOCOLS, REFERENCES, SATURATION_TOL, SCHEDULES, SIGMA_RULES,
                    SMALLEST_LAYER, plan_name, protocol_names)
from .paths import check_folders, configs_dir
from . import profiles
from .profiles import coerce, parse_overrides, profile_settings

#: "Keeps accuracy" means within this fraction of the unpruned network's test accuracy, where
#: ``prune.max_drop`` (the plans' own choice rule) is unset: 1 pp. Read through :meth:`Config.keep_drop`.
DEFAULT_KEEP_DROP = 0.01


@dataclass(frozen=True)
class DataConfig:
    name: str = "cifar10"              #: one of DATASETS
    train_subset: int | None = None    #: use this many training images (seeded draw); None = all
    test_subset: int | None = None     #: use this many test images (seeded draw); None = all
    val_size: int = 5000               #: images held out of the training set (cutoff selection)
    augment: bool = True               #: random crop (4-pixel padding) + horizontal flip

    def validate(self) -> None:
        _check(self.name in DATASETS, "data.name", f"must be one of {DATASETS}, got {self.name!r}")
        for key in ("train_subset", "test_subset"):
            v = getattr(self, key)
            _check(v is None or v > 0, f"data.{key}", f"must be positive or null, got {v!r}")
        _check(self.val_size >= 1, "data.val_size", f"must be >= 1 (the held-out images pick the paper's cutoffs), "
                                                    f"got {self.val_size!r}")


@dataclass(frozen=True)
class ModelConfig:
    width: float = 1.0                 #: multiplier on every layer's filter count
    head: str = "mlp"                  #: "mlp" (the authors' 3-layer head) or "linear"

    def validate(self) -> None:
        _check(0 < self.width <= 4, "model.width", f"must be in (0, 4], got {self.width!r}")
        _check(round(SMALLEST_LAYER * self.width) >= 2, "model.width",   # ranking needs 2 channels a layer
               f"is {self.width!r}: conv1_1 would have {round(SMALLEST_LAYER * self.width)} filter(s) and a layer "
               f"needs at least 2 to be ranked; use a width >= {math.ceil(1.5e4 / SMALLEST_LAYER) / 1e4}")
        _check(self.head in HEADS, "model.head", f"must be one of {HEADS}, got {self.head!r}")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.05                   #: peak learning rate (after warm-up)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0         #: cosine schedule: linear warm-up from 0, then cosine decay to 0
    label_smoothing: float = 0.0
    eval_batch_size: int = 1000
    #: "cosine" (warm-up + cosine, per step) or "onecycle" (torch's OneCycleLR with its defaults, per
    #: step: 30 % warm-up from lr/25, momentum cycled 0.95 -> 0.85; warmup_epochs and momentum unused)
    schedule: str = "cosine"
    #: weight decay on every parameter, BN gamma/beta and biases included (the authors' baseline);
    #: false = conv/linear weights only
    decay_norm: bool = False

    def validate(self) -> None:
        _check(self.epochs >= 1, "train.epochs", f"must be >= 1, got {self.epochs!r}")
        _check(self.batch_size >= 2, "train.batch_size", f"must be >= 2, got {self.batch_size!r}")
        _check(0 < self.lr < math.inf, "train.lr", f"must be a finite number > 0, got {self.lr!r}")
        _check(0 <= self.momentum < 1, "train.momentum", f"must be in [0, 1), got {self.momentum!r}")
        _check(0 <= self.weight_decay < math.inf, "train.weight_decay",
               f"must be a finite number >= 0, got {self.weight_decay!r}")
        _check(0 <= self.warmup_epochs <= self.epochs, "train.warmup_epochs",
               f"must be in [0, epochs], got {self.warmup_epochs!r}")
        _check(0 <= self.label_smoothing < 1, "train.label_smoothing",
               f"must be in [0, 1), got {self.label_smoothing!r}")
        _check(self.eval_batch_size >= 1, "train.eval_batch_size", f"must be >= 1, got {self.eval_batch_size!r}")
        _check(self.schedule in SCHEDULES, "train.schedule", f"must be one of {SCHEDULES}, got {self.schedule!r}")


@dataclass(frozen=True)
class CMIConfig:
    """How the CMI ranking is estimated (docs/method.md §2-§3)."""

    n_samples: int = 256               #: training images whose activations estimate the CMI
    alpha: float = 1.01                #: Rényi order
    sigma: str = "paper"               #: kernel-width rule: paper, silverman or median
    permutations: int = 100            #: P of the permutation test
    eta: float = 0.05                  #: significance level of the permutation test
    saturation_tol: float = SATURATION_TOL   #: stop ranking once CMI_t <= this x I(Y; L ∪ Z); 0 = exact

    def validate(self) -> None:
        _check(self.n_samples >= 2, "cmi.n_samples", f"must be >= 2, got {self.n_samples!r}")
        _check(self.alpha > 0 and math.isfinite(self.alpha), "cmi.alpha", f"must be a finite number > 0, got {self.alpha!r}")
        _check(self.sigma in SIGMA_RULES, "cmi.sigma", f"must be one of {SIGMA_RULES}, got {self.sigma!r}")
        _check(self.permutations >= 1, "cmi.permutations", f"must be >= 1, got {self.permutations!r}")
        _check(0 < self.eta < 1, "cmi.eta", f"must be in (0, 1), got {self.eta!r}")
        _check(0 <= self.saturation_tol < 1, "cmi.saturation_tol", f"must be in [0, 1), got {self.saturation_tol!r}")


@dataclass(frozen=True)
class PruneConfig:
    """Which plans to run and how candidate cuts are chosen and the pruned models fine-tuned."""

    formulations: tuple[str, ...] = FORMULATIONS
    cutoffs: tuple[str, ...] = CUTOFFS
    directions: tuple[str, ...] = DIRECTIONS
    scree_candidates: int = 3          #: scree cuts evaluated per layer
    select_images: int | None = None   #: images that score candidate cuts (held-out; authors: test); None = all
    tolerance: float = 0.0             #: keep the fewest channels within this accuracy of the best candidate
    protocol: str = "paper"            #: paper (the text) | authors (their code paths, docs/method.md §9)
    max_drop: float | None = None      #: a candidate may lose at most this accuracy vs the reference; null = off
    reference: str = "network"         #: max_drop from the unpruned "network" or the "chain" so far
    fallback: str = "largest"          #: no candidate within max_drop: "largest" candidate or "unpruned"
    parallel: bool = True              #: run the two bi-directional halves concurrently
    finetune_epochs: int = 0           #: 0 = no fine-tuning
    finetune_lr: float = 0.01
    latency_seconds: float = 0.5       #: least measuring time of each plan's CPU latency, per batch size

    def validate(self) -> None:
        for key, allowed in (("formulations", FORMULATIONS), ("cutoffs", CUTOFFS), ("directions", DIRECTIONS)):
            values = getattr(self, key)
            _check(len(values) > 0 and all(v in allowed for v in values), f"prune.{key}",
                   f"must be a non-empty list drawn from {allowed}, got {list(values)!r}")
        _check(self.scree_candidates >= 1, "prune.scree_candidates", f"must be >= 1, got {self.scree_candidates!r}")
        _check(self.select_images is None or self.select_images > 0, "prune.select_images",
               f"must be positive or null, got {self.select_images!r}")
        _check(0 <= self.tolerance < 1, "prune.tolerance", f"must be in [0, 1), got {self.tolerance!r}")
        _check(self.protocol in protocol_names(), "prune.protocol",
               f"must be one of {PROTOCOLS} or a one-path variant 'paper+<path>' / 'authors-<path>' with <path> one "
               f"of {tuple(PATHS)}, got {self.protocol!r}")
        _check(self.max_drop is None or 0 <= self.max_drop < 1, "prune.max_drop",
               f"must be in [0, 1) or null, got {self.max_drop!r}")
        _check(self.reference in REFERENCES, "prune.reference",
               f"must be one of {REFERENCES}, got {self.reference!r}")
        _check(self.fallback in FALLBACKS, "prune.fallback", f"must be one of {FALLBACKS}, got {self.fallback!r}")
        _check(self.finetune_epochs >= 0, "prune.finetune_epochs", f"must be >= 0, got {self.finetune_epochs!r}")
        _check(0 < self.finetune_lr < math.inf, "prune.finetune_lr", f"must be a finite number > 0, got {self.finetune_lr!r}")
        _check(0 < self.latency_seconds < math.inf, "prune.latency_seconds",
               f"must be a finite number > 0, got {self.latency_seconds!r}")


@dataclass(frozen=True)
class ControlsConfig:
    """The controls study (:func:`cmi.study.run_controls`): other criteria at each plan's per-layer counts
    (:mod:`cmi.controls`), layer sensitivity curves and the kernel-width saturation table
    (:mod:`cmi.layerwise`), the path ablation (:mod:`cmi.ablation`) and the repairs
    (:mod:`cmi.repairs_study`)."""

    protocols: tuple[str, ...] = PROTOCOLS        #: protocols whose plans get controls
    criteria: tuple[str, ...] = ("cmi", "cmi-median", "l1", "hrank", "random")   #: names in cmi.criteria
    modes: tuple[str, ...] = ("masked", "recalibrated", "finetuned")   #: drawn from ALL_MODES
    seeds: int = 5                     #: seeds of each random criterion (mean ± sd)
    test_images: int | None = None     #: a seeded draw of this many test images scores the controls (null: all)
    recal_images: int = 2000           #: training images that re-estimate BN statistics
    finetune_images: int = 10000       #: training images of the one fine-tuning epoch at prune.finetune_lr
    sensitivity_keep: tuple[float, ...] = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
    sensitivity_seeds: int = 3         #: seeds of the random criterion in the sensitivity curves
    sensitivity_test_images: int | None = 2000   #: test images per sensitivity point (null: all)
    sensitivity_recal_images: int = 2000         #: training images that recalibrate BN per sensitivity point
    sigma_rules: tuple[str, ...] = ("paper", "median")   #: kernel-width rules of the saturation table
    saturation_tol: float = 1e-6       #: saturated: CMI_t <= this x I(Y; L), relative
    #: plans of the path ablation (cmi.ablation.path_ablation), e.g. per-layer-scree-bidirectional;
    #: null: all nine the authors' code defines; [] skips it
    ablation_plans: tuple[str, ...] | None = None

    def validate(self) -> None:
        names = tuple(plan_name(p) for p in AUTHORS_PLANS)
        _check(self.ablation_plans is None or all(n in names for n in self.ablation_plans), "controls.ablation_plans",
               f"must be null or a list drawn from {names}, got {self.ablation_plans!r}")
        _check(len(self.protocols) > 0 and all(p in PROTOCOLS for p in self.protocols), "controls.protocols",
               f"must be a non-empty list drawn from {PROTOCOLS}, got {list(self.protocols)!r}")
        _check(len(self.criteria) > 0 and all(c in CRITERIA for c in self.criteria), "controls.criteria",
               f"must be a non-empty list drawn from {CRITERIA}, got {list(self.criteria)!r}")
        _check(len(self.modes) > 0 and all(m in ALL_MODES for m in self.modes), "controls.modes",
               f"must be a non-empty list drawn from {ALL_MODES}, got {list(self.modes)!r}")
        _check(all(r in SIGMA_RULES for r in self.sigma_rules), "controls.sigma_rules",
               f"must be drawn from {SIGMA_RULES}, got {list(self.sigma_rules)!r}")
        for key in ("seeds", "sensitivity_seeds", "recal_images", "finetune_images", "sensitivity_recal_images"):
            _check(getattr(self, key) >= 1, f"controls.{key}", f"must be >= 1, got {getattr(self, key)!r}")
        _check(len(self.sensitivity_keep) > 0 and all(0 < f < 1 for f in self.sensitivity_keep),
               "controls.sensitivity_keep", f"must be fractions in (0, 1), got {list(self.sensitivity_keep)!r}")
        for key in ("test_images", "sensitivity_test_images"):
            v = getattr(self, key)
            _check(v is None or v > 0, f"controls.{key}", f"must be positive or null, got {v!r}")
        _check(0 <= self.saturation_tol < 1, "controls.saturation_tol", f"must be in [0, 1), got {self.saturation_tol!r}")


@dataclass(frozen=True)
class Config:
    """A whole run. ``profile`` is informational; ``seed`` seeds every random draw of the run."""

    profile: str = "custom"
    seed: int = 0
    device: str = "auto"               #: "auto" (CUDA when available), "cpu" or "cuda"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cmi: CMIConfig = field(default_factory=CMIConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    controls: ControlsConfig = field(default_factory=ControlsConfig)

    def validate(self) -> "Config":
        """Check every field and what the sections ask of each other; return the config, with a
        subset larger than its split clamped to the split (with a warning)."""
        _check(self.device in DEVICES or (self.device[:5] == "cuda:" and self.device[5:].isdigit()), "device",
               f"must be one of {DEVICES} or 'cuda:N', got {self.device!r}")
        resolve_device(self.device)          # device=cuda where there is none: one ConfigError, now
        for name in SECTIONS:
            getattr(self, name).validate()
        return self._check_sizes()

    def _check_sizes(self) -> "Config":
        d = self.data
        n_train, n_test = DATASET_SIZES[d.name]
        _check(d.val_size < n_train, "data.val_size", f"is {d.val_size}, which leaves no training images "
                                                      f"({d.name} has {n_train})")
        available = n_train - d.val_size
        data = _clamped("data", d, {"train_subset": (available, f"training images left after val_size={d.val_size} "
                                                                f"of {d.name}"),
                                    "test_subset": (n_test, f"test images of {d.name}")})
        n_test_used = data.test_subset or n_test
        controls = _clamped("controls", self.controls, {k: (n_test_used, "test images this config uses")
                                                         for k in ("test_images", "sensitivity_test_images")})
        cfg = dataclasses.replace(self, data=data, controls=controls)
        n_used = cfg.data.train_subset or available
        _check(self.cmi.n_samples <= n_used, "cmi.n_samples",
               f"is {self.cmi.n_samples}, more than the {n_used} training images this config uses "
               f"({d.name}, val_size={d.val_size}, train_subset={cfg.data.train_subset})")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def payload(self, *keys: str) -> dict[str, Any]:
        """The seed and the named sections or ``section.field`` entries: what a stage's cache key hashes
        (:func:`cmi.store.digest`), so the key changes only when something the stage depends on does."""
        payload: dict[str, Any] = {"seed": self.seed}
        for key in keys:
            sec, _, name = key.partition(".")
            if sec not in SECTIONS or (name and name not in {f.name for f in dataclasses.fields(SECTIONS[sec])}):
                raise ConfigError(f"unknown config section or field {key!r}; sections are {list(SECTIONS)}")
            value = getattr(self, sec)
            if name:
                payload[key] = getattr(value, name)
            else:
                payload[key] = {k: v for k, v in dataclasses.asdict(value).items()
                                if LATER_FIELDS.get(f"{sec}.{k}", object()) != v}
        return payload

    @property
    def keep_drop(self) -> float:
        """"Keeps accuracy" means within this fraction of the unpruned network: ``prune.max_drop``, the
        plans' own choice rule, or :data:`DEFAULT_KEEP_DROP` where it is unset."""
        return self.prune.max_drop if self.prune.max_drop is not None else DEFAULT_KEEP_DROP

    def replace(self, overrides: Mapping[str, Any] | Sequence[str] | None) -> "Config":
        """A copy with overrides applied (see module docstring) and validated."""
        return apply_overrides(self, overrides)


#: Section name -> dataclass. Later stages add sections here.
SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
                             "cmi": CMIConfig, "prune": PruneConfig, "controls": ControlsConfig}
#: Fields added after CACHE_VERSION 2, with their defaults: hashed only when set to something else, so
#: caches made before they existed keep their keys.
LATER_FIELDS: dict[str, Any] = {"train.schedule": "cosine", "train.decay_norm": False, "prune.latency_seconds": 0.5}
TOP_LEVEL = ("profile", "seed", "device")
ALIASES = {"dataset": "data.name"}


def _clamped(name: str, section, limits: dict[str, tuple[int, str]]):
    """``section`` with each count in ``limits`` ({field: (most, what they are)}) above its most set to
    it, with a warning naming the field; the same object when nothing is above."""
    clamped = {}
    for key, (most, what) in limits.items():
        v = getattr(section, key)
        if v is not None and v > most:
            warnings.warn(f"{name}.{key}={v} is more than the {most} {what}: using {most}", stacklevel=6)
            clamped[key] = most
    return dataclasses.replace(section, **clamped) if clamped else section


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {message}")


def available_profiles() -> list[str]:
    """The profile names in ``configs/`` (or ``CMI_CONFIGS``)."""
    return profiles.available_profiles(configs_dir())


def load_config(profile: str = "smoke", overrides: Mapping[str, Any] | Sequence[str] | None = None) -> Config:
    """Resolve a profile name (a file in ``configs/``) or a path to a YAML file, then overrides.
    A profile may start from another (``extends: quick``) and set only what differs from it."""
    check_folders()
    cfg = apply_overrides(Config(), profile_settings(profile, SECTIONS, configs_dir()))
    return apply_overrides(cfg, overrides)


def _field_index() -> dict[str, str]:
    """Bare field name -> dotted key, for names unique across sections."""
    seen: dict[str, list[str]] = {}
    for sec, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            seen.setdefault(f.name, []).append(f"{sec}.{f.name}")
    return {name: keys[0] for name, keys in seen.items() if len(keys) == 1 and name not in TOP_LEVEL}


def _resolve_key(key: str) -> str:
    key = ALIASES.get(key, key)
    if key in TOP_LEVEL:
        return key
    if "." in key:
        sec, _, name = key.partition(".")
        if sec in SECTIONS and name in {f.name for f in dataclasses.fields(SECTIONS[sec])}:
            return key
        if sec not in SECTIONS:
            raise ConfigError(f"unknown config section {sec!r} in {key!r}; sections are {list(SECTIONS)}")
        raise ConfigError(f"unknown field {key!r}; {sec} has {[f.name for f in dataclasses.fields(SECTIONS[sec])]}")
    index = _field_index()
    if key in index:
        return index[key]
    known = sorted(list(index) + list(TOP_LEVEL) + list(ALIASES))
    raise ConfigError(f"unknown config field {key!r}; known fields: {known} (or section.field)")


def apply_overrides(cfg: Config, overrides: Mapping[str, Any] | Sequence[str] | None) -> Config:
    changes = parse_overrides(overrides)
    top: dict[str, Any] = {}
    per_section: dict[str, dict[str, Any]] = {}
    spelled: dict[str, str] = {}
    for raw_key, value in changes.items():
        key = _resolve_key(raw_key)
        if key in spelled:
            raise ConfigError(f"{spelled[key]!r} and {raw_key!r} both set {key}; give it once")
        spelled[key] = raw_key
        if key in TOP_LEVEL:
            top[key] = coerce(key, value, typing.get_type_hints(Config)[key])
        else:
            sec, _, name = key.partition(".")
            hint = typing.get_type_hints(SECTIONS[sec])[name]
            per_section.setdefault(sec, {})[name] = coerce(key, value, hint)
    for sec, kv in per_section.items():
        top[sec] = dataclasses.replace(getattr(cfg, sec), **kv)
    return dataclasses.replace(cfg, **top).validate()

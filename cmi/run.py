"""One prepared run and the plans made on it.

:func:`prepare_run` turns a :class:`cmi.config.Config` into a :class:`Run`: the trained baseline
(trained or loaded), the dataset, the activations the CMI is estimated from (captured or loaded), the
device and the cache folder. Every study (sweep, controls, full-width) starts from one.
:func:`make_plans` makes a list of plans on it, one after another in this process by default
(``workers=1``; with ``workers`` > 1, the first here and the rest ``workers`` at a time in spawned
worker processes, when :func:`make_plans` says they can), and is the only plan loop of the package.

Cache layout under ``<artifacts>/cmi/<hash of data, model, train, seed, cmi.n_samples>/``:
``activations.pt``, ``rankings/`` (shared by all plans), ``scores/``, ``plans/`` (each plan,
resumable), ``evals/`` (evaluations by content), and ``runs/<hash of train, cmi, prune>/`` (one
setting's tables: :attr:`Run.tables`).
"""
from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from .activations import Activations, capture
from .config import Config
from .data import Dataset, load_dataset
from .device import resolve_device
from .names import Spec, plan_name
from .plans import Plan
from .errors import CacheCorrupt
from .store import digest, save_json, stage_dir
from .train import Baseline, train_baseline


@dataclass
class Run:
    """A config with everything its studies share: ``baseline`` (model on the CPU, eval mode, its
    metrics and history), ``ds``, ``acts``, ``device``, and ``folder``, the cache shared by every
    setting of the pruning sections (None: nothing is cached, as in unit tests)."""

    cfg: Config
    baseline: Baseline
    ds: Dataset
    acts: Activations
    device: torch.device
    folder: Path | None
    timings: dict = field(default_factory=dict)   #: seconds of the baseline and capture stages, this call

    @property
    def model(self):
        return self.baseline.model

    @property
    def tables(self) -> Path:
        """This setting's tables (training, CMI and pruning sections) inside the cache folder."""
        return cache_folder(self.cfg) / "runs" / digest(self.cfg, "train", "cmi", "prune")

    @functools.cached_property
    def context(self):
        """What the criteria (:mod:`cmi.criteria`) may look at."""
        from .criteria import Context
        return Context(self.model, self.acts, alpha=self.cfg.cmi.alpha, seed=self.cfg.seed, cache_dir=self.folder,
                       device=self.device, saturation_tol=self.cfg.cmi.saturation_tol)

    def with_protocol(self, protocol: str) -> "Run":
        """The same run with ``prune.protocol`` set to ``protocol`` (shares everything else)."""
        if protocol == self.cfg.prune.protocol:
            return self
        return dataclasses.replace(self, cfg=self.cfg.replace({"prune.protocol": protocol}))


def cache_folder(cfg: Config) -> Path:
    """The cache of everything made from one baseline's activations."""
    return stage_dir("cmi", digest(cfg, "data", "model", "train", "cmi.n_samples"))


def load_or_capture(cfg: Config, model, ds: Dataset, folder: Path, device) -> Activations:
    path = folder / "activations.pt"
    if path.is_file():
        acts = Activations.load(path)
        try:
            acts.check_model(model)
        except ValueError as e:
            raise CacheCorrupt(f"{path} was captured from another model: {e}. Delete {path} (it is captured "
                               f"again in seconds)") from None
        return acts
    t0 = time.perf_counter()
    acts = capture(model, ds, n=cfg.cmi.n_samples, seed=cfg.seed, device=device)
    model.cpu()
    acts.save(path)
    save_json({"seconds": time.perf_counter() - t0, "images": cfg.cmi.n_samples}, folder / "capture.json")
    return acts


def prepare_run(cfg: Config, progress: bool = True) -> Run:
    """The baseline (trained or cached), dataset and activations (captured or cached) of ``cfg``."""
    device = resolve_device(cfg.device)
    timings = {}
    t0 = time.perf_counter()
    base = train_baseline(cfg, progress=progress)
    timings["baseline"] = time.perf_counter() - t0
    ds = load_dataset(cfg)
    folder = cache_folder(cfg)
    t0 = time.perf_counter()
    acts = load_or_capture(cfg, base.model, ds, folder, device)
    timings["capture"] = time.perf_counter() - t0
    base.model.cpu().eval()
    return Run(cfg, base, ds, acts, device, folder, timings)


def plan_specs(cfg: Config, protocol: str | None = None, only=None) -> list[Spec]:
    """The (formulation, cutoff, direction) of ``cfg.prune``'s plans, in the config's order; with
    ``protocol``, only those it defines (the authors' code defines nine); ``only``: a subset to keep."""
    from .protocols import get_protocol

    p = cfg.prune
    defined = get_protocol(protocol).plans if protocol is not None else None
    return [(f, c, d) for f in p.formulations for c in p.cutoffs for d in p.directions
            if (defined is None or (f, c, d) in defined) and (only is None or (f, c, d) in only)]


@dataclass
class Plans:
    """What :func:`make_plans` made: ``plans`` in the order asked for (those a ``stop`` skipped are
    missing), ``computed``: the names not in the cache when asked for, ``wall``: seconds per plan."""

    plans: list[Plan]
    computed: list[str]
    wall: dict[str, float]


def _loadable(run: Run) -> bool:
    """Whether a worker process can load this run from the cache (:func:`prepare_run` would find it)."""
    return run.folder is not None and Path(run.folder) == cache_folder(run.cfg)


def make_plans(run: Run, specs: list[Spec], *, protocol: str | None = None, criterion: str = "cmi",
               progress: bool = True, workers: int = 1, stop=None) -> Plans:
    """Make (compute, resume or load) the plans ``specs`` under ``protocol`` (default ``prune.protocol``).

    ``workers`` defaults to 1: a plan's rankings already split their eigendecompositions over every core
    (:func:`cmi.entropy.cpu_workers`), and two plan processes on top of that oversubscribe a small CPU
    (the smoke sweep from a clean cache on the 2-core AMD EPYC: 63.4 s with one process, 87.8 s with two).
    With ``workers`` > 1, more than two plans to compute and a run that
    workers can load from the cache (one :func:`prepare_run` made), the first is
    computed here (it ranks the per-layer sets the others share), the rest ``workers`` at a time in
    spawned worker processes that load the run from the cache; each plan's arithmetic depends only on its inputs
    and the thread count, which the workers inherit, so the plans are the same bit for bit (a test
    compares them). The permutation-test plans are computed last (the slowest). ``stop()``, when given, is
    asked before each plan is made here; True stops the loop (a wall-clock budget)."""
    from .planner import is_cached, plan

    run = run.with_protocol(protocol or run.cfg.prune.protocol)
    ordered = sorted(specs, key=lambda s: s[1] == "ptest")
    todo = [s for s in ordered if not is_cached(run, s, criterion)]
    if workers > 1 and len(todo) > 2 and stop is None and _loadable(run):
        plan(run, todo[0], criterion=criterion, progress=progress)
        _in_workers(run, todo[1:], criterion, workers, progress)
    made, wall = {}, {}
    for spec in tqdm(ordered, desc="plans", disable=not progress or len(ordered) < 2, leave=False):
        if stop is not None and stop():
            break
        t0 = time.perf_counter()
        made[spec], _ = plan(run, spec, criterion=criterion, progress=progress)
        wall[plan_name(spec)] = time.perf_counter() - t0
    return Plans([made[s] for s in specs if s in made], [plan_name(s) for s in todo], wall)


@functools.lru_cache(maxsize=1)
def _worker_run(cfg: Config) -> Run:
    """A worker process's run, loaded from the cache once per process."""
    return prepare_run(cfg, progress=False)


def _worker_plan(cfg: Config, spec: Spec, criterion: str) -> None:
    from .planner import plan
    plan(_worker_run(cfg), spec, criterion=criterion, progress=False)


def _in_workers(run: Run, specs: list[Spec], criterion: str, workers: int, progress: bool) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    # the likely slowest first, so that no process is left alone with a long plan at the end
    specs = sorted(specs, key=lambda s: (s[0] == "per-layer", s[1] != "ptest", s[0] != "full"))
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=torch.set_num_threads, initargs=(torch.get_num_threads(),)) as pool:
            futures = [pool.submit(_worker_plan, run.cfg, s, criterion) for s in specs]
            try:
                for f in tqdm(as_completed(futures), total=len(futures), desc=f"plans ({workers} processes)",
                              disable=not progress):
                    f.result()
            except KeyboardInterrupt:     # stop the workers now (leaving the pool would wait for their plans)
                for proc in list((getattr(pool, "_processes", None) or {}).values()):
                    proc.terminate()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    except BrokenProcessPool as e:   # e.g. a script without `if __name__ == "__main__":` (spawn re-runs it)
        warnings.warn(f"the plan worker processes stopped ({e}); the remaining plans are computed in this "
                      "process. A script that calls this needs an `if __name__ == '__main__':` guard.",
                      RuntimeWarning, stacklevel=3)

"""A lent GPU's call, prepared: the CUDA tests, the ranking benchmark and the full-width study of a
recipe, within a wall-clock budget, with everything written packed for the trip back.

Here, once (`make loan-kit`): Torch-Pruning and pyclustering as wheels and the Fashion-MNIST files go
to ``.device/`` (git-ignored; the device machine has neither a registry nor the dataset). There, from
the repository root, carrying ``.device`` (docs/usage.md, "On a lent GPU")::

    python3 -m cmi.loan --kit .device --budget 560 --out $OUT tests bench authors
    python3 -m cmi.loan --kit .device --budget 200 --out $OUT paper bench-cpu

Steps (:data:`STEPS`), in the order given, each its own process so that one failing does not stop
the next: ``tests`` (the CUDA tests), ``bench`` and ``bench-cpu`` (``python -m cmi.bench ranking``
on the GPU's batched solver; on every CPU core, about 2 min), ``authors`` and ``paper``
(``python -m cmi.fullwidth`` on Fashion-MNIST with the authors' recipe, 100 epochs, and the
companion's, 30 epochs). A study step's deadline is
what is left of ``--budget`` less :data:`MARGIN_S`; a step not started for lack of time is listed as
such. Output goes to ``<out>/loan.log``; everything the steps wrote to ``<out>/loan.tgz``, and the
reports (``fullwidth.md``, ``claim.md``, the benchmarks) are copied beside it, since at most 8 files
come back from the device machine.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

#: seconds kept back from a study step's deadline (its claim table, the packing, the trip back)
MARGIN_S = 40
#: the controls run on a loan: the references of both recipes' claim tables, 3 random seeds
LOAN_CONTROLS = ("controls.criteria=[cmi,l1,hrank,random,gamma,constant-first]", "controls.seeds=3",
                 "prune.finetune_epochs=1")
#: step -> (what it is, profile and overrides of a study step or None)
STEPS = {
    "tests": ("the CUDA tests (tests/test_gpu_eigh.py, the CUDA evaluation test)", None),
    "bench": ("python -m cmi.bench ranking --alpha 1.01 on the GPU's batched solver", None),
    "bench-cpu": ("python -m cmi.bench ranking --alpha 1.01 on every CPU core", None),
    "authors": ("the full-width study, the authors' recipe (100 epochs)",
                ("paper-authors", ("dataset=fashion-mnist", *LOAN_CONTROLS))),
    "paper": ("the full-width study, the companion's recipe (30 epochs)",
              ("paper", ("dataset=fashion-mnist", "train.epochs=30", *LOAN_CONTROLS))),
}
TEST_IDS = ("tests/test_gpu_eigh.py", "tests/test_train.py::test_evaluate_and_masked_scorer_run_a_cpu_model_on_cuda")


def study_folder(profile: str) -> str:
    return f"{profile}-fashion-mnist-gpu"


def commands(step: str, work: Path, deadline_s: float, py: str = sys.executable,
             overrides: tuple[str, ...] = ()) -> list[list[str]]:
    """The command lines of ``step``, writing under ``work``; ``deadline_s`` for a study step;
    ``overrides``: appended to a study step's (a smaller profile, for a dry run on a CPU)."""
    if step == "tests":
        return [[py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TEST_IDS]]
    bench = [py, "-m", "cmi.bench", "ranking", "--alpha", "1.01", "--skip-reference", "--exact-layers"]
    if step == "bench":
        return [[*bench, "--device", "cuda", "--workers", "1", "--out", str(work / "bench-gpu.md")]]
    if step == "bench-cpu":          # all cores only: one core would take 10 min (figures/bench/ranking-cpu*.md)
        return [[*bench, "--device", "cpu", "--workers", str(len(os.sched_getaffinity(0))),
                 "--out", str(work / "bench-cpu.md")]]
    profile, own = STEPS[step][1]
    return [[py, "-m", "cmi.fullwidth", "--profile", profile, "--deadline", f"{deadline_s:.0f}",
             "--out", str(work / study_folder(profile)), *own, *overrides]]


def environment(kit: Path | None, site: Path) -> dict[str, str]:
    """The steps' environment: this checkout (and the kit's wheels, installed into ``site``) on the
    path, the kit's Fashion-MNIST as the data root."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    paths = [str(Path(__file__).resolve().parents[1])]
    if kit is not None:
        wheels = sorted((kit / "whl").glob("*.whl"))
        if wheels:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                            "--upgrade", "--target", str(site), *map(str, wheels)], check=True)
            paths.append(str(site))
        if (kit / "data").is_dir():
            env["CMI_DATA"] = str((kit / "data").resolve())
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def run(steps: list[str], budget_s: float, out: Path, kit: Path | None = None, overrides: tuple[str, ...] = (),
        log=sys.stdout) -> list[dict]:
    """Run ``steps`` within ``budget_s`` seconds, writing to ``out`` (see the module docstring).
    Returns one row per step: its name, return codes, seconds, or why it did not start."""
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "loan"
    work.mkdir(exist_ok=True)
    env = environment(kit, Path("/tmp/cmi-loan-site"))
    rows = []
    with open(out / "loan.log", "a") as f:
        def say(text: str) -> None:
            for stream in (f, log):
                stream.write(text + "\n")
                stream.flush()

        for step in steps:
            left = budget_s - (time.perf_counter() - t0) - MARGIN_S
            if left <= 0:
                say(f"== {step}: not started, {budget_s:.0f} s budget spent")
                rows.append({"step": step, "started": False})
                continue
            say(f"== {step}: {STEPS[step][0]} ({left:.0f} s left)")
            t1, codes = time.perf_counter(), []
            for cmd in commands(step, work, left, overrides=overrides):
                say("$ " + " ".join(cmd))
                try:
                    codes.append(subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                                timeout=max(1.0, budget_s - (time.perf_counter() - t0))).returncode)
                except subprocess.TimeoutExpired:
                    codes.append("killed at the budget")
            rows.append({"step": step, "started": True, "returncodes": codes, "seconds": time.perf_counter() - t1})
            say(f"== {step}: exit {codes}, {time.perf_counter() - t1:.0f} s")
            pack(work, out)                 # after every step: a call killed from outside still brings some back
    return rows


def pack(work: Path, out: Path) -> None:
    """``work`` into ``out/loan.tgz``; the reports copied to ``out`` under flat names."""
    with tarfile.open(out / "loan.tgz.tmp", "w:gz") as tar:
        tar.add(work, arcname="loan")
    os.replace(out / "loan.tgz.tmp", out / "loan.tgz")
    for path in sorted(work.glob("*/fullwidth.md")) + sorted(work.glob("*/claim.md")):
        shutil.copy(path, out / f"{path.parent.name}-{path.name}")
    for path in sorted(work.glob("bench-*.md")):
        shutil.copy(path, out / path.name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cmi.loan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("steps", nargs="+", choices=list(STEPS))
    parser.add_argument("--budget", type=float, required=True, help="wall-clock seconds for all the steps")
    parser.add_argument("--out", type=Path, required=True, help="folder for loan.log, loan.tgz and the reports")
    parser.add_argument("--kit", type=Path, default=None, help="the folder `make loan-kit` filled (whl/, data/)")
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value",
                        help="overrides appended to the study steps' (e.g. a smaller run for a dry run on a CPU)")
    args = parser.parse_args(argv)
    if args.budget <= MARGIN_S:
        parser.error(f"--budget must be more than {MARGIN_S} s (the margin kept back), got {args.budget}")
    if args.kit is not None and not args.kit.is_dir():
        parser.error(f"--kit {args.kit}: no such folder (make it with `make loan-kit`)")
    rows = run(args.steps, args.budget, args.out, args.kit, tuple(args.set))
    sys.exit(0 if all(r["started"] and all(c == 0 for c in r["returncodes"]) for r in rows) else 1)


if __name__ == "__main__":
    main()

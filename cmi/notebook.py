"""Run numbered notebooks with papermill, as ``make reproduce`` does, one after another in one process:

    python -m cmi.notebook notebooks/04_formulations.ipynb build/quick/04_formulations.ipynb \
        --profile quick --dataset fashion-mnist --set "train.epochs=3"
    python -m cmi.notebook notebooks/0*.ipynb build/quick/ --profile quick     # several: into a folder

Each is the same as ``papermill -k python3 --cwd notebooks -p profile ... -p dataset ... -p overrides ...``,
except that the kernel's connection is encrypted (CurveZMQ) where the kernel supports it:
ipykernel >= 7.4 warns about an unencrypted TCP connection at every start otherwise, and that
warning would be all ``make reproduce`` prints besides the progress and the timings. Several notebooks
share this process (papermill is imported once); each prints its wall time, and the first that fails
stops the run with one error line.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import zmq
from jupyter_client.manager import KernelManager


class EncryptedKernelManager(KernelManager):
    """jupyter_client's kernel manager with ``transport_encryption = "auto"`` (Curve keys for kernels
    whose kernelspec declares support), where pyzmq has CurveZMQ; else the default."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if zmq.has("curve"):
            self.transport_encryption = "auto"


def run_notebook(notebook: Path, output: Path, profile: str, dataset: str | None = None,
                 overrides: str | None = None, log_level: str = "WARNING") -> None:
    """Execute ``notebook`` into ``output`` with the notebooks' parameters (cwd: its folder)."""
    import logging

    import papermill

    logging.getLogger("papermill").setLevel(log_level)
    parameters = {"profile": profile}
    if dataset:
        parameters["dataset"] = dataset
    if overrides:
        parameters["overrides"] = overrides
    papermill.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name="python3",
                               cwd=str(Path(notebook).parent), kernel_manager_class=EncryptedKernelManager)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cmi.notebook", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", type=Path, nargs="+", metavar="notebook")
    parser.add_argument("output", type=Path, help="the executed notebook, or a folder for several")
    parser.add_argument("--profile", required=True)
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--set", dest="overrides", default=None, help='config overrides, "key=value key=value"')
    args = parser.parse_args(argv)
    many = len(args.notebooks) > 1 or args.output.is_dir() or str(args.output).endswith("/")
    from papermill.exceptions import PapermillExecutionError
    start = time.perf_counter()
    for notebook in args.notebooks:
        output = args.output / notebook.name if many else args.output
        t0 = time.perf_counter()
        try:
            run_notebook(notebook, output, args.profile, args.dataset, args.overrides)
        except PapermillExecutionError as e:   # one line, last, instead of papermill's ~60-line traceback
            first = (str(e.evalue).strip().splitlines() or [""])[0]
            print(f"\nthe whole traceback is in the executed notebook {output}", file=sys.stderr)
            sys.exit(f"error: {notebook}, cell {e.exec_count}: {e.ename}: {first}")
        except KeyboardInterrupt:
            sys.exit(f"\ninterrupted: {notebook}; finished stages are cached, the same command resumes")
        if many:
            print(f"{notebook.name}: {time.perf_counter() - t0:.0f} s", flush=True)
    if many:
        print(f"{len(args.notebooks)} notebooks, profile {args.profile}: {time.perf_counter() - start:.0f} s; "
              f"executed notebooks in {args.output}/", flush=True)


if __name__ == "__main__":
    main()

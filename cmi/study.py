"""The whole controls study in one call (``make controls``, ``python -m cmi controls``): saturation, the
controls at equal counts, layer sensitivity, the path ablation, the repairs and the claim table, each
from its module, on one prepared run."""
from __future__ import annotations

import time

from .ablation import ablation_report
from .config import Config
from .controls import equal_counts_report
from .layerwise import saturation_report, sensitivity_report
from .repairs_study import repair_report
from .run import prepare_run
from .tables import timings_table
from .verdict import claim_report


def run_controls(cfg: Config, progress: bool = True, out=None) -> dict:
    """The whole controls study with its tables and figures (written through ``out``, an
    :class:`cmi.outputs.Outputs`, when given): saturation, the controls at equal counts, sensitivity,
    the path ablation, the repairs and the claim table. Returns the tables as lists of rows and the timings."""
    run = prepare_run(cfg, progress)
    timings = {}

    def timed(label, work):
        t0 = time.perf_counter()
        result = work()
        timings[label] = time.perf_counter() - t0
        return result

    sat = timed("saturation (per-layer rankings, every σ rule)", lambda: saturation_report(run, out, progress))
    equal = equal_counts_report(run, out, progress)
    timings.update(equal.pop("timings"))
    sens = timed("sensitivity curves", lambda: sensitivity_report(run, out, progress))
    ablation = timed("path ablation (both protocols' paths, one at a time)", lambda: ablation_report(run, out, progress))
    repairs = timed("repairs (every plan, the layouts)", lambda: repair_report(run, out, progress))
    claim = claim_report(run, equal, sat, out, ablation, repairs)
    tables = {**equal, "saturation": sat, "sensitivity": sens, "claim": claim, "ablation": ablation, "repairs": repairs}
    computed = {"controls evaluations (sum when computed)": sum(r["seconds"] for r in equal["raw"]),
                "sensitivity evaluations (sum when computed)": sum(r["seconds"] for r in sens)}
    tables["timings"] = timings_table(timings, computed)
    if out is not None:
        out.table(tables["timings"], "controls_timings", "Wall time of the controls study (seconds)", floatfmt=".1f")
    tables["timings_dict"] = {**timings, **computed}
    return tables

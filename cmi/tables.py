"""Display titles of the study's tables, apart from the data.

The functions that compute tables return rows keyed by short identifiers (``wins_l1``,
``pruned_pct``, ``switched: "on"``); the columns and values a reader sees are set here, when a table
is written (:func:`titled`), so a change of wording never breaks a computation.
"""
from __future__ import annotations

#: How tables name what each protocol produced.
PROTOCOL_LABELS = {"paper": "paper's text, cut chosen on held-out training images",
                   "authors": "authors' code paths, cut chosen on test data"}

#: Per-layer kept counts of every plan (cmi.controls.kept_counts_table).
KEPT = {"filters_kept": "filters kept", "pruned_pct": "pruned (%)", "chosen_on": "chosen on"}

#: Kernel-width saturation (cmi.layerwise.saturation).
SATURATION = {"sigma_median": "sigma (median)", "mi_all": "I(Y;L) nats", "cmi_1": "CMI_1 nats",
              "picks": "picks to saturate", "seconds": "ranking seconds"}

#: The path ablation (cmi.ablation): per plan and per protocol.
ABLATION_PLANS = {"pruned_pct": "pruned (%)"}
ABLATION = {"plans_changed": "plans changed", "pruned_mean": "pruned mean (%)", "pruned_range": "pruned range (%)",
            "plans_third": "plans ≥ 1/3 removed", "third_within": "≥ 1/3 and within drop (masked)",
            "best_masked": "best masked (%)", "mean_masked": "masked mean (%)",
            "mean_recalibrated": "recalibrated mean (%)", "effect_pruned": "effect on pruned (pp)",
            "effect_masked": "effect on masked (pp)", "effect_recalibrated": "effect on recalibrated (pp)"}
SWITCHED = {"-": "-", "on": "on in the paper's text", "off": "off in the authors' code"}


def verdict_titles(criteria) -> dict[str, str]:
    """Columns of the verdict table (cmi.controls.verdict_table) for ``criteria``."""
    return {**{f"mean_{c}": f"{c} mean (%)" for c in criteria}, "cmi_rank": "cmi mean rank",
            **{f"wins_{c}": f"cmi > {c} (plans)" for c in criteria}}


def titled(rows: list[dict], titles: dict[str, str], values: dict[str, dict] | None = None) -> list[dict]:
    """``rows`` with their keys renamed by ``titles`` (others kept) and, per key of ``values``, its values
    mapped by ``values[key]``: the table as written."""
    values = values or {}
    return [{titles.get(k, k): values.get(k, {}).get(v, v) if k in values else v for k, v in r.items()}
            for r in rows]


def timings_table(this_run: dict[str, float], computed: dict[str, float]) -> list[dict]:
    """Rows {part, seconds this run | seconds when computed} of a timing table."""
    return [{"part": k, "seconds this run": v} for k, v in this_run.items()] + [
        {"part": k, "seconds when computed": v} for k, v in computed.items()]

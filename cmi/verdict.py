"""Does the claim hold? One row per question, each answered by numbers computed from the controls
study's tables (:func:`cmi.study.run_controls`), each naming the file that holds them.

The paper's claim (docs/method.md §1): CMI-ranked pruning removes more than a third of VGG16's filters
for a small drop in test accuracy (0.32 pp on CIFAR-10) without retraining. "Keeps accuracy" here
means within ``max_drop`` (:attr:`cmi.config.Config.keep_drop`: the plans' own choice rule, 1 pp by
default) of the unpruned network.

Each ``*_row`` function answers one question: it returns ``(question, file, cells)`` with ``cells``
``{protocol: (yes?, the numbers)}``; :func:`claim_table` assembles them.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

PAPER_DROP_PP = 0.32           #: the paper's reported drop (pp) for its best plan on CIFAR-10

Cells = dict[str, tuple[bool, str]]


def removes_third(filters_kept: int, filters_total: int) -> bool:
    """Does a plan keeping ``filters_kept`` of ``filters_total`` filters remove at least a third of them
    (the paper's "more than a third")? In integers, so that a plan removing exactly a third counts,
    whatever the rounding of a percentage."""
    return 3 * (int(filters_total) - int(filters_kept)) >= int(filters_total)


@dataclass
class Inputs:
    """What the rows read: the controls' ``summary``, ``verdict`` and ``kept`` tables, the ``saturation``
    rows, the path ablation's summary (or None), the baseline's test accuracy (fraction), ``max_drop``
    (fraction), the criteria, and a description of each mode's budget (``modes``: mode -> words)."""

    summary: list[dict]
    verdict: list[dict]
    kept: list[dict]
    saturation: list[dict]
    baseline_acc: float
    max_drop: float = 0.01
    criteria: tuple[str, ...] = ()
    ablation: list[dict] | None = None
    modes: dict[str, str] | None = None
    #: the baseline's channel census (:func:`cmi.census.census_summary`), and per (protocol, plan) the
    #: filters it removes and how many of them are constant channels
    census: dict | None = None
    constant_removed: dict[tuple[str, str], tuple[int, int]] | None = None
    #: the repair study (:func:`cmi.repairs_study.repair_report`): its ``curves``, ``summary`` and
    #: ``full_test_summary`` rows
    repairs: dict | None = None

    @property
    def protocols(self) -> list[str]:
        return list(dict.fromkeys(r["protocol"] for r in self.summary))

    def within(self, acc: float) -> bool:
        return acc >= self.baseline_acc - self.max_drop

    def cmi_plans(self, protocol: str, mode: str) -> list[dict]:
        return [r for r in self.summary if r["protocol"] == protocol and r["criterion"] == "cmi"
                and r.get(f"{mode}_mean") is not None]


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def _keeps_row(x: Inputs, mode: str, question: str, file: str):
    cells = {}
    for proto in x.protocols:
        plans = x.cmi_plans(proto, mode)
        if plans:
            best = max(plans, key=lambda r: r[f"{mode}_mean"])
            ok = sum(x.within(r[f"{mode}_mean"]) for r in plans)
            cells[proto] = (ok > 0, f"{ok} of {len(plans)} plans; best {_pct(best[f'{mode}_mean'])} "
                                    f"({best['plan']}, {best['filters_kept']}/{best['filters_total']} filters), "
                                    f"mean {_pct(statistics.fmean(r[f'{mode}_mean'] for r in plans))}; "
                                    f"baseline {_pct(x.baseline_acc)}")
    return question, file, cells


def masked_row(x: Inputs):
    return _keeps_row(x, "masked", f"Do the CMI plans keep accuracy (within {100 * x.max_drop:g} pp) without "
                      "retraining, filters masked as the paper evaluates?", "controls_masked.md")


def recalibrated_row(x: Inputs):
    return _keeps_row(x, "recalibrated", "Do they once BatchNorm statistics are re-estimated (no gradient step)?",
                      "controls_recalibrated.md")


def order_rows(x: Inputs) -> list:
    """Per mode: does CMI beat each other criterion at the plans' counts (vs random: beyond its spread)?"""
    others = [c for c in x.criteria if c != "cmi"]
    rows = []
    for mode in dict.fromkeys(v["mode"] for v in x.verdict):
        cells = {}
        for v in (v for v in x.verdict if v["mode"] == mode):
            n = v["plans"]
            wins = {c: v[f"wins_{c}"] for c in others if v.get(f"wins_{c}") is not None}
            if not wins:
                continue
            means = ", ".join(f"{c} {v[f'mean_{c}']:.1f}" for c in x.criteria if v.get(f"mean_{c}") is not None)
            key = wins.get("random", min(wins.values()))
            cells[v["protocol"]] = (key > n / 2, f"more accurate than {', '.join(f'{c} on {w}/{n}' for c, w in wins.items())}"
                                                 f" plans; mean % {means}")
        rows.append((f"Does the CMI order pick better filters than {' / '.join(others)} at the same per-layer counts "
                     f"({mode})? (vs random: beyond its mean + 1 sd over seeds)", "controls_verdict.md", cells))
    return rows


def third_row(x: Inputs):
    cells = {}
    for proto in x.protocols:
        plans = {r["plan"]: r for r in x.cmi_plans(proto, "masked")}
        ks = [k for k in x.kept if k["protocol"] == proto and k["plan"] in plans]
        if ks:
            removed = [k["pruned_pct"] for k in ks]
            big = [k for k in ks if removes_third(plans[k["plan"]]["filters_kept"], plans[k["plan"]]["filters_total"])]
            hits = [k for k in big if x.within(plans[k["plan"]]["masked_mean"])]
            detail = (f"{len(big)} remove{'s' if len(big) == 1 else ''} ≥ 1/3, the best of them masked "
                      f"{_pct(max(plans[k['plan']]['masked_mean'] for k in big))}" if big else "none removes ≥ 1/3")
            cells[proto] = (bool(hits), f"plans remove {min(removed):.1f}–{max(removed):.1f} %; {detail}; "
                                        f"{sum(k['fallbacks'] for k in ks)} layer decisions fell back")
    return (f"Is more than a third of the filters removed within {100 * x.max_drop:g} pp (the paper: "
            f"{PAPER_DROP_PP} pp), masked?", "controls_kept_counts.md", cells)


def ablation_row(x: Inputs):
    """Per base protocol, over its one-path variants: plans that remove >= 1/3 within the drop, and the
    paths with the largest effect on the filters removed and on the recalibrated accuracy."""
    cells = {}
    for base, switched in (("paper", "on"), ("authors", "off")):
        part = [r for r in x.ablation or [] if r.get("switched") == switched]
        if base not in x.protocols or not part:
            continue
        hits = sum(r["third_within"] for r in part)
        effects = []
        for key, what in (("effect_pruned", "filters removed"), ("effect_recalibrated", "recalibrated accuracy")):
            top = max(part, key=lambda r: abs(r[key]))
            effects.append(f"{what} {top['path']} {top[key]:+.1f} pp")
        changed = [r["path"] for r in part if r["plans_changed"]]
        cells[base] = (hits > 0, f"{hits} of {sum(r['plans'] for r in part)} plans ({len(part)} variants); best masked "
                                 f"{max(r['best_masked'] for r in part):.2f} %; largest effect (with - without) on "
                                 + ", on ".join(effects) + f"; paths that change any plan: {', '.join(changed) or 'none'}")
    return (f"Does any one of the authors' code paths make a plan remove ≥ 1/3 within {100 * x.max_drop:g} pp "
            "(masked), and which path moves their plans most? (paper: each switched on alone in the "
            "paper's text; authors: each switched off alone in their code)", "09_path_ablation.md", cells)


def finetuned_row(x: Inputs):
    cells = {}
    for proto in x.protocols:
        plans = x.cmi_plans(proto, "finetuned")
        if plans:
            best = max(plans, key=lambda r: r["finetuned_mean"])
            cells[proto] = (x.within(best["finetuned_mean"]),
                            f"best {_pct(best['finetuned_mean'])} ({best['plan']}), "
                            f"{100 * (x.baseline_acc - best['finetuned_mean']):.1f} pp below the baseline; mean "
                            f"{_pct(statistics.fmean(r['finetuned_mean'] for r in plans))}")
    budget = (x.modes or {}).get("finetuned")
    return (f"Does a short fine-tuning ({budget}) bring a plan back within the drop?" if budget else
            "Does one short epoch of fine-tuning bring a plan back within the drop?", "controls_finetuned.md", cells)


def saturation_rows(x: Inputs) -> list:
    rows = []
    for rule in dict.fromkeys(r["sigma_rule"] for r in x.saturation):
        part = [r for r in x.saturation if r["sigma_rule"] == rule]
        sat = [r for r in part if r["picks"] is not None and r["picks"] == r["picks"]]
        text = (f"{len(sat)} of {len(part)} layers; I(Y; L) = {statistics.fmean(r['mi_all'] for r in part):.2f} "
                "nats; picks: " + ", ".join(f"{int(r['picks'])}/{r['channels']}" if r in sat else "never"
                                            for r in part))
        rows.append((f"Does the estimator saturate (CMI_t ≈ 0 after a few picks) in most layers, σ rule {rule!r}?",
                     "controls_saturation.md", {p: (len(sat) > len(part) / 2, text if i == 0 else "the same estimator")
                                                for i, p in enumerate(x.protocols)}))
    return rows


def constant_row(x: Inputs):
    c = x.census
    text = (f"{c['constant']} of {c['channels']} ({c['constant_pct']:.1f} %): {c['dead']} dead, {c['constant_positive']} "
            f"a constant > 0, in {c['layers_with_constant']} layer{'' if c['layers_with_constant'] == 1 else 's'}; {c['small_gamma']} with |γ| < 0.1·max; removing "
            f"exactly them: masked {_pct(c['acc_masked'])}, recalibrated {_pct(c['acc_recalibrated'])}")
    return ("Does the baseline have constant channels (post-ReLU output constant on the captured images), and what "
            "does removing exactly them cost?", "01_census_summary.md",
            {p: (c["constant"] > 0, text if i == 0 else "the same baseline") for i, p in enumerate(x.protocols)})


def beyond_constant_row(x: Inputs):
    """Per protocol: do plans remove filters that are not constant and still keep accuracy (masked)?
    Where a plan's overlap with the constant channels was not recorded (None: a claim table rebuilt from
    tables written before the overlap was), it removes more than them when it removes more filters than
    there are constant channels."""
    cells = {}
    n_const = x.census["constant"]
    for proto in x.protocols:
        plans = {r["plan"]: r for r in x.cmi_plans(proto, "masked")}
        got = {n: v for (p, n), v in (x.constant_removed or {}).items() if p == proto and n in plans}
        if got:
            known = all(c is not None for _, c in got.values())
            beyond = [n for n, (removed, const) in got.items() if removed > (n_const if const is None else const)]
            hits = [n for n in beyond if x.within(plans[n]["masked_mean"])]
            overlap = (f"{statistics.fmean(c for _, c in got.values()):.1f} of the {n_const} constant ones on average"
                       if known else f"their overlap with the {n_const} constant ones not recorded")
            cells[proto] = (bool(hits), f"plans remove {min(r for r, _ in got.values())}–{max(r for r, _ in got.values())} "
                                        f"filters, {overlap}; {len(beyond)} of {len(got)} remove more than "
                                        + ("constant channels" if known else "there are constant channels")
                                        + f", {len(hits)} of them within the drop (masked)")
    return (f"Do the CMI plans remove more than the constant channels, within {100 * x.max_drop:g} pp (masked)?",
            "controls_kept_counts.md", cells)


def trivial_criteria_row(x: Inputs):
    """Per protocol: in every mode, does CMI beat gamma and constant-first on more than half the plans?"""
    rivals = [c for c in ("gamma", "constant-first") if c in x.criteria]
    cells = {}
    for proto in x.protocols:
        parts = [v for v in x.verdict if v["protocol"] == proto and all(v.get(f"wins_{c}") is not None for c in rivals)]
        if parts:
            ok = all(v[f"wins_{c}"] > v["plans"] / 2 for v in parts for c in rivals)
            cells[proto] = (ok, "; ".join(f"{v['mode']}: " + ", ".join(f"cmi > {c} on {v[f'wins_{c}']}/{v['plans']}"
                                                                          for c in rivals) for v in parts))
    return (f"At equal counts, does CMI beat {' and '.join(rivals)} in every mode (on more than half the plans; "
            "constant-first: beyond its mean + 1 sd over seeds)?", "controls_verdict.md", cells if rivals else {})


REPAIRED = ("recalibrated", "compensated", "reconstructed", "merged")


def repaired_third_row(x: Inputs):
    """Per protocol: CMI plans removing ≥ 1/3, under each repair: how many keep accuracy, and the best."""
    cells = {}
    for proto in x.protocols:
        part = [r for r in (x.repairs or {}).get("curves", []) if r["protocol"] == proto and r["criterion"] == "cmi"
                and removes_third(r["filters_kept"], r["filters_total"])]
        if part:
            counts = {m: sum(x.within(r[f"acc_{m}"]) for r in part) for m in REPAIRED}
            m, r = max(((m, r) for m in REPAIRED for r in part), key=lambda mr: mr[1][f"acc_{mr[0]}"])
            cells[proto] = (any(counts.values()), ", ".join(f"{m} {n}" for m, n in counts.items())
                            + f" of {len(part)} plans within the drop; best {_pct(r[f'acc_{m}'])} ({r['plan']}, {m}, "
                            f"{r['filters_kept']}/{r['filters_total']} filters)")
    return (f"Does any repair without a gradient step keep a plan removing ≥ 1/3 within {100 * x.max_drop:g} pp?",
            "10_repair_curves.md", cells)


def repaired_order_row(x: Inputs):
    """Per layout of the repair study, under its best repair for CMI: does CMI beat L1 and random?"""
    summary = (x.repairs or {}).get("summary", [])
    texts, wins = [], []
    for layout in dict.fromkeys(r["plan"] for r in summary):
        by = {r["criterion"]: r for r in summary if r["plan"] == layout}
        if not {"cmi", "l1", "random"} <= by.keys():
            continue
        m = max(REPAIRED, key=lambda m: by["cmi"][f"{m}_mean"])
        cmi, l1, rnd = by["cmi"][f"{m}_mean"], by["l1"][f"{m}_mean"], by["random"]
        win = cmi > l1 and cmi > rnd[f"{m}_mean"] + rnd[f"{m}_sd"]
        wins.append(win)
        texts.append(f"{layout}, {m}: cmi {_pct(cmi)}, l1 {_pct(l1)}, random {_pct(rnd[f'{m}_mean'])} ± "
                     f"{100 * rnd[f'{m}_sd']:.2f}")
    cells = {p: (all(wins), "; ".join(texts) if i == 0 else "the same layouts")
             for i, p in enumerate(x.protocols)} if texts else {}
    return ("Once repaired (each layout under CMI's best repair), does CMI beat L1 and random (beyond its mean + 1 sd) "
            "on every layout?", "10_repairs.md", cells)


def fixed_layout_row(x: Inputs):
    """Pruned-A on the whole test split: does some repair keep it within the drop, with whose channels?"""
    summary = (x.repairs or {}).get("full_test_summary", [])
    by = {r["criterion"]: r for r in summary}
    if "cmi" not in by:
        return ("", "", {})
    modes = [m for m in REPAIRED if by["cmi"].get(f"{m}_mean") is not None]
    if not modes:
        return ("", "", {})
    m = max(modes, key=lambda m: by["cmi"][f"{m}_mean"])
    within = [c for c, r in by.items() if x.within(r[f"{m}_mean"])]
    text = (f"{m}: " + ", ".join(f"{c} {_pct(r[f'{m}_mean'])}" + (f" ± {100 * r[f'{m}_sd']:.2f}" if r["seeds"] > 1 else "")
                                 for c, r in by.items())
            + f"; within the drop: {', '.join(within) or 'none'}; {by['cmi']['filters_total'] - by['cmi']['filters_kept']}"
            f"/{by['cmi']['filters_total']} filters removed")
    return (f"Does a fixed layout removing ≥ 1/3 (Li et al.'s pruned-A) stay within {100 * x.max_drop:g} pp under a "
            "repair without a gradient step, on the whole test split, and with which criteria's channels?",
            "10_pruned_a_full_test.md", {p: (bool(within), text if i == 0 else "the same layout")
                                         for i, p in enumerate(x.protocols)})


def claim_table(x: Inputs) -> list[dict]:
    """One row per question: {question, answer, <protocol>: short answer with its numbers, ..., file};
    ``answer`` is "yes" when any protocol's answer is. Rows without numbers are left out."""
    census = [constant_row(x), beyond_constant_row(x)] if x.census else []
    questions = [masked_row(x), recalibrated_row(x), *order_rows(x), third_row(x),
                 *([ablation_row(x)] if x.ablation else []), finetuned_row(x), *saturation_rows(x),
                 *census, trivial_criteria_row(x),
                 *([repaired_third_row(x), repaired_order_row(x), fixed_layout_row(x)] if x.repairs else [])]
    return [{"question": q, "answer": "yes" if any(ok for ok, _ in cells.values()) else "no",
             **{p: (f"{'yes' if cells[p][0] else 'no'}: {cells[p][1]}" if p in cells else "") for p in x.protocols},
             "file": file} for q, file, cells in questions if cells]


def claim_report(run, equal: dict, sat: list[dict], out=None, ablation: dict | None = None,
                 repairs: dict | None = None) -> list[dict]:
    """The README's "Does the claim hold?" table from the reports of :mod:`cmi.controls` (``equal``),
    :mod:`cmi.layerwise` (``sat``), :mod:`cmi.ablation` (``ablation``) and :mod:`cmi.repairs_study`
    (``repairs``), the last two when they ran."""
    from .census import census_report, constant_channels
    from .evaluation import controls_budget

    cfg = run.cfg
    budget, n_test = controls_budget(cfg), len(run.ds.test_y)
    constant = [set(sum(constant_channels(maps), [])) for maps in run.acts.features]
    removed = {}
    for proto, plan in equal.get("plans", []):
        kept = plan.kept_channels()
        gone = [set(range(w)) - set(kept[l]) if l in kept else set() for l, w in enumerate(run.acts.widths)]
        removed[proto, plan.name] = (sum(map(len, gone)), sum(len(g & c) for g, c in zip(gone, constant)))
    rows = claim_table(Inputs(equal["summary"], equal["verdict"], equal["kept"], sat,
                              run.baseline.metrics["test_accuracy"], cfg.keep_drop, tuple(cfg.controls.criteria),
                              (ablation or {}).get("summary"),
                              {m: budget.describe(m, n_test) for m in cfg.controls.modes},
                              census_report(run)["summary"], removed, repairs))
    if out is not None:
        out.table([{"protocol": p, "plan": n, "filters removed": r, "constant removed": c}
                   for (p, n), (r, c) in removed.items()], "controls_constant_removed",
                  "Filters each plan removes, and how many of them are constant channels (01_census)")
        write_claim(rows, cfg, n_test, out, cfg.controls.protocols)
    return rows


def write_claim(rows: list[dict], cfg, n_test: int, out, protocols, rebuilt: bool = False) -> None:
    """Write the claim table through ``out`` (an :class:`cmi.outputs.Outputs`), its title naming the
    protocols and the test images behind the numbers; ``rebuilt``: it was read back from the folder's
    tables (:mod:`cmi.claim_tables`), not from the study's run."""
    from .evaluation import controls_budget
    from .tables import PROTOCOL_LABELS

    budget = controls_budget(cfg)
    out.table(rows, "claim", "Does the claim hold? One row per question; protocols: "
              + "; ".join(f"{p}: {PROTOCOL_LABELS[p]}" for p in protocols)
              + f". Plans are scored {budget.describe('masked', n_test).split(', on ')[-1]}; the baseline on "
              f"all {n_test} test images. Each answer's numbers are in the named file"
              + (", from which `python -m cmi claim` rebuilt this table." if rebuilt else "."))

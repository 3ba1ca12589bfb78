"""Does the claim hold? One row per question, each answered by numbers computed from the controls
study's tables (:func:`cmi.controls.run_controls`), each naming the file that holds them.

The paper's claim (METHOD.md §1): CMI-ranked pruning removes more than a third of VGG16's filters
for a small drop in test accuracy (0.32 pp on CIFAR-10) without retraining. "Keeps accuracy" here
means within ``max_drop`` (the plans' own choice rule, 1 pp by default) of the unpruned network.
"""
from __future__ import annotations

import statistics

PAPER_REMOVED = 1 / 3          #: "more than a third of the filters"
PAPER_DROP_PP = 0.32           #: the paper's reported drop (pp) for its best plan on CIFAR-10


def _plans(summary: list[dict], protocol: str, criterion: str, mode: str) -> list[dict]:
    return [r for r in summary if r["protocol"] == protocol and r["criterion"] == criterion
            and r.get(f"{mode}_mean") is not None]


def _best(rows: list[dict], mode: str) -> dict:
    return max(rows, key=lambda r: r[f"{mode}_mean"])


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def claim_table(summary: list[dict], verdict: list[dict], kept: list[dict], saturation: list[dict],
                baseline_acc: float, max_drop: float = 0.01, criteria: tuple[str, ...] = (),
                ablation: list[dict] | None = None) -> list[dict]:
    """One row per question: {question, answer, <protocol>: short answer with its numbers, ..., file}.
    ``summary``, ``verdict``, ``kept``, ``saturation``: the tables of :func:`cmi.controls.run_controls`
    (rows of dicts); ``baseline_acc``: the unpruned network's test accuracy (fraction); ``ablation``:
    :func:`cmi.controls.ablation_summary` rows, when the path ablation ran. ``answer`` is "yes" when
    any protocol's answer is."""
    protocols = list(dict.fromkeys(r["protocol"] for r in summary))
    rows = []

    def within(acc: float) -> bool:
        return acc >= baseline_acc - max_drop

    def add(question: str, file: str, cells: dict[str, tuple[bool, str]]) -> None:
        if cells:
            rows.append({"question": question, "answer": "yes" if any(ok for ok, _ in cells.values()) else "no",
                         **{p: (f"{'yes' if cells[p][0] else 'no'}: {cells[p][1]}" if p in cells else "")
                            for p in protocols}, "file": file})

    for mode, question, file in (
            ("masked", f"Do the CMI plans keep accuracy (within {100 * max_drop:g} pp) without retraining, "
                       "filters masked as the paper evaluates?", "controls_masked.md"),
            ("recalibrated", "Do they once BatchNorm statistics are re-estimated (no gradient step)?",
             "controls_recalibrated.md")):
        cells = {}
        for proto in protocols:
            plans = _plans(summary, proto, "cmi", mode)
            if plans:
                best = _best(plans, mode)
                ok = sum(within(r[f"{mode}_mean"]) for r in plans)
                cells[proto] = (ok > 0, f"{ok} of {len(plans)} plans; best {_pct(best[f'{mode}_mean'])} "
                                        f"({best['plan']}, {best['filters_kept']}/{best['filters_total']} filters), "
                                        f"mean {_pct(statistics.fmean(r[f'{mode}_mean'] for r in plans))}; "
                                        f"baseline {_pct(baseline_acc)}")
        add(question, file, cells)

    others = [c for c in criteria if c != "cmi"]
    for mode in dict.fromkeys(v["mode"] for v in verdict):
        cells = {}
        for v in verdict:
            if v["mode"] != mode:
                continue
            n = v["plans"]
            wins = {c: v[f"cmi > {c} (plans)"] for c in others if v.get(f"cmi > {c} (plans)") is not None}
            if not wins:
                continue
            means = ", ".join(f"{c} {v[f'{c} mean (%)']:.1f}" for c in criteria if v.get(f"{c} mean (%)") is not None)
            key = wins.get("random", min(wins.values()))
            cells[v["protocol"]] = (key > n / 2, f"more accurate than {', '.join(f'{c} on {w}/{n}' for c, w in wins.items())}"
                                                 f" plans; mean % {means}")
        add(f"Does the CMI order pick better filters than {' / '.join(others)} at the same per-layer counts "
            f"({mode})? (vs random: beyond its mean + 1 sd over seeds)", "controls_verdict.md", cells)

    cells = {}
    for proto in protocols:
        plans = {r["plan"]: r for r in _plans(summary, proto, "cmi", "masked")}
        ks = [k for k in kept if k["protocol"] == proto and k["plan"] in plans]
        if ks:
            removed = [k["pruned (%)"] for k in ks]
            big = [k for k in ks if k["pruned (%)"] >= 100 * PAPER_REMOVED]
            hits = [k for k in big if within(plans[k["plan"]]["masked_mean"])]
            detail = (f"{len(big)} remove{'s' if len(big) == 1 else ''} ≥ 1/3, the best of them masked "
                      f"{_pct(max(plans[k['plan']]['masked_mean'] for k in big))}" if big else "none removes ≥ 1/3")
            cells[proto] = (bool(hits), f"plans remove {min(removed):.1f}–{max(removed):.1f} %; {detail}; "
                                        f"{sum(k['fallbacks'] for k in ks)} layer decisions fell back")
    add(f"Is more than a third of the filters removed within {100 * max_drop:g} pp (the paper: "
        f"{PAPER_DROP_PP} pp), masked?", "controls_kept_counts.md", cells)

    if ablation:
        add(f"Does any one of the authors' code paths make a plan remove ≥ 1/3 within {100 * max_drop:g} pp "
            "(masked), and which path moves their plans most? (paper: each switched on alone in the "
            "paper's text; authors: each switched off alone in their code)", "09_path_ablation.md",
            _ablation_cells(ablation, protocols))

    cells = {}
    for proto in protocols:
        plans = _plans(summary, proto, "cmi", "finetuned")
        if plans:
            best = _best(plans, "finetuned")
            cells[proto] = (within(best["finetuned_mean"]),
                            f"best {_pct(best['finetuned_mean'])} ({best['plan']}), "
                            f"{100 * (baseline_acc - best['finetuned_mean']):.1f} pp below the baseline; mean "
                            f"{_pct(statistics.fmean(r['finetuned_mean'] for r in plans))}")
    add("Does one short epoch of fine-tuning bring a plan back within the drop?", "controls_finetuned.md", cells)

    for rule in dict.fromkeys(r["sigma_rule"] for r in saturation):
        part = [r for r in saturation if r["sigma_rule"] == rule]
        sat = [r for r in part if r["picks to saturate"] is not None and r["picks to saturate"] == r["picks to saturate"]]
        text = (f"{len(sat)} of {len(part)} layers; I(Y; L) = {statistics.fmean(r['I(Y;L) nats'] for r in part):.2f} "
                "nats; picks: " + ", ".join(f"{int(r['picks to saturate'])}/{r['channels']}" if r in sat else "never"
                                            for r in part))
        add(f"Does the estimator saturate (CMI_t ≈ 0 after a few picks), σ rule {rule!r}?", "controls_saturation.md",
            {p: (bool(sat), text if i == 0 else "the same estimator") for i, p in enumerate(protocols)})
    return rows


def _ablation_cells(ablation: list[dict], protocols: list[str]) -> dict[str, tuple[bool, str]]:
    """Per base protocol, over its one-path variants: plans that remove >= 1/3 within the drop, and the
    paths with the largest effect on the filters removed and on the recalibrated accuracy."""
    cells = {}
    for base, switched in (("paper", "on in the paper's text"), ("authors", "off in the authors' code")):
        part = [r for r in ablation if r.get("switched") == switched]
        if base not in protocols or not part:
            continue
        hits = sum(r["≥ 1/3 and within drop (masked)"] for r in part)
        n = sum(r["plans"] for r in part)
        effects = []
        for key, what in (("effect on pruned (pp)", "filters removed"),
                          ("effect on recalibrated (pp)", "recalibrated accuracy")):
            top = max(part, key=lambda r: abs(r[key]))
            effects.append(f"{what} {top['path']} {top[key]:+.1f} pp")
        changed = [r["path"] for r in part if r["plans changed"]]
        cells[base] = (hits > 0, f"{hits} of {n} plans ({len(part)} variants); best masked "
                                 f"{max(r['best masked (%)'] for r in part):.2f} %; largest effect (with - without) on "
                                 + ", on ".join(effects)
                                 + f"; paths that change any plan: {', '.join(changed) or 'none'}")
    return cells

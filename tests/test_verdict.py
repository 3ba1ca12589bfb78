"""The claim table answers from the numbers it is given, and says which file holds them."""
from types import SimpleNamespace

from cmi.controls import summarize, verdict_table
from cmi.repairs_study import best_third
from cmi.verdict import Inputs, claim_table, removes_third

CRITERIA = ("cmi", "l1", "random")


def raw_rows():
    """Two plans of one protocol. Plan a keeps accuracy masked (0.925 vs baseline 0.93) and removes
    40 % (60 of 100 filters kept); plan b does not, and removes 10 %. CMI beats random beyond its spread
    on plan a only."""
    rows = []
    acc = {("a", "cmi"): [0.925], ("a", "l1"): [0.90], ("a", "random"): [0.80, 0.82],
           ("b", "cmi"): [0.10], ("b", "l1"): [0.30], ("b", "random"): [0.20, 0.40]}
    for (plan, crit), vals in acc.items():
        for seed, v in enumerate(vals):
            rows.append({"protocol": "paper", "plan": plan, "formulation": "per-layer", "cutoff": "scree",
                         "direction": "forward", "criterion": crit, "seed": seed,
                         "filters_kept": {"a": 60, "b": 90}[plan],
                         "filters_total": 100, "acc_masked": v, "acc_removed": None, "acc_recalibrated": v + 0.01,
                         "acc_finetuned": min(v + 0.05, 0.95), "seconds": 1.0})
    return rows


def test_claim_table_answers_from_the_numbers():
    summary = summarize(raw_rows())
    verdict = verdict_table(summary, CRITERIA)
    kept = [{"protocol": "paper", "plan": "a", "pruned_pct": 40.0, "fallbacks": 2},
            {"protocol": "paper", "plan": "b", "pruned_pct": 10.0, "fallbacks": 0}]
    sat = [{"sigma_rule": "paper", "layer": "conv1_1", "channels": 16, "mi_all": 0.39, "picks": 2},
           {"sigma_rule": "paper", "layer": "conv1_2", "channels": 16, "mi_all": 0.39, "picks": None},
           {"sigma_rule": "paper", "layer": "conv2_1", "channels": 32, "mi_all": 0.39, "picks": 5},
           {"sigma_rule": "median", "layer": "conv1_1", "channels": 16, "mi_all": 1.4, "picks": 12},
           {"sigma_rule": "median", "layer": "conv1_2", "channels": 16, "mi_all": 1.4, "picks": None},
           {"sigma_rule": "median", "layer": "conv2_1", "channels": 32, "mi_all": 1.4, "picks": None}]
    rows = claim_table(Inputs(summary, verdict, kept, sat, baseline_acc=0.93, max_drop=0.01, criteria=CRITERIA))
    masked = next(r for r in rows if r["file"] == "controls_masked.md")
    assert masked["answer"] == "yes" and masked["paper"].startswith("yes: 1 of 2 plans; best 92.50 % (a")
    recal = next(r for r in rows if r["file"] == "controls_recalibrated.md")
    assert recal["answer"] == "yes"                   # 0.935 >= 0.92
    vs = [r for r in rows if r["file"] == "controls_verdict.md"]
    assert len(vs) == 3                               # one per mode with data: masked, recalibrated, finetuned
    # masked: CMI beats random (beyond mean + 1 sd) on plan a only, l1 on plan a only: 1 of 2 -> "no"
    assert vs[0]["answer"] == "no" and "random on 1/2" in vs[0]["paper"] and "l1 on 1/2" in vs[0]["paper"]
    third = next(r for r in rows if r["file"] == "controls_kept_counts.md")
    assert third["answer"] == "yes" and "remove 10.0–40.0 %" in third["paper"] and "2 layer decisions" in third["paper"]
    ft = next(r for r in rows if r["file"] == "controls_finetuned.md")
    assert ft["answer"] == "yes" and "best 95.00 %" in ft["paper"]
    s, m = [r for r in rows if r["file"] == "controls_saturation.md"]
    assert s["answer"] == "yes" and "2 of 3 layers" in s["paper"] and "2/16, never, 5/32" in s["paper"]
    assert m["answer"] == "no" and "1 of 3 layers" in m["paper"]          # one layer of three is not most
    assert len({r["question"] for r in rows}) == len(rows) == 9


def test_verdict_table_keys_hold_the_numbers():
    """The verdict's internal keys (display titles are in cmi.tables.verdict_titles): plan a's and b's
    masked means, CMI's mean rank, and its wins, recomputed by hand from raw_rows()."""
    from cmi.tables import titled, verdict_titles

    verdict = verdict_table(summarize(raw_rows()), CRITERIA)
    masked = next(v for v in verdict if v["protocol"] == "paper" and v["mode"] == "masked")
    assert masked["plans"] == 2
    assert masked["mean_cmi"] == round(100 * (0.925 + 0.10) / 2, 2)
    assert masked["mean_l1"] == round(100 * (0.90 + 0.30) / 2, 2)
    assert masked["mean_random"] == round(100 * (0.81 + 0.30) / 2, 2)
    # ranks among cmi, l1, random: plan a 1 (0.925 > 0.90 > 0.81), plan b 3 (0.10 < 0.30 = 0.30)
    assert masked["cmi_rank"] == 2.0
    assert masked["wins_l1"] == 1 and masked["wins_random"] == 1 and "wins_cmi" not in masked
    assert [v["mode"] for v in verdict] == ["masked", "recalibrated", "finetuned"]    # removed: no data
    shown = titled([masked], verdict_titles(CRITERIA))[0]
    assert shown["cmi mean rank"] == 2.0 and shown["cmi > random (plans)"] == 1 and shown["l1 mean (%)"] == 60.0


def test_claim_table_says_no_when_nothing_keeps_accuracy():
    rows = [dict(r, acc_masked=0.1, acc_recalibrated=0.2, acc_finetuned=0.5, filters_kept=50) for r in raw_rows()]
    summary = summarize(rows)
    out = claim_table(Inputs(summary, verdict_table(summary, CRITERIA),
                             [{"protocol": "paper", "plan": "a", "pruned_pct": 50.0, "fallbacks": 0},
                              {"protocol": "paper", "plan": "b", "pruned_pct": 50.0, "fallbacks": 0}], [],
                             baseline_acc=0.93, criteria=CRITERIA))
    answers = {r["file"]: r["answer"] for r in out}
    assert answers["controls_masked.md"] == answers["controls_kept_counts.md"] == "no"
    assert answers["controls_finetuned.md"] == "no"
    assert "2 remove ≥ 1/3, the best of them masked 10.00 %" in next(
        r["paper"] for r in out if r["file"] == "controls_kept_counts.md")


def test_claim_table_names_the_path_that_moves_the_plans():
    summary = summarize(raw_rows())
    kept = [{"protocol": "paper", "plan": p, "pruned_pct": 10.0, "fallbacks": 0} for p in "ab"]

    def row(path, switched, hits, pruned, recal):
        return {"protocol": path, "path": path, "switched": switched, "plans": 9, "plans_changed": int(pruned != 0),
                "third_within": hits, "best_masked": 10.0, "effect_pruned": pruned, "effect_recalibrated": recal}

    ablation = [{"protocol": "paper", "path": "-", "switched": "-", "plans": 9},
                row("x", "on", 0, -12.0, 1.0), row("y", "on", 0, 3.0, -5.0),
                row("x", "off", 1, 0.0, 0.5), row("y", "off", 0, 2.0, 0.0)]
    rows = claim_table(Inputs(summary, verdict_table(summary, CRITERIA), kept, [], baseline_acc=0.93,
                              criteria=CRITERIA, ablation=ablation))
    r = next(r for r in rows if r["file"] == "09_path_ablation.md")
    assert r["answer"] == "no"          # the authors' column is not among the protocols of this summary
    assert r["paper"].startswith("no: 0 of 18 plans (2 variants)")
    assert "filters removed x -12.0 pp" in r["paper"] and "recalibrated accuracy y -5.0 pp" in r["paper"]
    assert "paths that change any plan: x, y" in r["paper"]
    assert len(claim_table(Inputs(summary, verdict_table(summary, CRITERIA), kept, [], baseline_acc=0.93,
                                  criteria=CRITERIA))) == len(rows) - 1


def test_census_rows_answer_from_the_census_and_the_plans_removals():
    """Plan a removes 40 filters, 10 of them among the 12 constant ones, and keeps accuracy masked;
    plan b removes 12, all constant: only a removes more than the constant channels."""
    summary = summarize(raw_rows())
    kept = [{"protocol": "paper", "plan": "a", "pruned_pct": 40.0, "fallbacks": 0},
            {"protocol": "paper", "plan": "b", "pruned_pct": 12.0, "fallbacks": 0}]
    census = {"channels": 100, "constant": 12, "constant_pct": 12.0, "dead": 5, "constant_positive": 7,
              "layers_with_constant": 3, "small_gamma": 15, "acc_masked": 0.50, "acc_recalibrated": 0.929}
    rows = claim_table(Inputs(summary, verdict_table(summary, CRITERIA), kept, [], baseline_acc=0.93,
                              criteria=CRITERIA, census=census, constant_removed={("paper", "a"): (40, 10),
                                                                                  ("paper", "b"): (12, 12)}))
    const = next(r for r in rows if r["file"] == "01_census_summary.md")
    assert const["answer"] == "yes" and const["paper"].startswith("yes: 12 of 100 (12.0 %): 5 dead, 7 a constant > 0")
    assert "masked 50.00 %, recalibrated 92.90 %" in const["paper"] and "in 3 layers;" in const["paper"]
    beyond = next(r for r in rows if r["question"].startswith("Do the CMI plans remove more than the constant"))
    assert beyond["answer"] == "yes" and "remove 12–40 filters, 11.0 of the 12 constant" in beyond["paper"]
    assert "1 of 2 remove more than constant channels, 1 of them within" in beyond["paper"]
    none = dict(census, constant=0, dead=0, constant_positive=0, layers_with_constant=0, constant_pct=0.0)
    rows = claim_table(Inputs(summary, verdict_table(summary, CRITERIA), kept, [], baseline_acc=0.93,
                              criteria=CRITERIA, census=none, constant_removed={("paper", "b"): (12, 0)}))
    assert next(r for r in rows if r["file"] == "01_census_summary.md")["answer"] == "no"
    one = dict(census, layers_with_constant=1)
    rows = claim_table(Inputs(summary, verdict_table(summary, CRITERIA), kept, [], baseline_acc=0.93,
                              criteria=CRITERIA, census=one, constant_removed={("paper", "b"): (12, 12)}))
    assert "in 1 layer;" in next(r for r in rows if r["file"] == "01_census_summary.md")["paper"]
    assert "0 of them within" in next(r for r in rows if r["question"].startswith("Do the CMI plans remove more"))["paper"]


def test_cmi_against_gamma_and_constant_first_in_every_mode():
    crits = ("cmi", "gamma", "constant-first")
    acc = {("a", "cmi"): [0.9], ("a", "gamma"): [0.5], ("a", "constant-first"): [0.4, 0.5],
           ("b", "cmi"): [0.8], ("b", "gamma"): [0.85], ("b", "constant-first"): [0.1, 0.2]}
    raw = [{"protocol": "paper", "plan": p, "criterion": c, "seed": s, "filters_kept": 60, "filters_total": 100,
            "acc_masked": v, "acc_removed": None, "acc_recalibrated": v, "acc_finetuned": None}
           for (p, c), vals in acc.items() for s, v in enumerate(vals)]
    summary = summarize(raw)
    rows = claim_table(Inputs(summary, verdict_table(summary, crits), [], [], baseline_acc=0.93, criteria=crits))
    row = next(r for r in rows if r["question"].startswith("At equal counts, does CMI beat gamma and constant-first"))
    # gamma wins plan b: cmi beats gamma on 1/2 plans, not more than half -> no
    assert row["answer"] == "no" and "masked: cmi > gamma on 1/2, cmi > constant-first on 2/2" in row["paper"]
    assert "recalibrated:" in row["paper"]


def test_the_fixed_layout_row_reads_the_whole_test_split_and_names_who_keeps_accuracy():
    """Pruned-A: CMI best under reconstructed (0.925, within 1 pp of 0.93), l1 0.91 (not), random
    0.925 ± 0.014 over two seeds (mean within)."""
    raw = [{"protocol": "pruned-A", "plan": "pruned-A", "criterion": c, "seed": s, "filters_kept": 63,
            "filters_total": 100, "acc_removed": 0.1, "acc_recalibrated": 0.5, "acc_reconstructed": v}
           for c, vals in {"cmi": [0.925], "l1": [0.91], "random": [0.915, 0.935]}.items() for s, v in enumerate(vals)]
    summary = summarize(raw_rows())
    x = Inputs(summary, verdict_table(summary, CRITERIA), [], [], baseline_acc=0.93, max_drop=0.01,
               criteria=CRITERIA, repairs={"curves": [], "summary": [], "full_test_summary": summarize(raw)})
    row = next(r for r in claim_table(x) if "pruned-A" in r["question"])
    assert row["answer"] == "yes" and row["file"] == "10_pruned_a_full_test.md"
    assert row["paper"] == ("yes: reconstructed: cmi 92.50 %, l1 91.00 %, random 92.50 % ± 1.41; within the drop: "
                            "cmi, random; 37/100 filters removed")
    x.repairs["full_test_summary"] = summarize([dict(r, acc_reconstructed=0.5) for r in raw])
    row = next(r for r in claim_table(x) if "pruned-A" in r["question"])
    assert row["answer"] == "no" and "within the drop: none" in row["paper"]


def test_a_plan_removing_exactly_a_third_counts_whatever_the_rounding():
    """352 of 1056 filters removed is a third exactly; its percentage, rounded to 33.3 in the kept-counts
    table, is below 100/3, and must not decide the answer."""
    assert removes_third(704, 1056) and not removes_third(705, 1056) and removes_third(0, 3)
    rows = [dict(r, filters_kept=704, filters_total=1056) for r in raw_rows() if r["plan"] == "a"]
    summary = summarize(rows)
    kept = [{"protocol": "paper", "plan": "a", "pruned_pct": 33.3, "fallbacks": 0}]
    out = claim_table(Inputs(summary, verdict_table(summary, CRITERIA), kept, [], baseline_acc=0.93,
                             criteria=CRITERIA))
    third = next(r for r in out if r["file"] == "controls_kept_counts.md")
    assert third["answer"] == "yes" and "1 removes ≥ 1/3" in third["paper"]



def _curve(plan, crit, kept, total, **acc):
    modes = {"masked": 0.1, "removed": 0.1, "recalibrated": 0.5, "compensated": 0.6, "reconstructed": 0.7,
             "merged": 0.3, **acc}
    return {"protocol": "paper", "plan": plan, "criterion": crit, "seed": 0, "filters_kept": kept,
            "filters_total": total, **{f"acc_{m}": v for m, v in modes.items()}}


def _layout_rows(cmi_reconstructed):
    """Pruned-A filled by cmi, l1 and random (two seeds), reconstructed: cmi given, l1 0.91, random 0.91 ± 0.014."""
    return [{"protocol": "pruned-A", "plan": "pruned-A", "criterion": c, "seed": s, "filters_kept": 63,
             "filters_total": 100, "acc_recalibrated": 0.5, "acc_compensated": 0.6, "acc_reconstructed": v,
             "acc_merged": 0.3}
            for c, vals in {"cmi": [cmi_reconstructed], "l1": [0.91], "random": [0.90, 0.92]}.items()
            for s, v in enumerate(vals)]


def test_repair_rows_and_the_best_third_plan_read_only_cmi_plans_removing_a_third():
    """p1 removes 40 % and reaches 92.50 % reconstructed (within 1 pp of 93 %); p2 removes 30 % (not a
    third) at 93 %; p3 removes exactly a third (33 of 99); L1's channels on p1 reach 99 %. Only p1 and
    p3 count, and p1 is the best."""
    curves = [_curve("p1", "cmi", 60, 100, reconstructed=0.925), _curve("p2", "cmi", 70, 100, reconstructed=0.93),
              _curve("p3", "cmi", 66, 99, merged=0.80), _curve("p1", "l1", 60, 100, reconstructed=0.99)]
    plans = [("paper", SimpleNamespace(name=n)) for n in ("p1", "p2", "p3")]
    assert best_third(curves, plans) == {"paper": ("p1", plans[0][1])}
    assert best_third([dict(r, acc_merged=0.95) if r["plan"] == "p3" else r for r in curves],
                      plans)["paper"][0] == "p3"               # the exact third, once it is the best
    summary = summarize(raw_rows())
    x = Inputs(summary, verdict_table(summary, CRITERIA), [], [], baseline_acc=0.93, max_drop=0.01,
               criteria=CRITERIA, repairs={"curves": curves, "summary": summarize(_layout_rows(0.925)),
                                           "full_test_summary": []})
    rows = claim_table(x)
    third = next(r for r in rows if r["file"] == "10_repair_curves.md")
    assert third["answer"] == "yes" and third["paper"] == (
        "yes: recalibrated 0, compensated 0, reconstructed 1, merged 0 of 2 plans within the drop; "
        "best 92.50 % (p1, reconstructed, 60/100 filters)")
    order = next(r for r in rows if r["file"] == "10_repairs.md")     # 0.925 > 0.91 and > 0.91 + 0.0141
    assert order["answer"] == "yes" and order["paper"] == (
        "yes: pruned-A, reconstructed: cmi 92.50 %, l1 91.00 %, random 91.00 % ± 1.41")
    x.repairs["summary"] = summarize(_layout_rows(0.915))                # beats l1, not random's mean + 1 sd
    assert next(r for r in claim_table(x) if r["file"] == "10_repairs.md")["answer"] == "no"

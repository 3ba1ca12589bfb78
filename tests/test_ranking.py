import math

import pytest
import torch

from cmi.ranking import Ranking, rank_channels
from naive_cmi import naive_curves, naive_rank, naive_single_mi


def planted(n=48, seed=0):
    """Post-ReLU-like maps (N, 8, 3, 3) with known structure, plus labels, inputs and a condition."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    y = y[torch.randperm(n, generator=g)]
    means = torch.randn(4, 9, generator=g)
    noise = lambda s: s * torch.randn(n, 9, generator=g)  # noqa: E731
    parity = torch.randn(2, 9, generator=g)
    ch = [means[y] + noise(0.3),                    # 0 informative
          None,                                     # 1 redundant copy of 0
          parity[y % 2] + noise(0.3),               # 2 informative about another aspect
          noise(1.0),                               # 3 noise
          torch.zeros(n, 9),                        # 4 dead
          noise(1.0),                               # 5 noise
          0.4 * means[y] + noise(0.8),              # 6 weakly informative
          None]                                     # 7 exact duplicate of 3
    ch[1] = ch[0] + noise(0.05)
    ch[7] = ch[3].clone()
    feats = torch.relu(torch.stack(ch, 1).reshape(n, 8, 3, 3))
    inputs = torch.randn(n, 3, 4, 4, generator=g) + y.view(n, 1, 1, 1).float()
    cond = [torch.relu(means[y][:, :4].reshape(n, 1, 2, 2) + 0.5 * torch.randn(n, 1, 2, 2, generator=g)),
            torch.relu(torch.randn(n, 2, 3, 3, generator=g))]
    return feats, y, inputs, cond


def assert_same(engine: Ranking, ref: dict, tol=1e-8):
    assert engine.order == ref["order"]
    for key in ("cmi", "objective", "mi_labels"):
        assert len(getattr(engine, key)) == len(ref[key])
        assert max(abs(a - b) for a, b in zip(getattr(engine, key), ref[key])) < tol, key
    if ref["mi_input"]:
        assert max(abs(a - b) for a, b in zip(engine.mi_input, ref["mi_input"])) < tol
    if ref["p_values"]:
        assert engine.p_values == ref["p_values"]


@pytest.mark.parametrize("alpha", [1.01, 2.0])
@pytest.mark.parametrize("conditioned", [False, True])
def test_engine_matches_naive_reference(alpha, conditioned):
    feats, y, inputs, cond = planted()
    condition = cond if conditioned else ()
    res = rank_channels(feats, y, inputs=inputs, condition=condition, alpha=alpha, device="cpu", saturation_tol=0)
    ref = naive_rank(feats, y, inputs=inputs, condition=condition, alpha=alpha)
    assert_same(res, ref)
    assert len(res.order) == 7 and sorted(res.order + [next(iter(set(range(8)) - set(res.order)))]) == list(range(8))
    assert res.order[0] in (0, 1, 2)        # an informative channel first
    # eigendecompositions: S(Y), S(L ∪ Z), S(L ∪ Z, Y); two per candidate per step (C(C+1) - 2 in all);
    # with inputs S(X) and one per pick; with Z, S(Z) and S(Z, Y), and S(S), S(S, Y) per pick
    c = 8
    assert res.entropies == 3 + c * (c + 1) - 2 + (c if inputs is not None else 0) + (2 * c if conditioned else 0)


@pytest.mark.parametrize("conditioned", [False, True])
def test_median_kernel_width_matches_naive_reference(conditioned):
    """sigma="median": every variable's σ is the median of its own pairwise distances (the dead
    channel's, all 0, falls back to 1), computed by loops in the reference."""
    feats, y, inputs, cond = planted()
    condition = cond if conditioned else ()
    res = rank_channels(feats, y, inputs=inputs, condition=condition, sigma="median", device="cpu", saturation_tol=0)
    ref = naive_rank(feats, y, inputs=inputs, condition=condition, sigma="median")
    assert_same(res, ref)
    paper = naive_rank(feats, y, inputs=inputs, condition=condition)
    assert max(abs(a - b) for a, b in zip(ref["cmi"], paper["cmi"])) > 1e-3   # the rule matters here
    assert res.sigma["features"][4] == 1.0 and len(set(res.sigma["features"])) == 7   # dead; 7 a copy of 3


def test_permutation_test_matches_naive_reference():
    feats, y, inputs, cond = planted()
    res = rank_channels(feats, y, condition=cond, permutation=(20, 0.05), seed=3, device="cpu")
    ref = naive_rank(feats, y, condition=cond, permutation=(20, 0.05), seed=3)
    assert_same(res, ref)
    assert res.stopped and res.p_values[-1] >= 0.05 and all(p < 0.05 for p in res.p_values[:-1])
    assert len(res.order) < 7
    again = rank_channels(feats, y, condition=cond, permutation=(20, 0.05), seed=3, device="cpu")
    assert again.order == res.order and again.p_values == res.p_values


def test_authors_permutation_test_leaves_z_out_of_the_shuffles():
    """The authors' test (docs/method.md §9): observed CMI_t conditions on Z, the shuffled ones do not."""
    feats, y, inputs, cond = planted()
    res = rank_channels(feats, y, condition=cond, permutation=(20, 0.05), seed=3, device="cpu",
                        permute_condition=False)
    ref = naive_rank(feats, y, condition=cond, permutation=(20, 0.05), seed=3, permute_condition=False)
    # the last pick leaves only the dead channel: observed CMI_t = 0 and the shuffled ones are 0 up
    # to round-off, so that p-value is decided by round-off in either implementation
    live = [i for i, v in enumerate(ref["cmi"]) if v > 1e-9]
    assert_same(res, {**ref, "p_values": None})
    assert [res.p_values[i] for i in live] == [ref["p_values"][i] for i in live] and len(live) >= 5
    with_z = naive_rank(feats, y, condition=cond, permutation=(20, 0.05), seed=3)
    assert ref["p_values"] != with_z["p_values"][:len(ref["p_values"])]   # the choice matters here
    plain = rank_channels(feats, y, permutation=(20, 0.05), seed=3, device="cpu")
    no_z = rank_channels(feats, y, permutation=(20, 0.05), seed=3, device="cpu", permute_condition=False)
    assert no_z.order == plain.order and no_z.p_values == plain.p_values   # without Z they agree


def test_cmi_decreases_and_reaches_zero_information_left():
    feats, y, inputs, _ = planted(n=64)
    res = rank_channels(feats, y, inputs=inputs)
    assert all(a >= b - 1e-9 for a, b in zip(res.cmi, res.cmi[1:]))       # remaining information shrinks
    assert all(a <= b + 1e-9 for a, b in zip(res.objective, res.objective[1:]))
    assert res.cmi[-1] >= -1e-9 and res.cmi[0] <= res.info["mi_labels_all"]
    assert 0 <= min(res.mi_input) and max(res.mi_labels) <= math.log(4) + 1e-9
    assert Ranking.from_dict(res.to_dict()) == res


def test_degenerate_inputs_give_finite_deterministic_results():
    feats, y, inputs, _ = planted()
    feats[:, 5] = 0                                     # a second dead channel
    feats[:, 6] = feats[:, 0]                           # exact duplicate
    const_inputs = torch.ones_like(inputs)
    a = rank_channels(feats, y, inputs=const_inputs)
    b = rank_channels(feats, y, inputs=const_inputs)
    assert a.order == b.order and a.cmi == b.cmi
    assert all(math.isfinite(v) for v in a.cmi + a.mi_labels + a.mi_input)
    assert max(abs(v) for v in a.mi_input) < 1e-9       # a constant input carries no information
    # a dead channel adds nothing: picking it leaves I(Y; S) where it was
    dead_steps = [t for t, j in enumerate(a.order) if j in (4, 5)]
    assert dead_steps and all(a.objective[t] == pytest.approx(a.objective[t - 1], abs=1e-12) for t in dead_steps)
    # a vanishing kernel width makes every sample unique: all candidates tie, lowest index first
    tiny = rank_channels(feats, y, sigma=1e-9, saturation_tol=0)
    assert tiny.order == list(range(7)) and all(math.isfinite(v) for v in tiny.cmi)
    # ...so the first pick already saturates, and the tail rule puts the dead channels last
    tiny = rank_channels(feats, y, sigma=1e-9)
    assert tiny.saturated_at == 1 and tiny.order == [0, 1, 2, 3, 6, 7, 4]
    zeros = rank_channels(torch.zeros(10, 3, 2, 2), torch.arange(10) % 2)
    assert zeros.order == [0, 1] and all(math.isfinite(v) for v in zeros.cmi)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(features=torch.full((8, 3, 2, 2), float("nan"))), "features contains NaN or Inf"),
    (dict(features=torch.ones(1, 3, 2, 2), labels=torch.zeros(1, dtype=torch.long)), "at least 2"),
    (dict(features=torch.ones(8, 3, 4)), r"features must have shape \(N, C, H, W\)"),
    (dict(labels=torch.zeros(7, dtype=torch.long)), "labels has 7 entries but features has N=8"),
    (dict(labels=torch.full((8,), 10)), r"labels must lie in \[0, num_classes=10\)"),
    (dict(labels=torch.full((8,), -1)), "labels must lie in"),
    (dict(labels=torch.zeros(8)), "labels must be a 1-D integer tensor"),
    (dict(inputs=torch.ones(9, 3, 2, 2)), "inputs has N=9 samples but features has N=8"),
    (dict(inputs=torch.full((8, 3, 2, 2), float("inf"))), "inputs contains NaN or Inf"),
    (dict(condition=[torch.ones(8, 2, 2, 2), torch.ones(6, 2, 2, 2)]), r"condition\[1\] has N=6"),
    (dict(alpha=0), "alpha must be"),
    (dict(permutation=(0, 0.05)), "permutation"),
    (dict(permutation=5), "permutation must be None or"),
    (dict(sigma="magic"), "sigma must be"),
    (dict(saturation_tol=-1e-3), r"saturation_tol must be a number in \[0, 1\)"),
    (dict(saturation_tol=1.0), "saturation_tol must be"),
    (dict(permutation=(5, 0.05), saturation_tol=1e-3), "saturation_tol must be 0 with a permutation test"),
    (dict(dtype=torch.float16), "dtype must be torch.float64 .* or torch.float32, got torch.float16"),
    (dict(chunk=-1), "chunk must be None or a positive int"),
    (dict(chunk=2.5), "chunk must be None or a positive int"),
])
def test_bad_input_is_one_clear_value_error(kwargs, needle):
    args = dict(features=torch.rand(8, 3, 2, 2), labels=torch.arange(8) % 2, num_classes=10)
    args.update(kwargs)
    with pytest.raises(ValueError, match=needle):
        rank_channels(args.pop("features"), args.pop("labels"), **args)


def test_bench_reference_with_the_authors_cost_structure_gives_the_engine_order():
    """The benchmark's speed-up is only meaningful if both sides compute the same ranking."""
    from cmi.reference import reference_ranking

    feats, y, inputs, cond = planted()
    for condition in ([], cond):
        engine = rank_channels(feats, y, inputs=inputs, condition=condition, alpha=1.01, num_classes=4,
                               saturation_tol=0)
        assert reference_ranking(feats, y, inputs, alpha=1.01, condition=condition) == engine.order


# ----------------------------------------------------------------------------- the saturation stop
def saturating(n=40, c=10, seed=1):
    """Post-ReLU maps on 6x6 grids whose single-channel Gram matrices are far from all-ones at the
    paper's σ, so that a few channels together carry all of I(Y; L) (docs/method.md §10); channels 7
    and 9 are exact copies, so the tail rule meets a tie."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    means = torch.randn(4, c, 36, generator=g)
    strength = torch.linspace(1.0, 0.1, c).view(1, c, 1)
    feats = torch.relu(strength * means[y] + 0.75 * torch.randn(n, c, 36, generator=g))
    feats[:, 9] = feats[:, 7]
    inputs = torch.randn(n, 3, 4, 4, generator=g) + y.view(n, 1, 1, 1).float()
    cond = [torch.relu(torch.randn(n, 2, 3, 3, generator=g))]
    return feats.reshape(n, c, 6, 6), y, inputs, cond


@pytest.mark.parametrize("alpha", [1.01, 2.0])
@pytest.mark.parametrize("conditioned", [False, True])
def test_saturation_stop_keeps_the_exact_prefix_and_evaluates_the_tail_exactly(alpha, conditioned):
    feats, y, inputs, cond = saturating()
    condition = cond if conditioned else ()
    exact = rank_channels(feats, y, inputs=inputs, condition=condition, alpha=alpha, saturation_tol=0)
    ref = naive_rank(feats, y, inputs=inputs, condition=condition, alpha=alpha)
    assert_same(exact, ref)                                  # tolerance 0 is the exact run
    assert exact.saturated_at is None and exact.cmi_picks == 9
    mi_all = exact.info["mi_labels_all"]
    tol = math.sqrt(exact.cmi[3] * exact.cmi[4]) / mi_all    # between CMI_4 and CMI_5: stop at pick 5
    fast = rank_channels(feats, y, inputs=inputs, condition=condition, alpha=alpha, saturation_tol=tol)
    t = fast.saturated_at
    assert t == 5
    # the stop is the first pick whose CMI_t falls under the tolerance, as the exact run sees it
    assert exact.cmi[t - 1] <= tol * mi_all < min(exact.cmi[:t - 1], default=math.inf)
    # prefix: identical order and values (same arithmetic), and the naive reference agrees
    assert fast.order[:t] == exact.order[:t] == ref["order"][:t]
    for key in ("cmi", "objective", "mi_labels", "mi_input"):
        assert getattr(fast, key)[:t] == getattr(exact, key)[:t], key
    # the tail: all the other channels, ordered by I(Y; channel) alone (rounded), ties by index,
    # and the curves along it are exact (four-entropy evaluation of the same order)
    assert len(fast.order) == 9 and len(set(fast.order)) == 9
    single = naive_single_mi(feats, y, alpha)
    rest = [j for j in range(10) if j not in fast.order[:t]]
    expected = sorted(rest, key=lambda j: (-round(single[j], 9), j))
    assert fast.order[t:] == expected[:-1]
    assert expected.index(9) == expected.index(7) + 1        # the copies tie: lower index first
    along = naive_curves(feats, y, fast.order, inputs=inputs, condition=condition, alpha=alpha)
    for key in ("cmi", "objective", "mi_labels", "mi_input"):
        assert max(abs(a - b) for a, b in zip(getattr(fast, key), along[key])) < 1e-8, key
    assert fast.info["saturation_tol"] == tol and "tail_rule" in fast.info
    assert fast.entropies < exact.entropies
    assert Ranking.from_dict(fast.to_dict()) == fast


def test_saturation_tail_rule_is_deterministic_and_follows_the_channels():
    feats, y, inputs, _ = saturating()
    a = rank_channels(feats, y, saturation_tol=1e-3)
    b = rank_channels(feats, y, saturation_tol=1e-3)
    assert a == Ranking(**{**b.to_dict(), "seconds": a.seconds})
    assert a.saturated_at is not None and a.saturated_at < 8
    # relabelling the channels relabels the whole ranking (no tie besides the copies 7 and 9,
    # which the permutation keeps in the same index order)
    perm = torch.tensor([7, 0, 2, 3, 1, 5, 9, 6, 4, 8])
    c = rank_channels(feats[:, perm], y, saturation_tol=1e-3)
    back = perm.tolist()
    assert [back[j] for j in c.order] == a.order and c.saturated_at == a.saturated_at


def test_a_condition_that_already_saturates_leaves_every_pick_to_the_tail_rule():
    feats, y, _, _ = saturating()
    res = rank_channels(feats, y, condition=[feats.clone()], saturation_tol=1e-3)
    assert res.saturated_at == 0 and res.cmi_picks == 0
    single = naive_single_mi(feats, y)
    assert res.order == sorted(range(10), key=lambda j: (-round(single[j], 9), j))[:-1]
    assert max(abs(v) for v in res.cmi) < 1e-3 * res.info["mi_labels_all"]
    exact = rank_channels(feats, y, condition=[feats.clone()], saturation_tol=0)
    assert exact.saturated_at is None and len(exact.order) == 9


def test_cmi_curves_shade_the_tail_and_keep_one_legend_for_cuts_and_tail():
    import matplotlib
    matplotlib.use("Agg")
    from cmi.plots import cmi_curves

    feats, y, _, _ = saturating()
    stopped = rank_channels(feats, y, saturation_tol=1e-2)
    exact = rank_channels(feats, y, saturation_tol=0)
    fig = cmi_curves([stopped, exact], {"conv1_1": {"scree": [3, 5]}, "conv1_2": {"xmeans": [2]}})
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["saturated: tail rule, not CMI", "scree", "xmeans"]
    shaded = [p for p in fig.axes[0].patches]
    assert len(shaded) == 1 and not fig.axes[1].patches       # only the stopped ranking has a tail
    x0 = shaded[0].get_x()
    assert x0 == stopped.saturated_at + 0.5


@pytest.mark.parametrize("scale, sigma", [(1e30, "paper"), (1.0, 1e-6)])
def test_a_saturated_estimator_is_said_and_recorded(scale, sigma):
    """Features far wider than the kernel (or a kernel far narrower than the features) make every
    Gram matrix the identity, dead channels all ones: the ranking says so and records the counts."""
    import warnings

    feats, y, _, _ = planted()
    with pytest.warns(UserWarning, match=r"conv-x: the Gram matrices of all 8 channels are numerically the "
                                         r"identity \(7\) or all ones \(1\) at σ rule .*maps 3x3, N = 48"):
        r = rank_channels(feats * scale, y, sigma=sigma, desc="conv-x")
    assert r.info["degenerate_grams"] == {"identity": 7, "ones": 1, "channels": 8}
    assert max(abs(v) for v in r.cmi) < 1e-9                     # what the warning explains
    with warnings.catch_warnings():
        warnings.simplefilter("error")                            # the planted maps are not saturated
        ok = rank_channels(feats, y)
    assert ok.info["degenerate_grams"] == {"identity": 0, "ones": 1, "channels": 8}     # the dead channel


def test_workers_do_not_change_the_ranking():
    feats, y, inputs, cond = planted()
    kw = dict(inputs=inputs, alpha=1.01, saturation_tol=0, chunk=3)   # chunks of 3 candidates, split over threads
    one = rank_channels(feats, y, workers=1, **kw)
    for w in (2, 4):
        many = rank_channels(feats, y, workers=w, **kw)
        assert (many.order, many.cmi, many.mi_labels, many.mi_input) == (one.order, one.cmi, one.mi_labels, one.mi_input)
    cond_one = rank_channels(feats, y, condition=cond, workers=1, **kw)
    cond_two = rank_channels(feats, y, condition=cond, workers=2, **kw)
    assert (cond_two.order, cond_two.cmi) == (cond_one.order, cond_one.cmi)
    with pytest.raises(ValueError, match="workers"):
        rank_channels(feats, y, workers=0)


def test_labels_must_be_every_class_or_num_classes_given():
    feats, y, _, _ = planted()
    relabelled = torch.where(y % 2 == 0, 3, 7)            # two classes spelled {3, 7}
    with pytest.raises(ValueError, match=r"labels take the values \[3, 7\], not every class 0..7"):
        rank_channels(feats, relabelled)
    a = rank_channels(feats, (relabelled == 7).long(), saturation_tol=0)
    b = rank_channels(feats, relabelled, num_classes=8, saturation_tol=0)     # allowed when K is given
    assert a.n_channels == b.n_channels == 8


def test_gathered_entropies_equal_the_plain_batch_bit_for_bit():
    """The worker path (each thread gathers, multiplies and solves its share) against the plain
    batched call on the gathered products, uneven chunks and shares included."""
    from cmi.grams import EntropyCounter
    g = torch.Generator().manual_seed(3)
    x = torch.randn(11, 24, 4, dtype=torch.float64, generator=g)
    k = torch.exp(-torch.cdist(x, x) ** 2 / 6)                         # 11 unit-diagonal Grams, N = 24
    mult = torch.exp(-torch.cdist(x[0], x[0]) ** 2 / 9)
    idx = torch.tensor([9, 2, 7, 3, 10, 0, 5])
    plain = EntropyCounter(1.01, chunk=3)(k[idx], mult)
    for workers in (2, 3):
        ent = EntropyCounter(1.01, chunk=3, workers=workers)
        assert torch.equal(ent.gathered(k, idx, mult), plain) and ent.count == len(idx)


def test_a_ranking_is_the_same_bits_whatever_the_process_thread_count():
    """32 samples of 1024-pixel inputs: MKL splits that Gram product's inner dimension over its threads,
    so computed on the process's threads its bits (I(input; S) here) depend on their number. The ranking
    runs its arithmetic on one thread, so 1 and 2 process threads give the same ranking, bit for bit."""
    g = torch.Generator().manual_seed(0)
    feats = torch.rand(32, 6, 8, 8, generator=g, dtype=torch.float64)
    inputs = torch.rand(32, 1, 32, 32, generator=g, dtype=torch.float64)
    labels = torch.arange(32) % 4
    before = torch.get_num_threads()
    got = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            r = rank_channels(feats, labels, inputs=inputs, sigma="median", saturation_tol=0.0, device="cpu")
            got.append({k: v for k, v in r.to_dict().items() if k != "seconds"})
    finally:
        torch.set_num_threads(before)
    assert got[0] == got[1]

import dataclasses
import re

import pytest

from cmi.config import Config, available_profiles, load_config
from cmi.errors import ConfigError
from cmi.store import digest


def test_profiles_exist_and_resolve():
    assert {"paper", "quick", "smoke"} <= set(available_profiles())
    paper, quick, smoke = (load_config(p) for p in ("paper", "quick", "smoke"))
    assert (paper.data.name, paper.model.width, paper.model.head) == ("cifar10", 1.0, "mlp")
    assert (quick.data.name, quick.model.width) == ("fashion-mnist", 0.25)
    assert smoke.model.width < quick.model.width and smoke.data.train_subset is not None
    assert [c.profile for c in (paper, quick, smoke)] == ["paper", "quick", "smoke"]


def test_overrides_dotted_bare_alias_and_strings():
    cfg = load_config("quick", ["train.epochs=3", "width=0.5", "dataset=synthetic", "test_subset=null", "val_size=500"])
    assert (cfg.train.epochs, cfg.model.width, cfg.data.name, cfg.data.test_subset) == (3, 0.5, "synthetic", None)
    cfg2 = load_config("quick", {"lr": 1, "nesterov": False, "seed": 3})
    assert cfg2.train.lr == 1.0 and isinstance(cfg2.train.lr, float)
    assert cfg2.train.nesterov is False and cfg2.seed == 3
    # everything else comes from the profile
    assert cfg2.train.batch_size == load_config("quick").train.batch_size


@pytest.mark.parametrize("override, needle", [
    ({"epoch": 3}, "unknown config field 'epoch'"),
    ({"train.epoch": 3}, "unknown field 'train.epoch'"),
    ({"trian.epochs": 3}, "unknown config section 'trian'"),
    ({"epochs": "many"}, "train.epochs must be int, got str"),
    ({"epochs": 2.5}, "train.epochs must be int, got float"),
    ({"nesterov": 1}, "train.nesterov must be bool, got int"),
    ({"epochs": True}, "train.epochs must be int, got bool"),
    ({"dataset": "imagenet"}, "data.name must be one of"),
    ({"head": "deep"}, "model.head must be one of"),
    ({"width": 0}, "model.width must be in"),
    ({"epochs": 0}, "train.epochs must be >= 1"),
    ({"device": "tpu"}, "device must be one of"),
    ({"lr": None}, "train.lr must not be null"),
    ({"cmi.saturation_tol": -0.1}, "cmi.saturation_tol must be in .0, 1., got -0.1"),
    ({"schedule": "step"}, "train.schedule must be one of"),
    ({"decay_norm": "yes"}, "train.decay_norm must be bool"),
])
def test_bad_overrides_name_the_problem(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        load_config("smoke", override)


def test_authors_profiles_extend_their_base_with_the_authors_recipe():
    for base in ("quick", "medium"):
        b, a = load_config(base), load_config(f"{base}-authors")
        assert a.profile == f"{base}-authors"
        assert (a.data, a.model, a.cmi, a.prune) == (b.data, b.model, b.cmi, b.prune)
        # the controls differ only in the two criteria that test the constant-channel explanation, and
        # medium-authors runs the path ablation on one plan, as quick does (medium: on every plan)
        assert a.controls.criteria == b.controls.criteria + ("gamma", "constant-first")
        assert a.controls.ablation_plans == ("per-layer-scree-bidirectional",)
        assert dataclasses.replace(a.controls, criteria=b.controls.criteria,
                                   ablation_plans=b.controls.ablation_plans) == b.controls
        t = a.train
        assert (t.schedule, t.lr, t.weight_decay, t.decay_norm, t.label_smoothing, t.batch_size) == \
            ("onecycle", 0.01, 0.01, True, 0.0, 256)
        steps = t.epochs * ((60000 - a.data.val_size) // t.batch_size)
        assert abs(steps - 100 * 195) < 214       # the authors' 100 CIFAR-10 epochs of 195 steps


def test_extends_chains_and_refuses_loops(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: quick\ntrain: {epochs: 3}\n")
    (tmp_path / "b.yaml").write_text(f"extends: {tmp_path / 'a.yaml'}\nmodel: {{width: 0.5}}\n")
    b = load_config(str(tmp_path / "b.yaml"))
    assert (b.profile, b.train.epochs, b.model.width, b.data.name) == ("b", 3, 0.5, "fashion-mnist")
    (tmp_path / "c.yaml").write_text(f"extends: {tmp_path / 'd.yaml'}\n")
    (tmp_path / "d.yaml").write_text(f"extends: {tmp_path / 'c.yaml'}\n")
    with pytest.raises(ConfigError, match="without a loop"):
        load_config(str(tmp_path / "c.yaml"))


def test_fields_added_later_leave_old_cache_keys_alone():
    quick = load_config("quick")
    assert "schedule" not in quick.payload("train")["train"] and "decay_norm" not in quick.payload("train")["train"]
    changed = quick.replace({"schedule": "onecycle"})
    assert changed.payload("train")["train"]["schedule"] == "onecycle"
    assert digest(changed, "train") != digest(quick, "train")


def test_bad_profiles(tmp_path):
    with pytest.raises(ConfigError, match="unknown profile 'nope'.*paper"):
        load_config("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2]\n")
    with pytest.raises(ConfigError, match="section 'train'.*must be a mapping"):
        load_config(str(bad))
    bad.write_text("train: {epochs: 2, optimiser: adam}\n")
    with pytest.raises(ConfigError, match="unknown field 'train.optimiser'"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="must look like key=value"):
        load_config("smoke", ["epochs"])


def test_digest_depends_only_on_named_sections():
    from cmi.store import digest

    cfg = load_config("quick")
    key = ("data", "model", "train")
    assert digest(cfg, *key) == digest(load_config("quick"), *key)
    assert re.fullmatch(r"[0-9a-f]{12}", digest(cfg, *key))
    assert digest(cfg, *key) != digest(cfg.replace({"lr": 0.2}), *key)
    assert digest(cfg, *key) != digest(cfg.replace({"seed": 1}), *key)
    # the device and profile label do not change what is computed
    assert digest(cfg, *key) == digest(cfg.replace({"device": "cpu", "profile": "x"}), *key)
    assert digest(cfg, "data") == digest(cfg.replace({"lr": 0.2}), "data")
    # a single field: only that field (and the seed) counts
    assert digest(cfg, "cmi.n_samples") == digest(cfg.replace({"cmi.alpha": 2.0}), "cmi.n_samples")
    assert digest(cfg, "cmi.n_samples") != digest(cfg.replace({"cmi.n_samples": 64}), "cmi.n_samples")
    # the payload is exactly the seed and the named sections / fields, as plain values
    payload = cfg.payload("data", "cmi.n_samples")
    assert payload == {"seed": cfg.seed, "data": dataclasses.asdict(cfg.data), "cmi.n_samples": cfg.cmi.n_samples}
    with pytest.raises(ConfigError, match="unknown config section"):
        cfg.payload("nope")
    with pytest.raises(ConfigError, match="unknown config section or field 'cmi.nope'"):
        digest(cfg, "cmi.nope")


def test_save_config_writes_the_resolved_config(tmp_path):
    from cmi.store import save_config

    cfg = load_config("smoke", {"epochs": 3, "lr": 0.2})
    save_config(cfg, tmp_path / "sub" / "config.yaml")
    assert load_config(str(tmp_path / "sub" / "config.yaml")) == cfg
    assert not list((tmp_path / "sub").glob(".*.tmp"))


def test_keep_drop_is_max_drop_or_one_point():
    assert load_config("smoke", {"prune.max_drop": None}).keep_drop == 0.01
    assert load_config("smoke", {"prune.max_drop": 0.03}).keep_drop == 0.03
    assert load_config("smoke", {"prune.max_drop": 0.0}).keep_drop == 0.0


def test_parse_overrides_is_public():
    from cmi.config import parse_overrides

    assert parse_overrides(["train.epochs=3", "width=0.5"]) == {"train.epochs": 3, "width": 0.5}
    with pytest.raises(ConfigError, match="must look like key=value"):
        parse_overrides(["epochs"])


def test_yaml_round_trip(tmp_path):
    cfg = load_config("paper", {"epochs": 7})
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(str(path)) == cfg
    assert dataclasses.asdict(cfg)["train"]["epochs"] == 7
    assert isinstance(cfg, Config)


def test_command_line_takes_overrides_after_options(capsys):
    from cmi.__main__ import main
    assert main(["config", "--profile", "quick", "dataset=synthetic", "val_size=500", "train.epochs=2"]) == 0
    text = capsys.readouterr().out
    assert "name: synthetic" in text and "epochs: 2" in text
    assert main(["config", "--profile", "quick", "epochs=many"]) == 2
    assert "train.epochs must be int" in capsys.readouterr().err


def test_notebook_overrides_as_one_string_equal_the_dict():
    """`make reproduce SET="..."` hands papermill one string of key=value words."""
    from cmi.outputs import start_notebook

    cfg_s, out_s = start_notebook("smoke", overrides="train.epochs=3 cmi.n_samples=32", notebook="t")
    cfg_d, out_d = start_notebook("smoke", overrides={"train.epochs": 3, "cmi.n_samples": 32}, notebook="t")
    assert cfg_s == cfg_d and cfg_s.train.epochs == 3 and cfg_s.cmi.n_samples == 32
    assert out_s.folder == out_d.folder != start_notebook("smoke", notebook="t")[1].folder


# ----------------------------------------------------------------------------- checked before any work starts
@pytest.mark.parametrize("override, needle", [
    ({"alpha": float("inf")}, "cmi.alpha must be a finite number > 0, got inf"),
    (["alpha=.nan"], "cmi.alpha must be a finite number > 0, got nan"),
    ({"dataset": "synthetic", "val_size": 500, "train_subset": None, "n_samples": 1600},
     "cmi.n_samples is 1600, more than the 1500 training images this config uses"),
    ({"train_subset": 100, "n_samples": 128}, "cmi.n_samples is 128, more than the 100 training images"),
    ({"dataset": "fashion-mnist", "data.name": "cifar10"}, "'dataset' and 'data.name' both set data.name"),
])
def test_sizes_and_spellings_checked_when_resolved(override, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config("smoke", override)


def test_subset_larger_than_the_split_is_clamped_with_a_warning():
    with pytest.warns(UserWarning, match=r"data.train_subset=9999 is more than the 1488 training images left after "
                                         r"val_size=512 of synthetic: using 1488"):
        cfg = load_config("smoke", {"dataset": "synthetic", "train_subset": 9999, "val_size": 512})
    assert cfg.data.train_subset == 1488
    with pytest.warns(UserWarning, match="data.test_subset=600 is more than the 500 test images of synthetic"):
        assert load_config("smoke", {"dataset": "synthetic", "test_subset": 600}).data.test_subset == 500


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused_when_resolved():
    with pytest.raises(ConfigError, match="device is 'cuda' but CUDA is not available on this machine"):
        load_config("smoke", {"device": "cuda"})


@pytest.mark.parametrize("var", ["CMI_DATA", "CMI_ARTIFACTS"])
def test_env_folder_that_is_a_file(var, tmp_path, monkeypatch):
    f = tmp_path / "a-file"
    f.write_text("")
    monkeypatch.setenv(var, str(f))
    with pytest.raises(ConfigError, match=f"{var}='.*a-file' is a file, not a folder"):
        load_config("smoke")


def test_overrides_of_the_wrong_kind_are_one_error():
    """``papermill -p overrides 3`` hands the notebooks an int."""
    from cmi.outputs import start_notebook
    with pytest.raises(ConfigError, match="overrides must be a mapping {key: value} or a list of 'key=value' "
                                          "strings, got int 3"):
        start_notebook("smoke", None, 3)


def test_command_line_prints_warnings_as_one_line():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "cmi", "config", "--profile", "smoke", "dataset=synthetic",
                        "train_subset=99999", "test_subset=100", "sensitivity_test_images=500"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == ("warning: data.train_subset=99999 is more than the 1488 training images "
                                              "left after val_size=512 of synthetic: using 1488\n"
                                              "warning: controls.sensitivity_test_images=500 is more than the 100 "
                                              "test images this config uses: using 100\n")


def test_controls_image_counts_above_the_test_split_are_clamped_with_a_warning():
    from cmi.evaluation import controls_budget
    with pytest.warns(UserWarning, match=r"controls.test_images=5000 is more than the 1000 test images"):
        cfg = load_config("smoke", ["dataset=fashion-mnist", "test_subset=1000", "controls.test_images=5000",
                                    "sensitivity_test_images=400"])
    assert (cfg.controls.test_images, cfg.controls.sensitivity_test_images) == (1000, 400)
    assert "on 1000 test images" in controls_budget(cfg).describe("masked")


@pytest.mark.parametrize("override, message", [
    ("val_size=0", "data.val_size must be >= 1"),
    ("weight_decay=.inf", "train.weight_decay must be a finite number"),
    ("lr=.inf", "train.lr must be a finite number"),
    ("finetune_lr=.nan", "prune.finetune_lr must be a finite number"),
    ("width=0.0234", "conv1_1 would have 1 filter"),
    ("device=cuda:x", r"device must be one of .* or 'cuda:N', got 'cuda:x'"),
])
def test_settings_that_used_to_fail_after_training_are_refused_when_the_config_is_read(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("smoke", [override])
    assert load_config("smoke", ["width=0.0235"]).model.width == 0.0235     # 2 filters in conv1_1: accepted


def test_a_key_given_twice_is_refused():
    for overrides in (["train.epochs=1", "train.epochs=2"], ["epochs=1", "epochs=2"]):
        with pytest.raises(ConfigError, match="given twice"):
            load_config("smoke", overrides)
    with pytest.raises(ConfigError, match="give it once"):     # two spellings of one field
        load_config("smoke", ["epochs=1", "train.epochs=2"])


@pytest.mark.parametrize("var", ["CMI_DATA", "CMI_ARTIFACTS", "CMI_CONFIGS"])
def test_env_folder_set_but_empty_is_refused(var, monkeypatch):
    monkeypatch.setenv(var, "")          # Path("") would be the current folder
    with pytest.raises(ConfigError, match=f"{var} is set but empty"):
        load_config("smoke")


def test_an_empty_profile_file_is_refused(tmp_path):
    for text in ("", "# only a comment\n"):
        (tmp_path / "empty.yaml").write_text(text)
        with pytest.raises(ConfigError, match="empty.yaml' is empty"):
            load_config(str(tmp_path / "empty.yaml"))


def test_out_is_refused_where_a_command_writes_no_tables(capsys):
    import pytest
    from cmi.__main__ import main
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--profile", "smoke", "--out", "/tmp/x"])
    assert e.value.code == 2 and "--out is for train --seeds, controls, claim, census and repairs, not sweep" in capsys.readouterr().err

import dataclasses

import pytest

from cmi.config import Config, available_profiles, load_config
from cmi.errors import ConfigError


def test_profiles_exist_and_resolve():
    assert {"paper", "quick", "smoke"} <= set(available_profiles())
    paper, quick, smoke = (load_config(p) for p in ("paper", "quick", "smoke"))
    assert (paper.data.name, paper.model.width, paper.model.head) == ("cifar10", 1.0, "mlp")
    assert (quick.data.name, quick.model.width) == ("fashion-mnist", 0.25)
    assert smoke.model.width < quick.model.width and smoke.data.train_subset is not None
    assert [c.profile for c in (paper, quick, smoke)] == ["paper", "quick", "smoke"]


def test_overrides_dotted_bare_alias_and_strings():
    cfg = load_config("quick", ["train.epochs=3", "width=0.5", "dataset=synthetic", "test_subset=null"])
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
])
def test_bad_overrides_name_the_problem(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        load_config("smoke", override)


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
    cfg = load_config("quick")
    assert cfg.digest("data", "model", "train") == load_config("quick").digest("data", "model", "train")
    assert cfg.digest("data", "model", "train") != cfg.replace({"lr": 0.2}).digest("data", "model", "train")
    assert cfg.digest("data", "model", "train") != cfg.replace({"seed": 1}).digest("data", "model", "train")
    # the device and profile label do not change what is computed
    assert cfg.digest("data", "model", "train") == cfg.replace({"device": "cpu", "profile": "x"}).digest(
        "data", "model", "train")
    assert cfg.digest("data") == cfg.replace({"lr": 0.2}).digest("data")
    with pytest.raises(ConfigError, match="unknown config section"):
        cfg.digest("nope")


def test_yaml_round_trip(tmp_path):
    cfg = load_config("paper", {"epochs": 7})
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(str(path)) == cfg
    assert dataclasses.asdict(cfg)["train"]["epochs"] == 7
    assert isinstance(cfg, Config)


def test_command_line_takes_overrides_after_options(capsys):
    from cmi.__main__ import main
    assert main(["config", "--profile", "quick", "dataset=synthetic", "train.epochs=2"]) == 0
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

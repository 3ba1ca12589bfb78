"""What a user sees when something goes wrong (issue #27's second list): a full disk, unwritable or
looping folders, cached files that parse but cannot be right, Ctrl-C, a failing notebook. Each is one
message that names the file or setting and the fix, and nothing already saved is lost."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cmi.errors import CacheCorrupt, ConfigError, Interrupted, WriteFailed
from cmi.store import save_json, save_torch


# ----------------------------------------------------------------------------- writes
def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    save_json({"old": 1}, path)

    def full(*_):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteFailed, match=r"cannot write '.*x\.json': no space left on the device; free some space"):
        save_json({"new": 2}, path)
    assert json.loads(path.read_text()) == {"old": 1} and list(tmp_path.iterdir()) == [path]   # no temp file left


def test_torch_save_on_a_full_disk_is_the_same_error(tmp_path, monkeypatch):
    """torch's zip writer reports a short write as "unexpected pos"; with (almost) no space left that
    is a full disk, otherwise it is passed on unchanged."""
    import shutil
    from collections import namedtuple

    def short_write(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")
    monkeypatch.setattr(torch, "save", short_write)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 0))
    with pytest.raises(WriteFailed, match="no space left on the device"):
        save_torch({"w": 1}, tmp_path / "m.pt")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 0, 10**9))
    with pytest.raises(RuntimeError, match="unexpected pos") as e:
        save_torch({"w": 1}, tmp_path / "m.pt")
    assert not isinstance(e.value, WriteFailed)


def test_a_read_only_folder_is_one_error(tmp_path, monkeypatch):
    import tempfile

    def read_only(*_, **__):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(WriteFailed, match=r"cannot write '.*y\.json': read-only file system; make the folder "
                                          r"writable, or point CMI_ARTIFACTS at a writable folder"):
        save_json({}, tmp_path / "y.json")


# ----------------------------------------------------------------------------- folders
def test_a_symlink_loop_or_unreadable_folder_is_refused_before_work(tmp_path, monkeypatch):
    from cmi.config import load_config
    a, b = tmp_path / "a", tmp_path / "b"
    a.symlink_to(b)
    b.symlink_to(a)
    monkeypatch.setenv("CMI_DATA", str(a))
    with pytest.raises(ConfigError, match=r"CMI_DATA='.*a' is a symbolic link that leads nowhere"):
        load_config("smoke")
    monkeypatch.setenv("CMI_DATA", str(tmp_path))
    monkeypatch.setenv("CMI_ARTIFACTS", str(tmp_path))
    monkeypatch.setattr(os, "access", lambda p, mode: not mode & os.W_OK)     # as for another user's folder
    with pytest.raises(ConfigError, match=r"CMI_ARTIFACTS='.*' is not writable by this user"):
        load_config("smoke")
    monkeypatch.setattr(os, "access", lambda p, mode: False)
    with pytest.raises(ConfigError, match=r"CMI_DATA='.*' is not readable by this user"):
        load_config("smoke")


def test_cmi_data_without_fashion_mnist_says_which_copy_is_read(tmp_path, monkeypatch):
    from test_data import write_fashion_fixture

    from cmi import data
    from cmi.config import load_config
    write_fashion_fixture(tmp_path / "elsewhere")
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "elsewhere" / "FashionMNIST" / "raw")
    monkeypatch.setenv("CMI_DATA", str(tmp_path / "mine"))
    with pytest.warns(UserWarning, match=r"mine/FashionMNIST/raw/ holds no Fashion-MNIST .* reading the copy in "
                                         r".*elsewhere/FashionMNIST/raw/"):
        ds = data.load_dataset(load_config("smoke", ["dataset=fashion-mnist", "val_size=5", "train_subset=null",
                                                     "test_subset=null"]))
    assert len(ds.test_y) == 20


# ----------------------------------------------------------------------------- impossible cache content
def test_a_cached_ranking_of_another_layer_or_out_of_range_is_recomputed(trained, tmp_path):
    from cmi.ranking import cached_ranking
    _, acts, _ = trained
    first, cached = cached_ranking(acts, 0, [], cache_dir=tmp_path, alpha=1.01, sigma="paper", seed=0,
                                   saturation_tol=0.0)
    assert not cached
    path = next((tmp_path / "rankings").glob("*.json"))
    for bad in ({**first.to_dict(), "order": [0, 99, *first.order[2:]]},        # a channel index out of range
                {**first.to_dict(), "n_channels": 2 * first.n_channels}):      # another layer's ranking
        save_json(bad, path)
        with pytest.warns(UserWarning, match=r"cached ranking .* is corrupt .* not a ranking of 4 channels"):
            again, cached = cached_ranking(acts, 0, [], cache_dir=tmp_path, alpha=1.01, sigma="paper", seed=0,
                                   saturation_tol=0.0)
        assert not cached and again.order == first.order and path.with_name(path.name + ".corrupt").is_file()


def test_a_saved_plan_with_an_empty_or_impossible_kept_list_is_refused():
    from cmi.plans import LayerDecision, Plan
    d = LayerDecision(layer=1, name="conv1_2", channels=4, keep=2, kept=[0, 3], condition=[], candidates=[2],
                      scores=[], phase="forward", ranking={})
    p = Plan("per-layer", "scree", "forward", [4, 4], "m", {}, [d], complete=True)
    assert Plan.from_dict(p.to_dict()) == p
    for kept in ([], [0, 4], [1, 1]):
        bad = p.to_dict()
        bad["decisions"][0]["kept"] = kept
        with pytest.raises(ValueError, match="do not fit widths"):
            Plan.from_dict(bad)


def test_metrics_without_their_keys_and_a_model_of_another_width_name_the_file(tiny_cfg):
    from cmi.train import baseline_dir, train_baseline
    cfg = tiny_cfg.replace({"epochs": 1})
    train_baseline(cfg, progress=False)
    run_dir = baseline_dir(cfg)
    good = (run_dir / "metrics.json").read_text()
    (run_dir / "metrics.json").write_text('{"metrics": {}, "history": []}')
    with pytest.raises(CacheCorrupt, match=r"metrics.json' lack their keys .* delete .* to train this baseline"):
        train_baseline(cfg, progress=False)
    (run_dir / "metrics.json").write_text(good)
    blob = torch.load(run_dir / "model.pt", weights_only=True)
    blob["spec"]["width"] = 0.125                    # the recorded width disagrees with the weights
    torch.save(blob, run_dir / "model.pt")
    with pytest.raises(CacheCorrupt, match=r"model.pt' does not hold the network it describes \(RuntimeError: "
                                           r"size mismatch for features.0.weight"):
        train_baseline(cfg, progress=False)


def test_activations_of_another_model_name_the_file_to_delete(tiny_cfg):
    from cmi.run import cache_folder, prepare_run
    cfg = tiny_cfg.replace({"epochs": 1, "cmi.n_samples": 16})
    run = prepare_run(cfg, progress=False)
    path = cache_folder(cfg) / "activations.pt"
    blob = torch.load(path, weights_only=True)
    blob["model"] = "0123456789ab"
    torch.save(blob, path)
    with pytest.raises(CacheCorrupt, match=rf"{path} was captured from another model: .* Delete {path}"):
        prepare_run(cfg, progress=False)
    assert run.acts.model != "0123456789ab"


# ----------------------------------------------------------------------------- Ctrl-C and notebooks
def test_ctrl_c_in_training_says_where_it_stopped(tiny_cfg, tmp_path):
    from cmi.data import load_dataset
    from cmi.models import build_model
    from cmi.train import fit
    cfg = tiny_cfg.replace({"epochs": 3})
    ds = load_dataset(cfg)

    def interrupt(epoch, step, model):
        if epoch == 1 and step == 1:
            raise KeyboardInterrupt
    with pytest.raises(Interrupted, match=r"training stopped in epoch 2 of 3; epoch 1 is saved in .*checkpoint"):
        fit(build_model(10, 0.0625, "linear"), ds, cfg.train, seed=0, run_dir=tmp_path, progress=False,
            on_step=interrupt)


def test_ctrl_c_while_a_checkpoint_is_written_names_the_epochs_on_disk(tiny_cfg, tmp_path, monkeypatch):
    from cmi import train
    from cmi.data import load_dataset
    from cmi.models import build_model
    cfg = tiny_cfg.replace({"epochs": 3})
    ds = load_dataset(cfg)
    real, calls = train.save_torch, []

    def save(obj, path):                 # the second checkpoint (epoch 2) is interrupted before it lands
        calls.append(obj["epoch"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(obj, path)
    monkeypatch.setattr(train, "save_torch", save)
    with pytest.raises(Interrupted, match=r"training stopped in epoch 2 of 3; epoch 1 is saved in .*checkpoint"):
        train.fit(build_model(10, 0.0625, "linear"), ds, cfg.train, seed=0, run_dir=tmp_path, progress=False)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["epoch"] == 1


def test_ctrl_c_on_the_command_line_is_one_line_and_the_rerun_resumes(tmp_path):
    args = [sys.executable, "-m", "cmi", "train", "--no-progress", "dataset=synthetic", "width=0.0625", "epochs=40",
            "train_subset=512", "test_subset=128", "val_size=64"]
    p = subprocess.Popen(args, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    from cmi.config import load_config
    from cmi.train import baseline_dir
    ckpt = baseline_dir(load_config("smoke", args[5:])) / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.is_file() and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=120)[1]
    assert p.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: training stopped in epoch ") and last.endswith("the same command resumes")
    assert "Traceback" not in err
    r = subprocess.run(args, capture_output=True, text=True)                     # the same command
    assert r.returncode == 0 and "resuming from" in r.stderr, r.stderr


def test_a_failing_notebook_ends_with_one_error_line(tmp_path, monkeypatch, capsys):
    from papermill.exceptions import PapermillExecutionError

    from cmi import notebook

    def fail(*_, **__):
        raise PapermillExecutionError(3, 3, "cfg = load_config(...)", "ConfigError",
                                      "train.epochs must be >= 1, got 0", ["long", "traceback"])
    monkeypatch.setattr(notebook, "run_notebook", fail)
    with pytest.raises(SystemExit) as e:
        notebook.main(["notebooks/01_train_baseline.ipynb", str(tmp_path / "o.ipynb"), "--profile", "smoke"])
    assert str(e.value) == ("error: notebooks/01_train_baseline.ipynb, cell 3: ConfigError: train.epochs must be "
                            ">= 1, got 0")
    assert "the whole traceback is in the executed notebook" in capsys.readouterr().err


def test_a_cached_evaluation_with_wrong_types_is_recomputed(trained, tiny_cfg, tmp_path):
    from conftest import make_run

    from cmi.evaluation import controls_budget, evaluate, evaluation_path
    model, acts, ds = trained
    run = make_run(tiny_cfg, model, ds, acts, folder=tmp_path)
    kept = {0: [0, 1]}
    first = evaluate(run, kept, ("masked",))
    path = evaluation_path(run, kept, ("masked",), controls_budget(tiny_cfg))
    for bad in ({**first, "acc_masked": "high"}, {**first, "filters_kept": None}):
        save_json(bad, path)
        with pytest.warns(UserWarning, match=r"cached evaluation .* is corrupt .* not a number"):
            again = evaluate(run, kept, ("masked",))
        assert again["acc_masked"] == first["acc_masked"] and path.with_name(path.name + ".corrupt").is_file()

"""The cache's failure modes: a corrupt cached file is named, kept aside and recomputed."""
import dataclasses
import json
import subprocess
import sys

import pytest

from cmi.errors import CacheCorrupt
from cmi.store import load_json, read_cache, save_json, with_keys


def test_read_cache_missing_valid_and_corrupt(tmp_path):
    path = tmp_path / "x.json"
    assert read_cache(path) is None and read_cache(None) is None
    save_json({"accuracy": 0.5}, path)
    assert read_cache(path, lambda d: d["accuracy"]) == 0.5
    path.write_text('{"accuracy": 0.')                      # truncated mid-write by another program
    with pytest.warns(UserWarning, match=r"cached score '.*x\.json' is corrupt \(JSONDecodeError.*moved aside to "
                                         r"x\.json\.corrupt, recomputing"):
        assert read_cache(path, lambda d: d["accuracy"], "cached score") is None
    assert not path.exists() and (tmp_path / "x.json.corrupt").read_text() == '{"accuracy": 0.'   # kept, not lost


def test_read_cache_wrong_shape_counts_as_corrupt(tmp_path):
    path = tmp_path / "e.json"
    save_json({"seconds": 1.0}, path)                       # valid JSON, but not an evaluation
    with pytest.warns(UserWarning, match="KeyError"):
        assert read_cache(path, with_keys("filters_kept", "seconds")) is None
    save_json([1, 2], path)
    with pytest.warns(UserWarning, match="corrupt"):
        assert read_cache(path, with_keys("seconds")) is None


def test_cache_keys_carry_the_cache_version(monkeypatch):
    """Bumping CACHE_VERSION renames every cached result (digest and cache_key alike)."""
    import hashlib

    from cmi import store
    from cmi.config import load_config

    version = store.CACHE_VERSION
    assert version >= 2                                     # bumped by the redesign (config payloads, run folders)
    cfg = load_config("smoke")
    payload = {"seed": cfg.seed, "data": dataclasses.asdict(cfg.data)}
    blob = json.dumps({"payload": payload, "cache_version": version}, sort_keys=True)
    assert store.digest(cfg, "data") == hashlib.sha256(blob.encode()).hexdigest()[:12]
    assert store.cache_key({"a": 1}) == hashlib.sha256(
        json.dumps({"payload": {"a": 1}, "cache_version": version}, sort_keys=True).encode()).hexdigest()[:16]
    before = (store.digest(cfg, "data"), store.cache_key({"a": 1}))
    monkeypatch.setattr(store, "CACHE_VERSION", version + 1)
    assert store.digest(cfg, "data") != before[0] and store.cache_key({"a": 1}) != before[1]


def test_load_json_names_the_corrupt_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_bytes(b"\xff\xfe not json")
    with pytest.raises(CacheCorrupt, match=r"baseline metrics '.*metrics\.json' is corrupt .*delete it to recompute"):
        load_json(path, what="baseline metrics")


def test_sweep_recomputes_corrupt_cache_files(tiny_cfg):
    """Every kind of cached JSON of a sweep truncated at once: the rerun warns once per file, keeps
    the bad files aside and gives the same table as the first run."""
    from dataclasses import replace

    from cmi.sweep import run_sweep

    cfg = replace(tiny_cfg, cmi=replace(tiny_cfg.cmi, n_samples=32),
                  prune=replace(tiny_cfg.prune, formulations=("per-layer",), cutoffs=("scree",),
                                directions=("forward",)))
    first = run_sweep(cfg, progress=False)
    folder = first.run.folder
    files = [next((folder / sub).rglob("*.json")) for sub in ("rankings", "scores", "plans")]
    evals = sorted((folder / "evals").glob("*.json"))
    files += [next(f for f in evals if not f.name.startswith("cost-")),        # an evaluation
              next(f for f in evals if f.name.startswith("cost-"))]            # a cost record
    files += [first.run.tables / "timings.json", folder / "capture.json"]
    for f in files:
        f.write_text(f.read_text()[:7])
    with pytest.warns(UserWarning) as caught:
        second = run_sweep(cfg, progress=False)
        second.timing_rows()                                # reads capture.json
    warned = [str(w.message) for w in caught if "is corrupt" in str(w.message)]
    assert {f.name for f in files if f.name != "timings.json"} <= {m.split("'")[1].rsplit("/", 1)[1] for m in warned}
    assert all(f.with_name(f.name + ".corrupt").is_file() for f in files if f.name != "timings.json")

    def strip(rows):            # timings and latencies are measured anew
        return [{k: v for k, v in r.items() if not ("seconds" in k or "latency" in k)} for r in rows]
    assert strip(second.rows) == strip(first.rows)
    assert json.loads((first.run.tables / "timings.json").read_text())["timings"]


def test_cli_names_a_corrupt_baseline_file():
    """The command line turns a corrupt cached file into ``error: ...`` and exit code 2 (the
    conftest points CMI_ARTIFACTS at this test's folder, for this process and the child)."""
    from cmi.config import load_config
    from cmi.train import baseline_dir

    args = ["dataset=synthetic", "train_subset=256", "test_subset=128"]
    run_dir = baseline_dir(load_config("smoke", args))
    run_dir.mkdir(parents=True)
    (run_dir / "model.pt").write_bytes(b"not a model")
    (run_dir / "metrics.json").write_text("{")
    r = subprocess.run([sys.executable, "-m", "cmi", "train", *args], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[-1].startswith("error: baseline metrics") and "metrics.json' is corrupt" in r.stderr
    assert "Traceback" not in r.stderr
    (run_dir / "metrics.json").write_text('{"metrics": {"test_accuracy": 0.5}, "history": []}')
    r = subprocess.run([sys.executable, "-m", "cmi", "train", *args], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.splitlines()[-1].startswith("error: model file") and "corrupt" in r.stderr


def test_written_files_respect_the_umask(tmp_path):
    # a shared cache or figures/ folder must be readable by the group when the umask allows it
    code = ("import os, sys; os.umask(0o027); from cmi.store import save_json; "
            "save_json({'a': 1}, sys.argv[1]); print(oct(os.stat(sys.argv[1]).st_mode & 0o777))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.json")], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "0o640"                  # 0o666 & ~0o027, not mkstemp's 0o600

"""environment.yml (conda) and pyproject.toml (pip) must name the same packages."""
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PYPI = {"pytorch": "torch"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_names = {_name(r) for r in project["dependencies"]}
    pip_names |= {_name(r) for extra in project["optional-dependencies"].values() for r in extra}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_names = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            conda_names |= {_name(r) for r in dep["pip"]}
        else:
            conda_names.add(CONDA_TO_PYPI.get(_name(dep), _name(dep)))
    conda_names -= {"python", "pip"}
    assert conda_names == pip_names, (sorted(conda_names - pip_names), sorted(pip_names - conda_names))


def test_makefile_pins_a_torch_inside_the_declared_range():
    pin = re.search(r"TORCH_PIN := torch==([\d.]+) torchvision==([\d.]+)", (ROOT / "Makefile").read_text())
    assert pin, "Makefile must pin torch and torchvision"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_req = next(r for r in project["dependencies"] if _name(r) == "torch")
    lo, hi = re.search(r">=([\d.]+),<([\d.]+)", torch_req).groups()
    version = tuple(int(p) for p in pin.group(1).split("."))
    assert tuple(int(p) for p in lo.split(".")) <= version < tuple(int(p) for p in hi.split("."))


def test_notebooks_are_numbered_parameterised_and_stripped():
    import json

    books = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert [b.name[:3] for b in books] == [f"{i:02d}_" for i in range(len(books))] and len(books) >= 8
    for book in books:
        nb = json.loads(book.read_text())
        assert set(nb["metadata"]) <= {"kernelspec", "language_info"}, book.name
        params = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(params) == 1 and "CMI_PROFILE" in "".join(params[0]["source"]), book.name
        for cell in nb["cells"]:
            if cell["cell_type"] != "code":
                continue
            checked = "NBVAL_CHECK_OUTPUT" in "".join(cell["source"])
            assert bool(cell.get("metadata", {}).get("keep_output")) == checked, book.name
            assert bool(cell["outputs"]) == checked, f"{book.name}: outputs left in an unchecked cell"
            assert "papermill" not in cell.get("metadata", {}) and "execution" not in cell.get("metadata", {})


def test_readme_tables_are_the_files_a_run_wrote(tmp_path):
    """Every <!-- include: PATH --> block of the README and docs/ holds exactly the file PATH (make readme)."""
    from cmi.outputs import INCLUDE, fill_includes

    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        assert fill_includes(text, ROOT) == text, page.name
        for m in INCLUDE.finditer(text):
            assert (ROOT / m["path"]).is_file(), (page.name, m["path"])
    (tmp_path / "t.md").write_text("| a |\n|---|\n| 1 |\n")
    stale = "x\n<!-- include: t.md -->\nold\n<!-- /include -->\ny\n"
    assert fill_includes(stale, tmp_path) == "x\n<!-- include: t.md -->\n| a |\n|---|\n| 1 |\n<!-- /include -->\ny\n"
    with pytest.raises(FileNotFoundError, match="missing.md"):
        fill_includes(stale.replace("t.md", "missing.md"), tmp_path)


def test_notebook_runner_injects_the_parameters_and_starts_the_kernel_quietly(tmp_path):
    """`make reproduce` runs each notebook through cmi.notebook: papermill's parameters, and no
    warning about an unencrypted kernel connection (ipykernel >= 7.4) in what it prints."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "00.ipynb"
    r = subprocess.run([sys.executable, "-m", "cmi.notebook", "notebooks/00_data_and_model.ipynb", str(out),
                        "--profile", "smoke", "--set", "train.epochs=1"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "TQDM_DISABLE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "without encryption" not in r.stderr and "WARNING" not in r.stderr, r.stderr[-2000:]
    params = json.loads(out.read_text())["metadata"]["papermill"]["parameters"]
    assert params == {"profile": "smoke", "overrides": "train.epochs=1"}


def test_the_notebook_theme_is_seaborns_whitegrid_without_importing_seaborn():
    import subprocess
    import sys

    import matplotlib
    import seaborn as sns

    from cmi.plots import set_theme

    def applied(apply):
        with matplotlib.rc_context():
            matplotlib.rcdefaults()
            apply()
            return {k: v for k, v in matplotlib.rcParams.items() if k != "image.cmap"}

    ours = applied(set_theme)
    theirs = applied(lambda: sns.set_theme(context="notebook", style="whitegrid"))
    assert ours == theirs, {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    assert ours != applied(lambda: None)
    code = ("import sys; from cmi.outputs import start_notebook; import cmi.plots, cmi.controls; "
            "start_notebook('smoke', 'fashion-mnist', notebook='t'); print(sorted({'seaborn', 'scipy', 'torchvision'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_provenance_records_the_run_that_computed_the_files(tmp_path):
    """A rerun that reproduces every file leaves the files and the provenance record of the run that
    made them; a changed file renews the record; timing tables change without renewing it."""
    import json

    import matplotlib.pyplot as plt

    from cmi.config import load_config
    from cmi.outputs import Outputs

    cfg = load_config("smoke")

    def run(value, seconds):
        out = Outputs(cfg, "nb", tmp_path)
        out.table([{"a": value}], "t", "a table")
        out.table([{"part": "x", "seconds this run": seconds}], "nb_timings", "timings")
        fig, ax = plt.subplots()
        ax.plot([0, value])
        out.figure(fig, "f")
        plt.close(fig)
        return out.finish()

    first = run(1, 0.5)
    record = tmp_path / "provenance" / "nb.json"
    stamp = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.*")}
    saved, inode = record.read_text(), record.stat().st_ino
    assert json.loads(saved)["changed"] == ["f.pdf", "f.png", "t.csv", "t.md"]
    again = run(1, 0.7)                              # the same numbers, another timing
    assert record.read_text() == saved and record.stat().st_ino == inode and again["this_call"]["changed"] == []
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.*") if "timings" not in p.name} == {
        k: v for k, v in stamp.items() if "timings" not in k}              # not rewritten
    assert "0.7" in (tmp_path / "nb_timings.csv").read_text()               # timings are rewritten
    changed = run(2, 0.7)
    assert changed["changed"] == ["f.pdf", "f.png", "t.csv", "t.md"] and record.stat().st_ino != inode  # rewritten
    assert json.loads(record.read_text())["changed"] == changed["changed"]
    assert first["files"] == changed["files"]


def test_captions_name_the_cpu_model_and_its_vector_capability():
    import torch
    from pathlib import Path
    from cmi.device import hardware_name
    text = hardware_name("cpu")
    assert torch.backends.cpu.get_cpu_capability() in text
    info = Path("/proc/cpuinfo")
    if info.is_file():
        names = [l.split(":", 1)[1].strip() for l in info.read_text().splitlines() if l.startswith("model name")]
        if names:
            assert text.startswith(names[0])
    assert text.endswith(f"{torch.get_num_threads()} threads")

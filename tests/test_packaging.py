"""environment.yml (conda) and pyproject.toml (pip) must name the same packages."""
import re
import tomllib
from pathlib import Path

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

"""Figures and tables with provenance: what every notebook writes to ``figures/``.

Outputs of a run go to ``figures/<profile>-<dataset>/`` (``CMI_FIGURES`` overrides the root):
figures as PNG and PDF, each captioned with the profile, dataset and hardware; tables as CSV and
Markdown. ``provenance/<notebook>.json`` records, for each notebook, the resolved config, the git
commit, package versions, hardware, wall time and the files written. A file whose content a rerun
reproduces exactly is not rewritten, and a rerun that changes nothing but timing tables keeps the
provenance of the run that computed the files.
"""
from __future__ import annotations

import csv
import io
import json
import os
import platform
import re
import subprocess
import time
from importlib import metadata
from pathlib import Path

from .config import Config
from .paths import project_root
from .store import atomic_write, cache_key, read_cache, save_json
from .device import hardware_name, resolve_device

PACKAGES = ("torch", "torchvision", "numpy", "scipy", "torch-pruning", "pyclustering", "matplotlib", "seaborn", "cmi")


def figures_dir(cfg: Config) -> Path:
    root = Path(os.environ.get("CMI_FIGURES", project_root() / "figures"))
    return root / f"{cfg.profile}-{cfg.data.name}"


def git_commit() -> str:
    try:
        root = project_root()
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        # outputs a run is writing do not make its code dirty: figures/ is left out
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!figures"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


class Outputs:
    """Writes one notebook's figures and tables, then its provenance record (:meth:`finish`)."""

    def __init__(self, cfg: Config, notebook: str, folder: Path | None = None):
        self.cfg, self.notebook = cfg, notebook
        self.folder = Path(folder) if folder is not None else figures_dir(cfg)
        self.hardware = hardware_name(resolve_device(cfg.device))
        self.files: list[str] = []
        self.changed: list[str] = []        #: files whose content this run changed (timing tables aside)
        self.t0 = time.perf_counter()

    @property
    def caption(self) -> str:
        return f"profile {self.cfg.profile} · {self.cfg.data.name} · {self.hardware}"

    def figure(self, fig, name: str) -> Path:
        """Caption ``fig`` with the profile, dataset and hardware, save it as PNG and PDF."""
        import matplotlib

        fig.text(0.995, 0.005, self.caption, ha="right", va="bottom", fontsize=7, color="0.35")
        # the tight bounding box once, at the PNG's dpi, for both files: bbox_inches="tight" would draw
        # each file twice (once only to measure), and drawing is most of a cached notebook's time
        shown_dpi = fig.dpi
        fig.set_dpi(150)
        bbox = fig.get_tightbbox(fig.canvas.get_renderer()).padded(matplotlib.rcParams["savefig.pad_inches"])
        fig.set_dpi(shown_dpi)                 # the notebook still shows it at its own dpi
        for ext in ("png", "pdf"):
            buf = io.BytesIO()
            # no creation date in the PDF: the same figure gives the same bytes, so a rerun leaves it alone
            fig.savefig(buf, format=ext, dpi=150, bbox_inches=bbox, metadata={"CreationDate": None} if ext == "pdf" else None)
            self._write(f"{name}.{ext}", buf.getvalue())
        return self.folder / f"{name}.png"

    def _write(self, name: str, data: bytes, volatile: bool = False) -> Path:
        """Write ``data`` to ``name`` in the folder unless the file already holds exactly it; a change
        counts for the provenance record unless ``volatile`` (timing tables)."""
        path = self.folder / name
        self.files.append(name)
        if path.is_file() and path.read_bytes() == data:
            return path
        atomic_write(path, lambda f: f.write(data))
        if not volatile:
            self.changed.append(name)
        return path

    def table(self, rows, name: str, title: str, floatfmt: str = ".4g", volatile: bool | None = None):
        """Save rows (list of dicts or a DataFrame) as CSV and Markdown; returns a DataFrame. ``volatile``
        (default: a table whose name ends in ``timings``): its changes do not renew the provenance."""
        import pandas as pd

        df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
        buf = io.StringIO()
        df.to_csv(buf, index=False, quoting=csv.QUOTE_MINIMAL)
        volatile = name.endswith("timings") if volatile is None else volatile
        self._write(f"{name}.csv", buf.getvalue().encode(), volatile)
        md = f"**{title}** ({self.caption})\n\n" + _markdown(df, floatfmt) + "\n"
        self._write(f"{name}.md", md.encode(), volatile)
        return df

    def text(self, content: str, name: str) -> Path:
        return self._write(name, content.encode())

    def finish(self) -> dict:
        """Write ``provenance/<notebook>.json`` when this run changed a file (or there is none yet) and
        return the record; a rerun that reproduced every file keeps the record of the run that made them."""
        path = self.folder / "provenance" / f"{self.notebook}.json"
        if path.is_file() and not self.changed:
            record = read_cache(path, lambda d: dict(d), "provenance record")
            if record is not None:
                return {**record, "this_call": {"wall_seconds": round(time.perf_counter() - self.t0, 1),
                                                "changed": []}}
        record = {"notebook": self.notebook, "profile": self.cfg.profile, "dataset": self.cfg.data.name,
                  "hardware": self.hardware, "device": str(resolve_device(self.cfg.device)), "git_commit": git_commit(),
                  "packages": package_versions(), "wall_seconds": round(time.perf_counter() - self.t0, 1),
                  "written_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": sorted(set(self.files)),
                  "changed": sorted(set(self.changed)), "config": self.cfg.to_dict()}
        save_json(record, path)
        return record


def _markdown(df, floatfmt: str) -> str:
    """A GitHub Markdown table without the optional ``tabulate`` dependency."""
    def cell(v):
        if isinstance(v, float):
            return "" if v != v else format(v, floatfmt)
        return "" if v is None else str(v)
    header = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    lines = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, sep, *lines])


INCLUDE = re.compile(r"(<!-- include: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- /include -->)", re.S)


def fill_includes(text: str, root: Path) -> str:
    """Replace the body of every ``<!-- include: PATH -->`` ... ``<!-- /include -->`` block of a
    Markdown text with the file PATH (relative to ``root``): README tables come from the files a
    run wrote, never typed by hand."""
    def body(m: re.Match) -> str:
        path = root / m["path"]
        if not path.is_file():
            raise FileNotFoundError(f"README includes {m['path']}, which does not exist; run the profile first")
        return m[1] + path.read_text().rstrip("\n") + "\n" + m[4]
    return INCLUDE.sub(body, text)


def run_folder(cfg: Config, overrides: dict | None = None) -> Path:
    """``figures/<profile>-<dataset>/``, with a suffix naming a hash of any further ``overrides``
    ({field: value} beyond the dataset), so runs with other settings never overwrite each other."""
    folder = figures_dir(cfg)
    extra = {k: v for k, v in (overrides or {}).items() if k not in ("dataset", "data.name")}
    return folder.with_name(folder.name + "-" + cache_key(extra, 8)) if extra else folder


def print_json(obj) -> None:
    """Deterministic printing for cells whose output nbval compares."""
    print(json.dumps(obj, indent=1, sort_keys=True))


def start_notebook(profile: str, dataset: str | None = None, overrides: dict | str | None = None,
                   notebook: str = "notebook"):
    """Resolve the run's config from the notebook's parameters and prepare its outputs.
    ``overrides``: {field: value}, or one string of ``key=value`` words as the Makefile's ``SET`` passes.

    Figures and tables go to ``figures/<profile>-<dataset>/``, with a suffix naming a hash of any
    further overrides so that runs with other settings never overwrite each other."""
    import matplotlib

    from .config import load_config, parse_overrides
    from .plots import set_theme

    os.environ.setdefault("TQDM_MININTERVAL", "2")   # executed notebooks keep a short progress log
    if isinstance(overrides, str):   # `make reproduce SET="train.epochs=3 width=0.5"`
        overrides = parse_overrides(overrides.split())
    over = parse_overrides(overrides)      # `papermill -p overrides 3` is one clear ConfigError
    if dataset:
        over["dataset"] = dataset
    cfg = load_config(profile, over)
    folder = run_folder(cfg, overrides)
    set_theme()                       # seaborn's whitegrid notebook theme, without importing seaborn
    matplotlib.rcParams["figure.dpi"] = 80
    out = Outputs(cfg, notebook, folder)
    print(f"{notebook}: profile {cfg.profile}, dataset {cfg.data.name}, width {cfg.model.width}, "
          f"{out.hardware}; outputs -> {out.folder}")
    return cfg, out

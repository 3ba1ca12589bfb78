"""The lent GPU's prepared call (cmi/loan.py): budget, deadlines, packing; the steps replaced by small
Python commands, so that nothing here needs a GPU."""
import io
import sys
import tarfile

import pytest

from cmi import loan


def test_study_steps_get_what_is_left_of_the_budget_and_the_overrides_last(tmp_path):
    (cmd,) = loan.commands("authors", tmp_path, 312.4, py="python3", overrides=("width=0.0625",))
    assert cmd[:5] == ["python3", "-m", "cmi.fullwidth", "--profile", "paper-authors"]
    assert cmd[cmd.index("--deadline") + 1] == "312"
    assert cmd[cmd.index("--out") + 1] == str(tmp_path / "paper-authors-fashion-mnist-gpu")
    assert "dataset=fashion-mnist" in cmd and cmd[-1] == "width=0.0625"
    (paper,) = loan.commands("paper", tmp_path, 100, py="python3")
    assert "train.epochs=30" in paper and "--profile" in paper and paper[paper.index("--profile") + 1] == "paper"
    (gpu,) = loan.commands("bench", tmp_path, 100, py="python3")
    (cpu,) = loan.commands("bench-cpu", tmp_path, 100, py="python3")
    assert gpu[gpu.index("--device") + 1] == "cuda" and cpu[cpu.index("--device") + 1] == "cpu"
    assert cpu[cpu.index("--workers") + 1] == str(len(loan.os.sched_getaffinity(0)))


def test_run_stops_at_the_budget_and_packs_after_every_step(tmp_path, monkeypatch):
    def fake(step, work, deadline_s, py=sys.executable, overrides=()):
        folder = work / loan.study_folder("paper-authors")
        if step == "authors":       # writes its report, then fails
            return [[py, "-c", f"import pathlib; p = pathlib.Path({str(folder)!r}); p.mkdir(); "
                               f"(p / 'fullwidth.md').write_text('deadline {deadline_s:.0f}'); "
                               "(p / 'claim.md').write_text('claim'); print('done'); raise SystemExit(3)"]]
        return [[py, "-c", "import time; time.sleep(30)"]]       # outlives the budget

    monkeypatch.setattr(loan, "commands", fake)
    monkeypatch.setattr(loan, "MARGIN_S", 1)
    shown = io.StringIO()
    rows = loan.run(["authors", "paper", "tests"], budget_s=6, out=tmp_path / "out", log=shown)
    assert [r["step"] for r in rows] == ["authors", "paper", "tests"]
    assert rows[0]["returncodes"] == [3] and rows[1]["returncodes"] == ["killed at the budget"]
    assert rows[1]["seconds"] < 10 and not rows[2]["started"]
    out = tmp_path / "out"
    assert (out / "paper-authors-fashion-mnist-gpu-fullwidth.md").read_text().startswith("deadline ")
    assert int((out / "paper-authors-fashion-mnist-gpu-fullwidth.md").read_text().split()[1]) <= 5
    assert (out / "paper-authors-fashion-mnist-gpu-claim.md").read_text() == "claim"
    log = (out / "loan.log").read_text()
    assert "== tests: not started" in log and all(line in log for line in shown.getvalue().splitlines())
    assert log.index("$ ") < log.index("done") < log.index("== authors: exit [3]")      # the step's output in order
    with tarfile.open(out / "loan.tgz") as tar:
        assert "loan/paper-authors-fashion-mnist-gpu/claim.md" in tar.getnames()


def test_the_kit_supplies_the_data_root_and_this_checkout_is_on_the_path(tmp_path):
    (tmp_path / "kit" / "data").mkdir(parents=True)
    env = loan.environment(tmp_path / "kit", tmp_path / "site")
    assert env["CMI_DATA"] == str((tmp_path / "kit" / "data").resolve())
    assert env["PYTHONPATH"].split(":")[0] == str(loan.Path(loan.__file__).resolve().parents[1])


def test_the_command_line_refuses_a_budget_inside_the_margin_and_a_missing_kit(tmp_path, capsys):
    with pytest.raises(SystemExit):
        loan.main(["tests", "--budget", str(loan.MARGIN_S), "--out", str(tmp_path)])
    assert f"--budget must be more than {loan.MARGIN_S} s" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        loan.main(["tests", "--budget", "500", "--out", str(tmp_path), "--kit", str(tmp_path / "nope")])
    assert "no such folder (make it with `make loan-kit`)" in capsys.readouterr().err

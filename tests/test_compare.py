"""`python -m cmi.compare`: two figures folders, equal outside timing and hardware columns or not."""
from cmi.compare import compare_folders, main


def _write(folder, name, text):
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)


def test_timing_and_hardware_columns_and_timing_tables_are_ignored(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, "05_cutoffs.csv", "plan,acc,seconds,hardware,latency_b1_ms\np1,0.91,12.5,x86_64 CPU,0.6\np2,0.80,3,x86_64 CPU,0.6\n")
    _write(b, "05_cutoffs.csv", "plan,acc,seconds,hardware,latency_b1_ms\np1,0.91,99.0,AMD EPYC CPU,0.7\np2,0.80,4,AMD EPYC CPU,0.5\n")
    _write(a, "04_timings.csv", "part,seconds\nall,1\n")
    _write(b, "04_timings.csv", "part,seconds\nall,2\n")
    assert [r["status"] for r in compare_folders(a, b)] == ["equal"]
    assert main([str(a), str(b)]) == 0
    assert "1 of 1 tables equal" in capsys.readouterr().out


def test_a_changed_number_a_missing_table_and_a_changed_shape_are_reported(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, "07_table1.csv", "plan,acc\np1,0.9100\np2,0.8000\np3,0.5\n")
    _write(b, "07_table1.csv", "plan,acc\np1,0.9100\np2,0.8125\np3,0.4\n")
    _write(a, "08_only.csv", "x\n1\n")
    _write(a, "09_shape.csv", "x\n1\n2\n")
    _write(b, "09_shape.csv", "x\n1\n")
    rows = {r["table"]: r for r in compare_folders(a, b)}
    t = rows["07_table1.csv"]
    assert (t["status"], t["cells differing"], t["first difference"]) == ("differs", 2, "row 2, acc: 0.8000 != 0.8125")
    assert abs(t["max abs diff"] - 0.1) < 1e-12
    assert rows["08_only.csv"]["status"] == f"only in {a}"
    assert rows["09_shape.csv"]["status"] == "differs" and "2 rows" in rows["09_shape.csv"]["first difference"]
    assert main([str(a), str(b)]) == 1
    assert "0 of 3 tables equal" in capsys.readouterr().out


def test_a_missing_folder_is_one_error_line(tmp_path, capsys):
    assert main([str(tmp_path), str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nowhere'} is not a folder\n"


def test_subfolders_are_compared_by_their_relative_paths(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root, acc in ((a, "0.5"), (b, "0.6")):
        (root / "quick-x").mkdir(parents=True)
        (root / "quick-x" / "t.csv").write_text(f"acc\n{acc}\n")
        (root / "medium-x").mkdir()
        (root / "medium-x" / "t.csv").write_text("acc\n0.7\n")
    rows = {r["table"]: r["status"] for r in compare_folders(a, b)}
    assert rows == {"medium-x/t.csv": "equal", "quick-x/t.csv": "differs"}


def test_a_renamed_timing_column_is_no_difference_and_empty_folders_are_an_error(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, "t.csv", "mode,acc,mean extra over removed\nx,0.5,1.0\n")
    _write(b, "t.csv", "mode,acc,mean extra seconds over removed\nx,0.5,2.0\n")
    # the unnamed timing column still counts: its header is not volatile
    assert compare_folders(a, b)[0]["status"] == "differs"
    _write(b, "t.csv", "mode,acc,seconds\nx,0.5,2.0\n")
    _write(a, "t.csv", "mode,acc,wall seconds\nx,0.5,1.0\n")
    assert compare_folders(a, b)[0]["status"] == "equal"
    e1, e2 = tmp_path / "e1", tmp_path / "e2"
    e1.mkdir(), e2.mkdir()
    assert main([str(e1), str(e2)]) == 1 and "no CSV table" in capsys.readouterr().err


def test_run_folder_names_the_profiles_folder_with_the_overrides_hash(capsys):
    from cmi.config import load_config
    from cmi.outputs import figures_dir
    assert main(["--run-folder", "quick"]) == 0
    assert capsys.readouterr().out.strip() == str(figures_dir(load_config("quick")))
    assert main(["--run-folder", "quick", "train.epochs=3"]) == 0
    assert capsys.readouterr().out.strip().startswith(str(figures_dir(load_config("quick"))) + "-")

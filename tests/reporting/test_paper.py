"""``mllmdf paper``: the results section and a CSV per table, from the warehouse."""

import numpy as np
import pandas as pd
import pytest
from crafted import craft, random_rows

from defake_pipeline.reporting.paper import write_paper
from defake_pipeline.warehouse.database import query
from defake_pipeline.warehouse.layout import HomeLayout


def test_the_results_section_holds_each_table_and_its_csv_the_warehouse_figures(tmp_path):
    rows, scores, shas = random_rows(5, 60)
    generators = [["sd15", "flux"][i % 2] for i in range(len(rows))]
    other = [int(x) for x in np.random.default_rng(2).choice([0, 1], len(rows))]
    craft(tmp_path, rows, scores=scores, shas=shas, subsets=generators, extra_partitions={("m2", "p"): other})
    layout = HomeLayout(tmp_path / "home")
    target, csvs = write_paper(layout)
    text = target.read_text()
    assert [c.name for c in csvs] == ["paper_main.csv", "paper_generators.csv", "paper_calibration.csv"]
    assert "## Main results" in text and "## Accuracy per generator" in text and "## Robustness" not in text
    main = pd.read_csv(csvs[0])
    metrics = query(layout, "SELECT model, accuracy, real_answer_bias FROM metrics WHERE scope = 'dataset'")
    merged = main.merge(metrics, on="model", suffixes=("", "_warehouse"))
    assert len(merged) == 2 and np.allclose(merged.accuracy, merged.accuracy_warehouse)
    assert np.allclose(merged.real_answer_bias, merged.real_answer_bias_warehouse)
    generators_csv = pd.read_csv(csvs[1])
    assert sorted(set(generators_csv.subset)) == ["flux", "sd15"] and len(generators_csv) == 4
    best = main.iloc[0]
    assert f"| {best.model} | p |" in text and "Accuracy (95% CI)" in text.replace("\\(", "(").replace("\\)", ")")


def test_paper_before_any_warehouse_is_one_line_and_writes_nothing(tmp_path):
    from click.testing import CliRunner

    from defake_pipeline.cli import main

    home = tmp_path / "home"
    result = CliRunner().invoke(main, ["paper"], env={"DEFAKE_HOME": str(home)})
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert (
        result.output
        == f"error: {home / 'defake.duckdb'}: no warehouse yet (materialize metrics first: `mllmdf materialize`)\n"
    )
    assert not home.exists()


def test_paper_onto_a_device_or_into_a_folder_that_takes_no_file_is_one_line_and_writes_nothing(tmp_path):
    """Renamed over, a device (``-o /dev/null`` as root) would become a regular file for every
    program of the machine: it is refused in one line naming it, and no table is left beside it."""
    import os
    import stat

    from click.testing import CliRunner

    from defake_pipeline.cli import main

    craft(tmp_path, [(1, 1, None), (0, 0, None)])
    env = {"DEFAKE_HOME": str(tmp_path / "home")}
    (tmp_path / "out").mkdir()
    device = tmp_path / "out" / "null.md"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device needs root")
    result = CliRunner().invoke(main, ["paper", "-o", str(device)], env=env)
    assert result.exit_code == 2, result.output
    assert result.output == f"error: cannot write {device}: it is a character device, which is never replaced\n"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["null.md"] and stat.S_ISCHR(os.stat(device).st_mode)

    result = CliRunner().invoke(main, ["paper", "-o", "/proc/paper.md"], env=env)
    assert result.exit_code == 2 and result.output.startswith("error: cannot write /proc/paper.md: "), result.output

"""The quality gate holds per dataset × model × prompt: a dataset full of errors is never ranked
because the other datasets are clean."""

from PIL import Image

from defake_pipeline.datasets.layouts import DatasetSpec
from defake_pipeline.datasets.refresh import refresh_manifest
from defake_pipeline.endpoints.registry import get_model
from defake_pipeline.evaluation.partition import evaluate_partition
from defake_pipeline.prompting.spec import find_prompt, load_prompt
from defake_pipeline.records import NO_PROMPT
from defake_pipeline.reporting.render import write_leaderboard
from defake_pipeline.warehouse.database import query, rebuild_warehouse
from defake_pipeline.warehouse.gate import GATE_FAILED, GateThresholds, partition_gate
from defake_pipeline.warehouse.layout import HomeLayout
from defake_pipeline.warehouse.parquet import read_manifests


def dataset(root, n_images: int, n_broken: int) -> DatasetSpec:
    for i in range(n_images):
        folder = root / ("real" if i % 2 else "fake")
        folder.mkdir(parents=True, exist_ok=True)
        if i < n_broken:  # an unreadable image: an error row, never an answer
            (folder / f"{i}.png").write_bytes(b"\x89PNG broken")
        else:
            Image.new("RGB", (24, 24), (i * 9 % 256, 30, 60)).save(folder / f"{i}.png")
    return DatasetSpec(name=root.name, root=root)


def test_a_dataset_with_many_errors_is_held_back_while_the_clean_one_is_ranked(tmp_path):
    layout = HomeLayout(tmp_path / "home")
    refresh_manifest(layout, dataset(tmp_path / "clean", 20, 0))
    refresh_manifest(layout, dataset(tmp_path / "broken", 10, 4))  # 40% errors
    canny, prompt = get_model("canny"), load_prompt(find_prompt("simple"))
    evaluate_partition(layout, canny, prompt)
    rebuild_warehouse(layout, GateThresholds(), [(canny.key, NO_PROMPT)])

    gate = query(layout, "SELECT dataset, status, n_error FROM partition_gate ORDER BY dataset")
    assert gate.values.tolist() == [["broken", "failed", 4], ["clean", "passed", 0]]
    statuses = query(layout, "SELECT DISTINCT dataset, gate_status FROM metrics ORDER BY dataset")
    assert statuses.values.tolist() == [["broken", "failed"], ["clean", "passed"]]

    _, text, _ = write_leaderboard(layout)
    ranked, unranked = text.split("## Not ranked")
    assert "## Dataset `clean`" in ranked and "## Dataset `broken`" not in ranked
    assert "| `broken` | `canny` | *baseline* | failed |" in unranked and "error rate 40.0%" in unranked

    # The asset check reads the same gate from the partition file: it fails, naming the dataset.
    check = partition_gate(layout.predictions_file(canny.key, NO_PROMPT), read_manifests(layout), GateThresholds())
    assert check.status == GATE_FAILED and check.failures("error_rate_over") == ["broken"]
    assert check.reason.startswith("broken: error rate 40.0%")

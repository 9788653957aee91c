"""Dataset layouts, model presets, and every prompt (ours and the seed's) run against a local endpoint."""

import json

import pytest
from PIL import Image

from conftest import REPO, upstream_or_skip
from defake_pipeline.datasets.layouts import list_images, load_dataset_spec
from defake_pipeline.endpoints.registry import get_model, model_table
from defake_pipeline.errors import DatasetError, ModelConfigError
from defake_pipeline.evaluation.engine import evaluate_sync, make_evaluator
from defake_pipeline.evaluation.journal import ResponseJournal
from defake_pipeline.prompting.spec import load_prompt, prompt_files

SEED_MODEL_NAMES = [
    "gpt4o",
    "gpt4omini",
    "gpt45",
    "llama32vi",
    "llama32vcot",
    "llavacot",
    "qvq",
    "internvl25",
    "internvl3",
    "onevision",
    "qwen2vl",
    "vllm",
    "canny",
]


def img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "white").save(path)


def define(tmp_path, body):
    file = tmp_path / "datasets" / "d.toml"
    file.parent.mkdir(exist_ok=True)
    file.write_text(body)
    return load_dataset_spec(file)


def summary(images, root):
    return sorted((str(i.path.relative_to(root)), i.label, i.subset) for i in images)


def test_real_fake_layout_with_generator_subfolders_and_junk(tmp_path):
    for rel in [
        "data/real/a.jpg",
        "data/fake/sd15/b.png",
        "data/fake/.hidden.png",
        "data/fake/Thumbs.db",
        "data/real/.DS_Store",
    ]:
        img(tmp_path / rel) if rel.endswith((".jpg", ".png")) else (tmp_path / rel).write_text("x")
    spec = define(tmp_path, 'layout = "real_fake"\nroot = "../data"')
    assert spec.name == "d"
    assert summary(list_images(spec), tmp_path / "data") == [
        ("fake/sd15/b.png", 0, "sd15"),
        ("real/a.jpg", 1, "default"),
    ]


def test_image_folders_layout(tmp_path):
    img(tmp_path / "r" / "x.jpg")
    img(tmp_path / "f" / "y.jpg")
    spec = define(tmp_path, 'layout = "image_folders"\nreal_dir = "../r"\nfake_dir = "../f"')
    assert sorted((i.path.name, i.label) for i in list_images(spec)) == [("x.jpg", 1), ("y.jpg", 0)]


def test_generator_folders_layout(tmp_path):
    for rel in [
        "cnn/progan/car/0_real/a.png",
        "cnn/progan/car/1_fake/b.png",
        "cnn/biggan/0_real/c.png",
        "cnn/biggan/1_fake/d.png",
    ]:
        img(tmp_path / rel)
    spec = define(tmp_path, 'layout = "generator_folders"\nroot = "../cnn"')
    assert summary(list_images(spec), tmp_path / "cnn") == [
        ("biggan/0_real/c.png", 1, "biggan"),
        ("biggan/1_fake/d.png", 0, "biggan"),
        ("progan/car/0_real/a.png", 1, "progan"),
        ("progan/car/1_fake/b.png", 0, "progan"),
    ]


def test_genimage_layout(tmp_path):
    for rel in ["gi/midjourney/train/ai/a.png", "gi/midjourney/val/nature/b.JPEG", "gi/sdv5/val/ai/c.png"]:
        img(tmp_path / rel)
    spec = define(tmp_path, 'layout = "genimage"\nroot = "../gi"')
    assert summary(list_images(spec), tmp_path / "gi") == [
        ("midjourney/train/ai/a.png", 0, "midjourney"),
        ("midjourney/val/nature/b.JPEG", 1, "midjourney"),
        ("sdv5/val/ai/c.png", 0, "sdv5"),
    ]


def test_csv_layout_and_its_errors(tmp_path):
    img(tmp_path / "imgs" / "a.png")
    img(tmp_path / "imgs" / "b.png")
    (tmp_path / "list.csv").write_text("path,label,subset\nimgs/a.png,real,cams\nimgs/b.png,0,dalle\n")
    spec = define(tmp_path, 'layout = "csv"\ncsv = "../list.csv"')
    assert sorted((i.path.name, i.label, i.subset) for i in list_images(spec)) == [
        ("a.png", 1, "cams"),
        ("b.png", 0, "dalle"),
    ]
    (tmp_path / "list.csv").write_text("path,label\nimgs/a.png,maybe\n")
    with pytest.raises(DatasetError, match=r"list.csv:2: label 'maybe'"):
        list_images(spec)


def test_bad_definitions_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match=r"d.toml: .*layout 'image_folders' needs real_dir and fake_dir"):
        define(tmp_path, 'layout = "image_folders"')
    with pytest.raises(DatasetError, match="does not exist"):
        list_images(define(tmp_path, 'root = "../nowhere"'))


def test_every_seed_model_name_resolves_from_one_table():
    table = model_table()
    for name in SEED_MODEL_NAMES:
        assert name in table
    assert get_model("llavacot") is get_model("llama32vcot") and get_model("llavacot").fold_system_prompt
    assert get_model("qvq").fold_system_prompt and not get_model("qwen2vl").fold_system_prompt
    assert all(
        get_model(n).backend == "self_hosted" and get_model(n).model is None
        for n in ["llama32vi", "qvq", "internvl25", "internvl3", "onevision", "qwen2vl", "vllm"]
    )
    assert get_model("gpt45").note and get_model("GPT4O").model == "gpt-4o"
    with pytest.raises(ModelConfigError, match="unknown model 'gpt9'"):
        get_model("gpt9")


def _run_prompt(path, server, jobs, tmp_path):
    spec = get_model("vllm").model_copy(update={"base_url": server.base_url, "max_retries": 0})
    journal = ResponseJournal(tmp_path / "j.sqlite")
    try:
        return evaluate_sync(jobs, make_evaluator(spec, load_prompt(path), journal))
    finally:
        journal.close()


@pytest.mark.parametrize("path", prompt_files(), ids=lambda p: p.stem)
def test_every_project_prompt_runs(path, chat_server, demo_jobs, tmp_path):
    preds = _run_prompt(path, chat_server, demo_jobs[:2], tmp_path)
    n_convs = len(json.loads(path.read_text())["conversations"])
    assert all(p.error is None and p.verdict != "unknown" and len(p.turns) == n_convs for p in preds)
    assert chat_server.state.n_chat == 2 * n_convs


@pytest.mark.parametrize("name", ["simple", "p1", "p3", "p5", "p6", "p4-alt"])
def test_upstream_prompts_run_unchanged(name, chat_server, demo_jobs, tmp_path):
    path = upstream_or_skip("prompts", "paper", f"{name}.json")
    preds = _run_prompt(path, chat_server, demo_jobs[:2], tmp_path)
    assert all(p.error is None for p in preds), [p.error for p in preds]


def test_roi_decorator_sends_a_crop(chat_server, demo_jobs, tmp_path):
    _run_prompt(REPO / "prompts" / "roi_crop.json", chat_server, demo_jobs[:1], tmp_path)
    urls = [
        part["image_url"]["url"]
        for part in chat_server.state.bodies[0]["messages"][-1]["content"]
        if part["type"] == "image_url"
    ]
    from defake_pipeline.imaging.encode import decode_data_url

    crop = decode_data_url(urls[0])
    original = Image.open(demo_jobs[0].path)
    assert crop.width == crop.height == min(original.size) // 2


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ("price_in = -5", "price_in"),  # a negative price would let --max-cost pass any run
        ("price_out = nan", "price_out"),  # a NaN cost is never over a cap
        ("price_in = inf", "price_in"),
        ("max_tokens = 0", "max_tokens"),
        ("max_tokens = -3", "max_tokens"),
        ("temperature = -1", "temperature"),
        ("timeout_s = inf", "timeout_s"),  # a request that may never end
        ("timeout_s = 1e308", "timeout_s"),
        ("max_retry_wait_s = 1e12", "max_retry_wait_s"),
        ("concurrency = 1000000000", "concurrency"),  # a task for each slot
        ('encoding = "bogus"', "encoding"),  # every image an error row
    ],
)
def test_a_models_toml_value_that_would_misprice_stall_or_fail_every_request_is_one_line(
    entry, field, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models.toml").write_text(f'[models.x]\npreset = "vllm"\n{entry}\n')
    with pytest.raises(ModelConfigError, match=rf"models\.toml: model 'x': {field}: ") as raised:
        model_table()
    assert "\n" not in str(raised.value)

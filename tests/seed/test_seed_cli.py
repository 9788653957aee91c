"""Seed parity: the original tool's commands, run through mllmdf's command line (in this process,
and as the installed script where only a process of its own shows the behaviour)."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from conftest import QWEN2VL_ID, REPO, mounted_tmpfs, upstream_or_skip

MLLMDF = str(Path(sys.executable).with_name("mllmdf"))
# What the commands below must not inherit from the environment the tests run in.
UNSET = ("DEFAKE_HOME", "OPENAI_API_KEY", "BASE_URL", "OPENAI_BASE_URL")


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def mllmdf(args, cwd, env_extra=None, check=True) -> Ran:
    """The command line run in this process (click's CliRunner) from ``cwd``, as the script would run it.

    An exception that escapes the command is written to stderr as the script would print it."""
    from click.testing import CliRunner

    from defake_pipeline.cli import main

    env: dict[str, str | None] = dict.fromkeys(UNSET)
    env.update(env_extra or {})
    here = os.getcwd()
    os.chdir(cwd)
    try:
        # color=True: click passes escape sequences through, as it does to a terminal.
        result = CliRunner().invoke(main, args, env=env, color=True)
    finally:
        os.chdir(here)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info))
    ran = Ran(result.exit_code, result.stdout, stderr)
    if check:
        assert ran.returncode == 0, ran.stderr
    return ran


def mllmdf_script(args, cwd, env_extra=None, check=True) -> subprocess.CompletedProcess:
    """The installed console script, for what only a process of its own shows: its exit, its
    streams as a pipe sees them, its log file when it ends."""
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update(env_extra or {})
    proc = subprocess.run(
        [MLLMDF, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def seed_cwd(tmp_path):
    """A working directory laid out like the seed's checkout: demo/real and demo/fake."""
    upstream_demo = upstream_or_skip("demo")
    (tmp_path / "demo").symlink_to(upstream_demo)
    return tmp_path


@pytest.mark.parametrize("model", ["vllm", "canny"])
def test_seed_readme_commands(seed_cwd, chat_server, model):
    env = {"BASE_URL": chat_server.base_url}
    out = mllmdf(["classify", "demo/real/img118131.jpg", "--model", model], seed_cwd, env)
    assert out.stdout in ("real\n", "fake\n", "unknown\n")

    out = mllmdf(["infer", "--model", model, "--real_dir", "demo/real", "--fake_dir", "demo/fake"], seed_cwd, env)
    csv_path = seed_cwd / "outputs" / f"ImageFolders-10_{model}_simple.csv"
    assert out.stdout.strip() == str(csv_path)
    frame = pd.read_csv(csv_path)
    assert list(frame.columns[:4]) == ["path", "label", "pred", "response"]
    assert sorted(frame["label"]) == [0, 0, 0, 1, 1, 1]
    assert set(frame["pred"]) <= {1, 0, -1} and frame["error"].isna().all()
    assert frame["path"].str.startswith("demo/").all()

    out = mllmdf(["doc"], seed_cwd, env)
    report = (seed_cwd / "outputs" / f"ImageFolders-10_{model}_simple.md").read_text()
    assert "## Wrong predictions" in report and "img118131.jpg" in report
    if model == "vllm":
        # classify asked about one image; infer found that answer in the journal; doc asks nothing.
        assert chat_server.state.n_chat == 6


def test_classify_verbose_sends_turns_to_stderr(seed_cwd, chat_server):
    chat_server.state.served_model = QWEN2VL_ID
    out = mllmdf(
        ["classify", "demo/fake/img007937.jpg", "--model", "qwen2vl", "-v"],
        seed_cwd,
        {"BASE_URL": chat_server.base_url},
    )
    assert out.stdout.strip() in ("real", "fake")
    assert "turn 1/1" in out.stderr and chat_server.state.bodies[0]["messages"][-1]["content"][1]["type"] == "image_url"


def test_infer_refuses_to_overwrite_then_continues_without_paying_twice(seed_cwd, chat_server):
    env = {"BASE_URL": chat_server.base_url}
    args = ["infer", "--model", "vllm", "--real_dir", "demo/real", "--fake_dir", "demo/fake", "-o", "run1"]
    mllmdf(args, seed_cwd, env)
    again = mllmdf(args, seed_cwd, env, check=False)
    assert again.returncode == 2 and "--continue" in again.stderr and "Traceback" not in again.stderr
    # Drop the last rows as an interrupted run would leave them, then resume.
    path = seed_cwd / "outputs" / "run1.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]))
    before = chat_server.state.n_chat
    mllmdf([*args, "--continue"], seed_cwd, env)
    frame = pd.read_csv(path)
    assert len(frame) == 6 and frame["path"].is_unique
    assert chat_server.state.n_chat == before  # every answer came from the journal
    mllmdf([*args, "--overwrite"], seed_cwd, env)
    assert len(pd.read_csv(path)) == 6


def test_infer_sampling_options(seed_cwd):
    base = ["infer", "--model", "canny", "--real_dir", "demo/real", "--fake_dir", "demo/fake"]
    out = mllmdf([*base, "--count", "2", "--seed", "7", "-o", "two"], seed_cwd)
    assert "all=" in out.stderr and "reals=" in out.stderr and "fakes=" in out.stderr  # the progress bar
    assert sorted(pd.read_csv(seed_cwd / "outputs" / "two.csv")["label"]) == [0, 0, 1, 1]
    mllmdf([*base, "--real_only", "-o", "reals"], seed_cwd)
    assert set(pd.read_csv(seed_cwd / "outputs" / "reals.csv")["label"]) == {1}
    mllmdf([*base, "--job_split", "1/3", "-o", "split", "-l", "part1"], seed_cwd)
    assert len(pd.read_csv(seed_cwd / "outputs" / "split.csv")) == 2
    assert (seed_cwd / "outputs" / "logs" / "part1.log").exists()
    bad = mllmdf([*base, "--job_split", "4/3"], seed_cwd, check=False)
    assert bad.returncode == 2 and "--job_split" in bad.stderr


def test_doc_all_with_no_experiment_says_where_it_looked(tmp_path):
    out = mllmdf(["doc", "all"], tmp_path, {"DEFAKE_HOME": str(tmp_path / "outputs")})
    assert (
        out.stdout == ""
        and out.stderr == f"note: no experiment CSV in {tmp_path / 'outputs'} (`mllmdf infer` writes them)\n"
    )


def test_doc_renders_a_csv_written_by_the_seed(tmp_path):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    rows = [
        ("demo/real/a.jpg", 1, 1, "It is real."),
        ("demo/real/b.jpg", 1, 0, "Looks generated | odd\nsecond line <b>"),
        ("demo/fake/c.png", 0, 0, "generated"),
        ("demo/fake/d.png", 0, -1, "no idea"),
    ]
    with (outputs / "WildFakeResampled-2_gpt4o_simple.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "pred", "response"])
        writer.writerows(rows)
    out = mllmdf(["doc", "--summarize_to", "summary.csv"], tmp_path)
    report = (outputs / "WildFakeResampled-2_gpt4o_simple.md").read_text()
    assert "Looks generated \\| odd<br>second line &lt;b&gt;" in report
    summary = pd.read_csv(tmp_path / "summary.csv").iloc[0]
    assert list(pd.read_csv(tmp_path / "summary.csv").columns) == [
        "experiment_name",
        "dataset",
        "model",
        "prompt",
        "count",
        "output_path",
        "total_images",
        "count_real",
        "count_fake",
        "accuracy",
        "precision",
        "recall",
        "real_accuracy",
        "fake_accuracy",
        "fails",
    ]
    assert (summary.dataset, summary.model, summary.prompt, summary["count"]) == (
        "WildFakeResampled",
        "gpt4o",
        "simple",
        2,
    )
    assert (summary.total_images, summary.count_real, summary.count_fake, summary.fails) == (3, 2, 1, 1)
    assert summary.accuracy == pytest.approx(2 / 3) and summary.precision == pytest.approx(1.0)
    assert summary.recall == pytest.approx(0.5) and summary.fake_accuracy == pytest.approx(1.0)
    assert "accuracy 66.667%" in out.stdout


def test_unknown_decorator_and_unset_variable_fail_on_one_line(tmp_path, chat_server):
    upstream_or_skip("prompts", "paper")
    env = {"BASE_URL": chat_server.base_url, "DEFAKE_HOME": str(tmp_path / "home")}
    shutil.copytree(REPO / "demo", tmp_path / "demo")
    for name, needle in (("fusion", "'fusion.v1'"), ("p4", "'two_shot.v2'"), ("p2", "'roi.dinov2'")):
        prompt = upstream_or_skip("prompts", "paper", f"{name}.json")
        out = mllmdf(
            ["classify", "demo/real/coffee.jpg", "--model", "vllm", "--prompt", str(prompt)], tmp_path, env, check=False
        )
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "conversation" in lines[0] and str(prompt) in lines[0]
    assert chat_server.state.n_chat == 0


def test_rerun_under_another_output_name_makes_zero_calls(seed_cwd, chat_server):
    env = {"BASE_URL": chat_server.base_url}
    base = ["infer", "--model", "vllm", "--real_dir", "demo/real", "--fake_dir", "demo/fake"]
    mllmdf([*base, "-o", "first"], seed_cwd, env)
    assert chat_server.state.n_chat == 6
    out = mllmdf([*base, "-o", "second", "--max-cost", "0"], seed_cwd, env)
    assert chat_server.state.n_chat == 6 and "0 new answers" in out.stderr
    assert pd.read_csv(seed_cwd / "outputs" / "second.csv")["error"].isna().all()  # journal hits cost nothing


def test_failed_infer_start_leaves_no_csv_and_doc_skips_header_only(tmp_path):
    """No CSV before the first row; `doc all` skips a header-only CSV with a note."""
    for label in ("real", "fake"):
        (tmp_path / "d" / label).mkdir(parents=True)
        shutil.copy(REPO / "demo" / label / sorted(os.listdir(REPO / "demo" / label))[0], tmp_path / "d" / label)
    env = {"DEFAKE_HOME": str(tmp_path / "out"), "BASE_URL": "http://127.0.0.1:9/v1"}  # nothing listens
    args = ["infer", "--model", "vllm", "--real_dir", "d/real", "--fake_dir", "d/fake", "-o", "run"]
    first = mllmdf(args, tmp_path, env, check=False)
    assert first.returncode == 2 and "cannot reach" in first.stderr
    assert not (tmp_path / "out" / "run.csv").exists()
    again = mllmdf(args, tmp_path, env, check=False)
    assert "already exists" not in again.stderr
    good = mllmdf(
        ["infer", "--model", "canny", "--real_dir", "d/real", "--fake_dir", "d/fake", "-o", "good"], tmp_path, env
    )
    assert good.returncode == 0
    (tmp_path / "out" / "empty.csv").write_text("path,label,pred,response\n")
    doc = mllmdf(["doc", "all"], tmp_path, env)
    assert "good.md: accuracy" in doc.stdout
    assert "skipped" in doc.stderr and "empty.csv" in doc.stderr and "Traceback" not in doc.stderr


def test_answers_past_the_csv_modules_field_limit_are_summarized_and_continued(tmp_path, chat_server, monkeypatch):
    """A model entry may keep long answers (max_response_chars), and the seed's CSVs hold them
    uncut: a field over the csv module's 128 KiB default is read back like any other."""
    from click.testing import CliRunner

    from defake_pipeline.cli import main

    for label in ("real", "fake"):
        shutil.copytree(REPO / "demo" / label, tmp_path / "d" / label)
    (tmp_path / "models.toml").write_text(
        f'[models.long]\npreset = "vllm"\nbase_url = "{chat_server.base_url}"\nmax_response_chars = 300000\n'
    )
    chat_server.state.responder = lambda body: "step " * 40_000 + "real"
    monkeypatch.chdir(tmp_path)
    args = ["infer", "-m", "long", "-p", "simple", "--real_dir", "d/real", "--fake_dir", "d/fake", "-o", "long"]
    env = {"DEFAKE_HOME": str(tmp_path / "out")}
    first = CliRunner().invoke(main, [*args, "-c", "1"], env=env)
    assert first.exit_code == 0, first.output
    assert "on 2 scored of 2 rows" in first.output
    again = CliRunner().invoke(main, [*args, "-c", "2", "--continue"], env=env)
    assert again.exit_code == 0, again.output
    assert "on 4 scored of 4 rows" in again.output and "this run: 2 images" in again.output
    assert chat_server.state.n_chat == 4


def test_continue_on_another_experiments_csv_is_refused_and_leaves_it_as_it_was(tmp_path, chat_server, monkeypatch):
    """The default name holds the prompt's `name` field, which a prompt copied to make a variant
    keeps: `-p simple` and `-p variant` both write <dataset>-1_vllm_simple.csv. Continuing the
    other's CSV would skip every image it holds and publish its answers as this prompt's."""
    from click.testing import CliRunner

    from defake_pipeline.cli import main

    for label in ("real", "fake"):
        shutil.copytree(REPO / "demo" / label, tmp_path / "d" / label)
    (tmp_path / "prompts").mkdir()
    for name in ("simple", "variant"):
        shutil.copy(REPO / "prompts" / "simple.json", tmp_path / "prompts" / f"{name}.json")
    monkeypatch.chdir(tmp_path)
    env = {"DEFAKE_HOME": str(tmp_path / "out"), "BASE_URL": chat_server.base_url}
    common = ["-m", "vllm", "--real_dir", "d/real", "--fake_dir", "d/fake", "-c", "1"]
    first = CliRunner().invoke(main, ["infer", "-p", "simple", *common], env=env)
    assert first.exit_code == 0, first.output
    [csv_file] = (tmp_path / "out").glob("*.csv")
    before = csv_file.read_bytes()
    asked = chat_server.state.n_chat
    other = CliRunner().invoke(main, ["infer", "-p", "variant", *common], env=env)
    assert other.exit_code == 2 and f"{csv_file.name} already exists" in other.output
    other = CliRunner().invoke(main, ["infer", "-p", "variant", *common, "--continue"], env=env)
    assert other.exit_code == 2
    assert f"{csv_file.name} holds answers of vllm × simple, not of vllm × variant" in other.output
    assert csv_file.read_bytes() == before and chat_server.state.n_chat == asked
    same = CliRunner().invoke(main, ["infer", "-p", "simple", *common, "--continue"], env=env)
    assert same.exit_code == 0, same.output  # its own experiment continues as before


def test_doc_names_the_model_and_prompt_the_csv_rows_name_not_the_file(tmp_path, chat_server, monkeypatch):
    """`-o NAME` gives a CSV a name of the user's; its rows say which model and prompt answered,
    and the report is published under those. A CSV of several is not one experiment."""
    from click.testing import CliRunner

    from defake_pipeline.cli import main

    for label in ("real", "fake"):
        shutil.copytree(REPO / "demo" / label, tmp_path / "d" / label)
    monkeypatch.chdir(tmp_path)
    env = {"DEFAKE_HOME": str(tmp_path / "out"), "BASE_URL": chat_server.base_url}
    args = ["infer", "-m", "vllm", "-p", "simple", "--real_dir", "d/real", "--fake_dir", "d/fake", "-c", "1"]
    assert CliRunner().invoke(main, [*args, "-o", "run1"], env=env).exit_code == 0
    result = CliRunner().invoke(main, ["doc", "run1"], env=env)
    assert result.exit_code == 0, result.output
    report = (tmp_path / "out" / "run1.md").read_text(encoding="utf-8")
    assert "# Detection report: `vllm` × `simple`\n" in report and "| Model | `vllm` |" in report
    rows = (tmp_path / "out" / "run1.csv").read_text(encoding="utf-8").splitlines()
    mixed = [rows[0], rows[1], rows[2].replace(",vllm,", ",canny,", 1)]
    (tmp_path / "out" / "mixed.csv").write_text("\n".join(mixed) + "\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["doc", "mixed"], env=env)
    assert result.exit_code == 2 and "mixed.csv: rows of 2 models (canny, vllm)" in result.output
    assert not (tmp_path / "out" / "mixed.md").exists()


def test_continue_with_nothing_left_summarizes_the_whole_csv(tmp_path):
    """The summary covers the output CSV, not only this invocation's new images."""
    for label in ("real", "fake"):
        shutil.copytree(REPO / "demo" / label, tmp_path / "d" / label)
    env = {"DEFAKE_HOME": str(tmp_path / "out")}
    args = ["infer", "--model", "canny", "--real_dir", "d/real", "--fake_dir", "d/fake", "-c", "0", "-o", "all16"]
    first = mllmdf(args, tmp_path, env)
    assert "accuracy 93.75% (reals 87.50%, fakes 100.00%) on 16 scored of 16 rows (0 errors, 0 unknown)" in first.stderr
    again = mllmdf([*args, "--continue"], tmp_path, env)  # nothing left to do
    assert "accuracy 93.75% (reals 87.50%, fakes 100.00%) on 16 scored of 16 rows (0 errors, 0 unknown)" in again.stderr
    assert "this run: 0 images" in again.stderr


@pytest.mark.parametrize(
    ("option", "named"),
    [
        # 0 means every image; -1 is not a count, and the whole dataset on it would spend unasked.
        (["--count", "-1"], "'-c' / '--count'"),
        (["--concurrency", "1000000000"], "'--concurrency'"),  # a task for each slot: it never starts
    ],
)
def test_an_infer_option_out_of_its_range_is_refused_and_nothing_is_sent(tmp_path, chat_server, option, named):
    from click.testing import CliRunner

    from defake_pipeline.cli import main

    for label in ("real", "fake"):
        shutil.copytree(REPO / "demo" / label, tmp_path / "d" / label)
    args = ["infer", "-m", "vllm", "-p", "simple", "--real_dir", str(tmp_path / "d/real"), "--fake_dir"]
    env = {"DEFAKE_HOME": str(tmp_path / "out"), "BASE_URL": chat_server.base_url}
    result = CliRunner().invoke(main, [*args, str(tmp_path / "d/fake"), *option], env=env)
    assert result.exit_code == 2 and f"Invalid value for {named}" in result.output
    assert chat_server.state.n_chat == 0


def test_summary_says_n_a_when_nothing_was_answered():
    from defake_pipeline.evaluation.tally import Tally

    assert Tally().progress() == {"all": "n/a", "reals": "n/a", "fakes": "n/a"}
    assert Tally.from_rows([1, 0], [-1, 0], ["", "timeout"], [True, False]).progress()["all"] == "n/a"


def test_doc_counts_each_csv_row_once_when_paths_share_content(tmp_path):
    # One image copied to three more paths (same image_sha256): a CSV row is one prediction.
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    with (outputs / "copies.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "pred", "response", "image_sha256"])
        writer.writerows([(f"x/{name}.png", 1, 1, "real", "same") for name in "abcd"])
        writer.writerow(("x/e.png", 0, 1, "real", "other"))
    mllmdf(["doc", "copies", "--summarize_to", "summary.csv"], tmp_path)
    summary = pd.read_csv(tmp_path / "summary.csv").iloc[0]
    assert (summary.total_images, summary.count_real, summary.count_fake) == (5, 4, 1)
    assert summary.accuracy == pytest.approx(4 / 5)


def _rendered(markdown: str):
    """The report as a markdown renderer makes it (CommonMark with GFM tables), as HTML parts."""
    from html.parser import HTMLParser

    from markdown_it import MarkdownIt

    class Parts(HTMLParser):
        def __init__(self):
            super().__init__()
            self.urls, self.tags, self.rows, self.row = [], [], [], None

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.urls += [v for k, v in attrs if k in ("src", "href") and v]
            if tag == "tr":
                self.row = 0
            elif tag in ("td", "th") and self.row is not None:
                self.row += 1

        def handle_endtag(self, tag):
            if tag == "tr":
                self.rows.append(self.row)
                self.row = None

    parts = Parts()
    parts.feed(MarkdownIt("commonmark").enable("table").render(markdown))
    return parts


def test_file_names_and_answers_inject_no_markup(tmp_path):
    """HTML, pipes, link syntax and line breaks in file names, and remote
    images or escape sequences in answers, are shown as text."""
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    names = ["<img src=x onerror=alert(1)>.png", "a|b.png", "x](https://evil.example).png", "line\nbreak.png"]
    answers = [
        "![x](https://evil.example/t.png) real",
        "<script>alert(1)</script> generated",
        "\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\ \x1b[31mreal",
        "a | b\nc generated",
    ]
    with (outputs / "hostile.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "pred", "response"])
        writer.writerows((f"demo/{n}", i % 2, i % 2, a) for i, (n, a) in enumerate(zip(names, answers, strict=True)))
    mllmdf(["doc", "hostile"], tmp_path)
    report = (outputs / "hostile.md").read_text()
    assert "\x1b" not in report and "\\x1b" in report
    parts = _rendered(report)
    assert not [u for u in parts.urls if u.startswith(("http:", "https:", "//"))], parts.urls
    assert "script" not in parts.tags and parts.tags.count("img") == 0  # no thumbnails: the files do not exist
    image_rows = [n for n in parts.rows if n == 6]  # Image, Dataset, Label, Prediction, Score, Response
    assert len(image_rows) == 2 + 4, parts.rows  # two header rows, one row per image
    # every table keeps its own column count: header 2, metrics 20, confusion 5, images 6
    assert parts.rows == [2] * 6 + [20] * 2 + [5] * 3 + [6] * 4 + [6] * 2, parts.rows


def test_verbose_turns_show_escape_sequences_as_text(tmp_path, chat_server):
    chat_server.state.responder = lambda body: (
        "\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\ \x1b[2J\x9b31m real"
    )
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8), "red").save(image)
    out = mllmdf(
        ["classify", str(image), "--model", "vllm", "-v"],
        tmp_path,
        {"BASE_URL": chat_server.base_url, "DEFAKE_HOME": str(tmp_path)},
    )
    assert out.stdout == "real\n"
    assert "\x1b" not in out.stderr and "\x9b" not in out.stderr and "\\x1b]8;;https://evil.example" in out.stderr


def test_hostile_file_names_print_as_one_line_of_text(tmp_path):
    """A file name with a line break or escape sequences, in a one-line error or warning: the
    terminal acts on none of it and the line stays one line."""
    (tmp_path / "real").mkdir()
    (tmp_path / "fake").mkdir()
    bad = tmp_path / "real" / "a\nerror: forged \x1b]0;title\x07\x1b[2J.png"
    bad.write_bytes(b"")
    folder = tmp_path / "fake" / "d\x1b[1m"
    folder.mkdir()
    (folder / "loop\x1b[5m").symlink_to("..")
    Image.new("RGB", (8, 8), "red").save(tmp_path / "fake" / "x.png")

    out = mllmdf(["classify", str(bad), "--model", "canny"], tmp_path, {"DEFAKE_HOME": str(tmp_path)}, check=False)
    assert (out.returncode, out.stdout) == (1, "unknown\n")
    assert [line for line in out.stderr.splitlines() if line] == [out.stderr.strip()], out.stderr
    assert "\x1b" not in out.stderr and "a\\nerror: forged \\x1b]0;title" in out.stderr

    args = ["infer", "--model", "canny", "--real_dir", "real", "--fake_dir", "fake", "--count", "0"]
    out = mllmdf(args, tmp_path, {"DEFAKE_HOME": str(tmp_path)})
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "already walked" in warnings[0], out.stderr
    assert "\x1b" not in out.stderr and "d\\x1b[1m" in warnings[0]


def test_huge_answers_are_stored_capped_with_the_verdict_of_the_whole(tmp_path, chat_server):
    """Four 10 MB answers. What is stored is capped (max_response_chars, 20,000 by
    default) with a truncation mark; the verdict is read from the whole answer."""
    chat_server.state.responder = lambda body: "real " + "x" * 10_000_000 + " generated"
    data = tmp_path / "data"
    for i, label in enumerate(("real", "real", "fake", "fake")):
        (data / label).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i, 9, 9)).save(data / label / f"{i}.png")
    env = {"BASE_URL": chat_server.base_url}
    # The peak RSS of infer alone: a fresh parent whose only child it is reports it.
    measure = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    args = ["infer", "--model", "vllm", "--real_dir", str(data / "real"), "--fake_dir", str(data / "fake"), "-o", "big"]
    peak = subprocess.run(
        [sys.executable, "-c", measure, MLLMDF, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, **env, "DEFAKE_HOME": str(tmp_path / "outputs")},
        timeout=120,
    )
    assert peak.returncode == 0, peak.stderr
    peak_mb = int(peak.stdout.split()[-1]) / 1024
    mllmdf(["doc", "big"], tmp_path, env)
    frame = pd.read_csv(tmp_path / "outputs" / "big.csv")
    assert (frame["pred"] == 0).all()  # "generated" is the whole answer's last verdict word
    assert frame["response"].str.endswith("[truncated: 10,000,015 characters in all]").all()
    assert frame["response"].str.len().max() < 20_100
    assert (tmp_path / "outputs" / "big.csv").stat().st_size < 200_000
    assert (tmp_path / "outputs" / "big.md").stat().st_size < 200_000
    assert peak_mb < 400, peak_mb
    again = mllmdf(
        ["infer", "--model", "vllm", "--real_dir", str(data / "real"), "--fake_dir", str(data / "fake"), "-o", "again"],
        tmp_path,
        env,
    )
    assert chat_server.state.n_chat == 4 and (pd.read_csv(tmp_path / "outputs" / "again.csv")["pred"] == 0).all(), (
        again.stderr
    )


@pytest.mark.parametrize("damage", ["garbage", "half"])
def test_a_damaged_journal_is_one_line_and_left_as_it_is(tmp_path, damage):
    """A garbage or half-truncated journal gives one line naming the file and the
    way out, never a traceback, and the file is not written over."""
    data = tmp_path / "data"
    for i in range(40):
        (data / ("real" if i % 2 else "fake")).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i, 1, 2)).save(data / ("real" if i % 2 else "fake") / f"{i}.png")
    args = [
        "infer",
        "--model",
        "canny",
        "--real_dir",
        str(data / "real"),
        "--fake_dir",
        str(data / "fake"),
        "--count",
        "0",
    ]
    mllmdf([*args, "-o", "first"], tmp_path)
    journal = tmp_path / "outputs" / "cache" / "responses.sqlite"
    for leftover in (journal.with_name(journal.name + "-wal"), journal.with_name(journal.name + "-shm")):
        leftover.unlink(missing_ok=True)
    damaged = (
        b"this is not a database" * 300 if damage == "garbage" else journal.read_bytes()[: journal.stat().st_size // 2]
    )
    journal.write_bytes(damaged)
    out = mllmdf([*args, "-o", "second"], tmp_path, check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {journal}: the response journal is damaged") and "move it aside" in line
    assert journal.read_bytes() == damaged


def test_the_console_script_ends_with_its_logs_output_and_exit_codes_intact(tmp_path):
    """The log file is complete, piped output is all there, and exit codes are kept."""
    for label in ("real", "fake"):
        shutil.copytree(REPO / "demo" / label, tmp_path / "d" / label)
    env = {"DEFAKE_HOME": str(tmp_path / "out")}
    args = ["infer", "--model", "canny", "--real_dir", "d/real", "--fake_dir", "d/fake", "-c", "0", "-l", "ends"]
    out = mllmdf_script([*args, "-o", "run"], tmp_path, env)
    assert out.stdout == f"{tmp_path / 'out' / 'run.csv'}\n" and "accuracy" in out.stderr
    assert "done: {" in (tmp_path / "out" / "logs" / "ends.log").read_text().splitlines()[-1]
    again = mllmdf_script([*args, "-o", "run"], tmp_path, env, check=False)  # refuses to overwrite
    assert (
        again.returncode == 2 and again.stderr.splitlines()[-1].startswith("error: ") and "--continue" in again.stderr
    )
    usage = mllmdf_script(["infer", "--no-such-option"], tmp_path, env, check=False)
    assert usage.returncode == 2 and "No such option" in usage.stderr


def test_doc_reads_word_labels_and_skips_a_csv_with_unknown_ones_in_one_line(tmp_path):
    (tmp_path / "words.csv").write_text("path,label,pred,response\na.png,real,1,real\nb.png,Fake,0,fake\n")
    (tmp_path / "bad.csv").write_text("path,label,pred,response\na.png,maybe,1,real\n")
    out = mllmdf(["doc", "all"], tmp_path, {"DEFAKE_HOME": str(tmp_path)})
    assert "words.md: accuracy 100.000% on 2 images" in out.stdout
    assert out.stderr.count("\n") == 1 and "bad.csv: label 'maybe' is not real/fake/1/0" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.fixture
def read_only_folder(tmp_path):
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as folder:
        yield folder


@pytest.mark.parametrize("command", ["classify", "infer", "materialize"])
def test_a_read_only_home_is_one_line_naming_the_folder(read_only_folder, command):
    from click.testing import CliRunner

    from defake_pipeline.cli import main

    demo = REPO / "demo"
    args = {
        "classify": ["classify", str(demo / "real" / "astronaut.jpg"), "-m", "canny"],
        "infer": ["infer", "-m", "canny", "--real_dir", str(demo / "real"), "--fake_dir", str(demo / "fake")],
        "materialize": ["materialize", "-m", "canny"],
    }[command]
    env = {"DEFAKE_HOME": str(read_only_folder), "DAGSTER_HOME": str(read_only_folder / "dagster")}
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write {read_only_folder}") and "Read-only file system" in last
    assert "Traceback" not in result.output


def test_csv_names_pipes_and_invisible_characters_are_shown_as_text(tmp_path):
    """A CSV's own name is escaped in its report; a "|" in an image's name keeps its row whole
    in GitHub's renderer (which splits cells at any unescaped pipe); right-to-left overrides
    and zero-width characters are shown as escapes, in reports and on the terminal."""
    name = "x<img src=x onerror=alert(1)>"
    (tmp_path / f"{name}.csv").write_text(
        "path,label,pred,response\ndemo/a|b.png,1,1,real\ndemo/evil\u202egnp.exe,0,0,generated \u200bhidden\n"
    )
    out = mllmdf(["doc", "all"], tmp_path, {"DEFAKE_HOME": str(tmp_path)})
    report = (tmp_path / f"{name}.md").read_text()
    parts = _rendered(report)
    assert "img" not in parts.tags
    # Every "|" left unescaped in the image row is a cell border: 7 for 6 cells.
    row = next(line for line in report.splitlines() if "a%7Cb.png" in line or "a|b.png" in line)
    assert len(re.findall(r"(?<!\\)\|", row)) == 7, row
    assert "\u202e" not in report and "\u200b" not in report
    assert "evil\\\\u202egnp.exe" in report and "\\\\u200bhidden" in report  # backslash escaped in markdown
    assert "\u202e" not in out.stdout + out.stderr


DECORATORS = """
import sys
import time


def talk(cache):
    print("DECORATOR-NOISE on stdout")
    cache["note"] = "seen"


def leave(cache):
    sys.exit(3)
"""


def _decorated_prompt(tmp_path, name, decorator):
    payload = [["user", "Real or generated? Answer with one word.", "{image_url}"]]
    conversation = {"id": "c", "decorators": [decorator], "payload": payload, "response_var_name": "result"}
    (tmp_path / "prompts" / f"{name}.json").write_text(
        json.dumps({"format_version": "3", "name": name, "conversations": [conversation]})
    )


def test_decorator_prints_go_to_the_log_and_sys_exit_fails_only_its_image(tmp_path, chat_server):
    (tmp_path / "decorators").mkdir()
    (tmp_path / "decorators" / "odd.py").write_text(DECORATORS)
    (tmp_path / "prompts").mkdir()
    _decorated_prompt(tmp_path, "noisy", "odd.talk")
    _decorated_prompt(tmp_path, "leaving", "odd.leave")
    env = {"BASE_URL": chat_server.base_url, "DEFAKE_HOME": str(tmp_path / "home")}
    image = str(REPO / "demo" / "real" / "coffee.jpg")
    out = mllmdf(["classify", image, "--model", "vllm", "--prompt", "noisy"], tmp_path, env)
    assert out.stdout.strip() in ("real", "generated", "fake", "unknown"), out.stdout
    assert "DECORATOR-NOISE" not in out.stdout + out.stderr
    assert (
        "decorator odd.talk printed: DECORATOR-NOISE on stdout" in (tmp_path / "home" / "logs" / "main.log").read_text()
    )
    demo = REPO / "demo"
    args = ["infer", "-m", "vllm", "-p", "leaving", "--real_dir", str(demo / "real"), "--fake_dir", str(demo / "fake")]
    out = mllmdf([*args, "-c", "3", "-o", "left"], tmp_path, env, check=False)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader((tmp_path / "home" / "left.csv").open()))
    assert len(rows) == 6 and all("decorator 'odd.leave' called sys.exit(3)" in r["error"] for r in rows)


def test_sigterm_to_infer_is_one_line_and_keeps_what_was_answered(tmp_path, chat_server):
    chat_server.state.latency_s = 0.3
    demo = REPO / "demo"
    env = {
        k: v for k, v in os.environ.items() if k not in ("DEFAKE_HOME", "OPENAI_API_KEY", "BASE_URL", "OPENAI_BASE_URL")
    }
    env.update(BASE_URL=chat_server.base_url, DEFAKE_HOME=str(tmp_path / "home"))
    args = ["infer", "-m", "vllm", "--real_dir", str(demo / "real"), "--fake_dir", str(demo / "fake")]
    proc = subprocess.Popen(
        [MLLMDF, *args, "--concurrency", "1", "-o", "run"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    # One request at a time: the fourth request reaches the server only after the third answer
    # was received and its row written (the server counting an answer it sent proves neither).
    deadline = time.monotonic() + 60
    while chat_server.state.n_chat < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1].startswith("error: stopped by SIGTERM; every answer received is in the journal")
    rows = list(csv.DictReader((tmp_path / "home" / "run.csv").open()))
    assert len(rows) >= 3 and "Traceback" not in err


def test_a_bare_classify_that_cannot_reach_its_default_model_names_the_registered_ones(tmp_path):
    (tmp_path / "models.toml").write_text('registered = ["canny", "vllm"]\n')
    env = {"BASE_URL": "http://127.0.0.1:9/v1", "DEFAKE_HOME": str(tmp_path / "home")}  # nothing listens on 9
    out = mllmdf(["classify", str(REPO / "demo" / "real" / "coffee.jpg")], tmp_path, env, check=False)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "cannot reach http://127.0.0.1:9/v1 for model 'llama32vi'" in out.stderr
    assert "models registered here: canny, vllm (choose one with --model NAME)" in out.stderr


def test_the_infer_summary_says_how_many_images_were_scored(tmp_path):
    for label in ("real", "fake"):
        shutil.copytree(REPO / "demo" / label, tmp_path / "d" / label)
    (tmp_path / "d" / "real" / "empty.png").write_bytes(b"")
    (tmp_path / "d" / "fake" / "broken.png").symlink_to(tmp_path / "nowhere.png")
    args = ["infer", "--model", "canny", "--real_dir", "d/real", "--fake_dir", "d/fake", "-c", "0", "-o", "some"]
    out = mllmdf(args, tmp_path, {"DEFAKE_HOME": str(tmp_path / "out")})
    assert "on 16 scored of 18 rows (2 errors, 0 unknown)" in out.stderr, out.stderr


def test_the_infer_summary_counts_answers_not_requests_that_failed(seed_cwd, chat_server):
    chat_server.state.faults.rate_400 = 1.0  # every request reaches the server and is refused
    args = ["infer", "--model", "vllm", "--real_dir", "demo/real", "--fake_dir", "demo/fake", "-o", "refused"]
    out = mllmdf(args, seed_cwd, {"BASE_URL": chat_server.base_url})
    assert chat_server.state.n_chat >= 6  # sent...
    assert "(6 errors, 0 unknown); this run: 6 images, 0 new answers, $0.0000" in out.stderr, (
        out.stderr
    )  # ...none answered


@pytest.mark.timeout(120)  # in this process: a hang before the fix ended here
def test_an_experiment_csv_that_is_a_pipe_or_a_device_is_one_line_never_a_hang(seed_cwd):
    """`infer -o NAME --continue` or `--overwrite`, and `doc`, opened whatever DEFAKE_HOME/NAME.csv
    was: a named pipe blocked them for good (SIGTERM too), and /dev/zero never ended."""
    home = seed_cwd / "outputs"
    home.mkdir()
    os.mkfifo(home / "pipe.csv")
    (home / "zero.csv").symlink_to("/dev/zero")
    base = ["infer", "-m", "canny", "--real_dir", "demo/real", "--fake_dir", "demo/fake", "-c", "2"]
    kinds = {"pipe": "a named pipe", "zero": "a character device"}
    for name, kind in kinds.items():
        for how in ("--continue", "--overwrite"):
            ran = mllmdf([*base, "-o", name, how], seed_cwd, check=False)
            assert ran.returncode == 2, ran.stderr
            assert ran.stderr.strip().splitlines()[-1] == (
                f"error: {home / name}.csv: not a regular file ({kind}); only regular files are read"
            )
        ran = mllmdf(["doc", name], seed_cwd, check=False)
        assert ran.returncode == 2 and f"{home / name}.csv: not a regular file ({kind})" in ran.stderr, ran.stderr
    mllmdf([*base, "-o", "good"], seed_cwd)
    os.mkfifo(seed_cwd / "summary.csv")  # written beside and renamed into place, as every output
    every = mllmdf(["doc", "all", "--summarize_to", "summary.csv"], seed_cwd)
    assert "good.md" in every.stdout and every.stderr.count("not a regular file") == 2, every.stderr
    assert pd.read_csv(seed_cwd / "summary.csv")["experiment_name"].tolist() == ["good"]

"""The environment is read in one place, settings.py; empty variables count as unset."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import demo_dataset
from defake_pipeline.settings import load_settings


def test_empty_variables_count_as_unset_and_the_key_stays_secret(monkeypatch):
    monkeypatch.setenv("DEFAKE_HOME", "")
    monkeypatch.setenv("BASE_URL", "")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    settings = load_settings()
    assert settings.BASE_URL is None and Path(settings.DEFAKE_HOME).name == "outputs"
    assert settings.api_key == "sk-test-secret" and "sk-test-secret" not in repr(settings)


def test_no_module_but_settings_reads_the_environment():
    package = Path(__file__).resolve().parents[1] / "defake_pipeline"
    readers = [
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if ("os.environ.get(" in (text := p.read_text(encoding="utf-8")) or "os.getenv(" in text)
        and p.parent.name != "testing"
        and p.relative_to(package) != Path("settings.py")
    ]
    assert readers == [], readers


def test_any_folder_of_a_project_uses_the_projects_homes_and_pays_nothing_again(tmp_path, chat_server, monkeypatch):
    from click.testing import CliRunner

    from conftest import real_fake_dataset
    from defake_pipeline.cli import main

    project = tmp_path / "proj"
    real_fake_dataset(project, "mine", 3, folder="images")
    (project / "models.toml").write_text("registered = []\n")
    deeper = project / "images" / "real"
    # No DEFAKE_HOME or DAGSTER_HOME: the homes come from where the command runs.
    env = {"DEFAKE_HOME": None, "DAGSTER_HOME": None, "OPENAI_API_KEY": None, "BASE_URL": chat_server.base_url}
    args = ["materialize", "-m", "vllm", "-p", "simple", "-d", "mine"]
    monkeypatch.chdir(project)
    first = CliRunner().invoke(main, args, env=env)
    assert first.exit_code == 0, first.output
    paid = chat_server.state.n_chat
    assert paid == 6 and (project / "outputs" / "cache" / "responses.sqlite").exists()
    assert (project / ".dagster_home").is_dir()
    monkeypatch.chdir(deeper)
    again = CliRunner().invoke(main, args, env=env)
    assert again.exit_code == 0, again.output
    assert chat_server.state.n_chat == paid  # the same journal: nothing paid again
    assert sorted(p.name for p in deeper.iterdir()) == ["0.png", "1.png", "2.png"]  # nothing created here
    assert "note:" not in again.output


def test_outside_any_project_a_command_says_what_it_creates_and_where(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from defake_pipeline.cli import main

    outside = tmp_path / "loose"
    outside.mkdir()
    monkeypatch.chdir(outside)
    monkeypatch.delenv("DEFAKE_HOME", raising=False)
    image = Path(__file__).resolve().parents[1] / "demo" / "real" / "astronaut.jpg"
    result = CliRunner().invoke(main, ["classify", str(image), "-m", "canny"], env={"DEFAKE_HOME": None})
    assert result.exit_code == 0, result.output
    where = f"in {outside} or above): writing to {outside / 'outputs'}"
    assert f"note: no project here (no models.toml, datasets, prompts {where}" in result.output
    assert (outside / "outputs").is_dir()


def test_make_ui_takes_its_port_from_port():
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    plan = subprocess.run(["make", "-n", "ui", "PORT=3123"], cwd=repo, capture_output=True, text=True, check=True)
    assert "mllmdf ui --port 3123" in plan.stdout, plan.stdout


def test_a_project_of_its_own_evaluates_only_what_it_defines(tmp_path, chat_server, monkeypatch):
    """The prompts, datasets and registered models shipped beside the package (the demo's) are
    not the project's: `materialize` with no choices asks only for the project's own, and a
    shipped prompt named on the command line is still found."""
    import json

    from click.testing import CliRunner

    from conftest import REPO, real_fake_dataset
    from defake_pipeline.cli import main
    from defake_pipeline.warehouse.database import query
    from defake_pipeline.warehouse.layout import HomeLayout

    project = tmp_path / "proj"
    real_fake_dataset(project, "mine", 3, folder="images")
    (project / "prompts").mkdir()
    prompt = json.loads((REPO / "prompts" / "simple.json").read_text()) | {"name": "own"}
    (project / "prompts" / "own.json").write_text(json.dumps(prompt))
    (project / "models.toml").write_text('registered = ["vllm"]\n')
    env = {"DEFAKE_HOME": None, "DAGSTER_HOME": None, "OPENAI_API_KEY": None, "BASE_URL": chat_server.base_url}
    monkeypatch.chdir(project)
    result = CliRunner().invoke(main, ["materialize"], env=env)
    assert result.exit_code == 0, result.output
    assert "1 model(s) × 1 prompt(s): vllm × own" in result.output and "baseline" not in result.output
    assert chat_server.state.n_chat == 6  # one model × one prompt × six images
    layout = HomeLayout(project / "outputs")
    ranked = query(layout, "SELECT DISTINCT dataset, model, prompt FROM metrics").itertuples(index=False)
    assert [tuple(r) for r in ranked] == [("mine", "vllm", "own")]
    named = CliRunner().invoke(main, ["materialize", "-p", "simple"], env=env)
    assert named.exit_code == 0, named.output
    assert "1 model(s) × 1 prompt(s): vllm × simple" in named.output  # the shipped prompt, by name
    # It renders the same requests as `own`, a copy: the journal answers them.
    assert chat_server.state.n_chat == 6 and layout.report_file("vllm", "simple").exists()


def test_a_project_with_no_dataset_is_told_where_to_define_one(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from defake_pipeline.cli import main

    (tmp_path / "proj" / "prompts").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "proj")
    result = CliRunner().invoke(main, ["materialize", "-m", "canny"], env={"DEFAKE_HOME": None, "DAGSTER_HOME": None})
    assert result.exit_code != 0
    datasets = tmp_path / "proj" / "datasets"
    assert (
        result.output.strip()
        == f"error: no dataset is defined: add one to {datasets} as <name>.toml (layout and root; see README)"
    )


def test_mllmdf_ui_on_a_port_in_use_is_one_line(tmp_path, monkeypatch):
    """dagster dev would run on with its daemon and no webserver; the command says why instead."""
    import os
    import socket

    from click.testing import CliRunner

    from defake_pipeline.cli import main

    def not_started(*args):
        raise AssertionError(f"dagster dev was started: {args}")

    # Should the check fail, the command would replace this test's process with dagster dev.
    monkeypatch.setattr(os, "execv", not_started)
    monkeypatch.chdir(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(main, ["ui", "--port", str(port)], env={"DAGSTER_HOME": str(tmp_path / "dh")})
    assert result.exit_code == 2
    line = f"error: 127.0.0.1:{port} cannot be served (Address already in use); choose another --port\n"
    assert result.output == line


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DEFAKE_SENSOR_INTERVAL_S", "abc"),
        ("DEFAKE_PARTITIONS_PER_RUN", "0"),
        ("DEFAKE_NIGHTLY_CRON", "61 3 * * *"),  # read where the schedule is defined
    ],
)
def test_a_variable_the_product_cannot_use_is_one_line_naming_it(variable, value, tmp_path):
    """The command runs as a user starts it (the schedule's cron is read when the definitions are
    imported), so it is a process of its own."""
    demo_dataset(tmp_path)
    env = {**os.environ, variable: value, "DEFAKE_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dh")}
    mllmdf = str(Path(sys.executable).with_name("mllmdf"))
    proc = subprocess.run([mllmdf, "materialize", "-m", "canny"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: environment variable {variable}: "), proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_key_read_with_its_line_ending_is_taken_without_it_and_one_with_a_break_inside_is_one_line(
    chat_server, tmp_path, monkeypatch
):
    """A key from a .env file saved with CRLF line endings ends in "\\r": every image was an error
    row ("Forbidden control character detected in headers"). Around the key, whitespace is no part
    of it; a control character inside it is one line that does not show the key."""
    from click.testing import CliRunner

    from defake_pipeline.cli import main

    chat_server.state.api_key = "sk-proj-Abc123"
    image = str(Path(__file__).parents[1] / "demo" / "real" / "coffee.jpg")
    env = {"DEFAKE_HOME": str(tmp_path / "home"), "OPENAI_BASE_URL": chat_server.base_url}
    monkeypatch.chdir(tmp_path)
    ran = CliRunner().invoke(
        main, ["classify", image, "-m", "gpt4o"], env={**env, "OPENAI_API_KEY": "sk-proj-Abc123\r\n"}
    )
    assert ran.exit_code == 0 and ran.stdout.strip() in ("real", "fake") and chat_server.state.n_chat == 1, ran.output
    ran = CliRunner().invoke(
        main, ["classify", image, "-m", "gpt4o"], env={**env, "OPENAI_API_KEY": "sk-proj\n-Abc123"}
    )
    assert ran.exit_code == 2 and "sk-proj" not in ran.output and chat_server.state.n_chat == 1
    assert ran.output.strip().splitlines()[-1] == (
        "error: environment variable OPENAI_API_KEY: holds a control character (a line break?); a key has none"
    )


def test_a_dagster_home_given_as_a_url_is_one_line_not_a_folder_named_after_it(tmp_path, monkeypatch):
    """DEFAKE_HOME may be an s3:// URL; DAGSTER_HOME is the instance's folder, whose dagster.yaml
    names where its storage is. Taken as a folder, ``s3://bucket/dh`` made ./s3:/bucket/dh and
    the command ran on that, saying nothing."""
    from click.testing import CliRunner

    from defake_pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    env = {"DAGSTER_HOME": "s3://bucket/dh", "DEFAKE_HOME": str(tmp_path / "home")}
    result = CliRunner().invoke(main, ["materialize", "-m", "canny"], env=env)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: environment variable DAGSTER_HOME: "), result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "s3:").exists()

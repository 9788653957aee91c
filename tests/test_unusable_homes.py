"""A home the commands cannot write (a file where its folder should be, a full device) is one
line naming it and the cause, never a traceback; answers stored before are kept."""

import dagster as dg
import pytest
from click.testing import CliRunner

from conftest import REPO, mounted_tmpfs
from defake_pipeline.cli import main

DEMO = REPO / "demo"
COMMANDS = {
    "classify": ["classify", str(DEMO / "real" / "astronaut.jpg"), "-m", "canny"],
    "infer": ["infer", "-m", "canny", "--real_dir", str(DEMO / "real"), "--fake_dir", str(DEMO / "fake")],
    "materialize": ["materialize", "-m", "canny"],
}


def last_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output.strip().splitlines()[-1]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_defake_home_that_is_a_file_is_one_line(tmp_path, command):
    home = tmp_path / "home"
    home.write_text("not a folder")
    env = {"DEFAKE_HOME": str(home), "DAGSTER_HOME": str(tmp_path / "dagster")}
    line = last_error(CliRunner().invoke(main, COMMANDS[command], env=env))
    assert line.startswith(f"error: cannot make {home}/") and "is a file, not a folder" in line, line


@pytest.mark.parametrize("home", ["a file", "ftp://host/home"])
def test_materialize_names_an_unusable_home_before_it_starts_any_run(tmp_path, home):
    """The command's whole output is the one line: no run is recorded as failed, and none of
    Dagster's step-failure logs reach the terminal."""
    if home == "a file":
        home = str(tmp_path / "home")
        (tmp_path / "home").write_text("not a folder")
    env = {"DEFAKE_HOME": home, "DAGSTER_HOME": str(tmp_path / "dagster")}
    result = CliRunner().invoke(main, COMMANDS["materialize"], env=env)
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith("error: ") and "dagster" not in result.output.lower(), result.output
    (tmp_path / "dagster").mkdir(exist_ok=True)
    assert dg.DagsterInstance.from_config(str(tmp_path / "dagster")).get_runs() == []


def test_a_dagster_home_that_is_a_file_is_one_line(tmp_path):
    dagster_home = tmp_path / "dagster"
    dagster_home.write_text("not a folder")
    env = {"DEFAKE_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(dagster_home)}
    line = last_error(CliRunner().invoke(main, COMMANDS["materialize"], env=env))
    assert line.startswith(f"error: cannot make the folder {dagster_home}") and "a file of that name" in line, line


@pytest.fixture
def full_folder(tmp_path):
    with mounted_tmpfs(tmp_path / "full", "size=1m") as folder:
        _fill(folder)
        yield folder


@pytest.mark.parametrize("command", COMMANDS)
def test_a_full_device_is_one_line(full_folder, tmp_path, command):
    env = {"DEFAKE_HOME": str(full_folder / "home"), "DAGSTER_HOME": str(tmp_path / "dagster")}
    line = last_error(CliRunner().invoke(main, COMMANDS[command], env=env))
    assert line.startswith("error: ") and ("disk is full" in line or "no space left" in line.lower()), line


def _fill(folder) -> None:
    with open(folder / "filler", "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 512)
        except OSError:
            pass


def test_models_add_on_a_full_device_keeps_models_toml_whole(tmp_path, chat_server):
    """models.toml is the user's own file: a write the device cannot finish leaves it as it was,
    never cut short. Its text ends a few bytes short of a page, so the name added needs a page
    the full device does not have."""
    with mounted_tmpfs(tmp_path / "full", "size=1m") as folder:
        project = folder / "project"
        (project / "datasets").mkdir(parents=True)
        text = f'registered = ["canny"]\n[models.mine]\npreset = "vllm"\nbase_url = "{chat_server.base_url}"\n'
        text += "#" * (4090 - len(text)) + "\n"
        (project / "models.toml").write_text(text)
        _fill(folder)
        env = {
            "DEFAKE_HOME": str(tmp_path / "home"),
            "DAGSTER_HOME": str(tmp_path / "dagster"),
            "DEFAKE_PROJECT": str(project),
        }
        result = CliRunner().invoke(main, ["models", "add", "mine"], env=env)
        assert result.exit_code == 2, result.output
        assert "no space left" in result.output.strip().splitlines()[-1], result.output
        assert (project / "models.toml").read_text() == text

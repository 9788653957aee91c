"""The environment is read in one place, settings.py; empty variables count as unset."""

from pathlib import Path

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
    assert "dagster dev -h 127.0.0.1 -p 3123 " in plan.stdout, plan.stdout

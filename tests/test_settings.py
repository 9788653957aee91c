"""The environment is read in one place, settings.py; empty variables count as unset."""

from pathlib import Path

from defake_pipeline.settings import load_settings


def test_empty_variables_count_as_unset_and_the_key_stays_secret(monkeypatch):
    monkeypatch.setenv("DEFAKE_HOME", "")
    monkeypatch.setenv("BASE_URL", "")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    settings = load_settings()
    assert settings.BASE_URL is None and settings.DEFAKE_HOME.name == "outputs"
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

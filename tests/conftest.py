from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from defake_pipeline.datasets.layouts import get_dataset
from defake_pipeline.datasets.manifest import build_manifest, jobs_from_manifest
from defake_pipeline.testing.chat_server import ChatServer, ServerState

# Checkpoints the self-hosted presets take (``serves`` in presets.toml), for the test server to serve.
QWEN2VL_ID = "Qwen/Qwen2-VL-7B-Instruct"
INTERNVL3_ID = "OpenGVLab/InternVL3-8B"
LLAVACOT_ID = "Xkev/Llama-3.2V-11B-cot"

# A password planted in every URL and config that takes one: no output, file, log or table may hold it.
PLANTED_PASSWORD = "pw-PLANTED-5f3e9a"

REPO = Path(__file__).resolve().parents[1]
UPSTREAM = REPO.parent / "shared" / "upstream"


# The modules that keep a worker longest after the live ones (each spawns CLI runs or Dagster
# runs by the dozen), longest first: started early, they do not leave one worker busy at the end
# while the others wait.
LONG_MODULES = (
    "test_faults_and_secrets.py",
    "test_orchestration.py",
    "test_dagster_pipeline.py",
    "test_seed_cli.py",
    "test_hostile_files.py",
    "test_object_store.py",
)


def pytest_collection_modifyitems(config, items) -> None:
    """The live and browser modules first, so that under ``make test``'s workers (each takes a
    module whole, in this order) the long waits on a daemon start at once; then the long modules,
    and the short tests fill in around them; otherwise in the order collected."""

    def rank(item: pytest.Item) -> tuple[int, int]:
        if item.get_closest_marker("live") or item.get_closest_marker("browser"):
            return (0, 0)
        name = item.path.name
        return (1, LONG_MODULES.index(name)) if name in LONG_MODULES else (2, 0)

    items.sort(key=rank)


def real_fake_dataset(project: Path, name: str, n_per_class: int, folder: str | None = None) -> Path:
    """A ``real_fake`` dataset of distinct small PNGs under ``project/<folder or name>``, defined
    as ``project/datasets/<name>.toml``; returns its root."""
    from PIL import Image

    root = project / (folder or name)
    for label, green in (("real", 40), ("fake", 210)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            Image.new("RGB", (16, 16), ((i * 37) % 256, green, i // 7)).save(root / label / f"{i}.png")
    (project / "datasets").mkdir(exist_ok=True)
    (project / "datasets" / f"{name}.toml").write_text(f'layout = "real_fake"\nroot = "../{root.name}"\n')
    return root


def demo_dataset(project: Path) -> None:
    """Define the demo dataset shipped beside the package in ``project``: a project has only
    its own datasets."""
    (project / "datasets").mkdir(exist_ok=True)
    (project / "datasets" / "demo.toml").write_text(f'layout = "real_fake"\nroot = "{REPO / "demo"}"\n')


def project_dagster_home(tmp_path: Path) -> Path:
    """A fresh DAGSTER_HOME holding the project's dagster.yaml, as the Makefile sets one up."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "instance" / "dagster.yaml", home / "dagster.yaml")
    return home


def materialize_manifest(instance, project: Path, defake_home: Path | str, monkeypatch) -> None:
    """The image manifest of ``project`` into ``defake_home`` on ``instance``, in this process:
    set-up for tests whose point is the processes started after it, each of which costs seconds
    of CPU to import the definitions."""
    import dagster as dg

    from defake_pipeline.definitions import defs

    monkeypatch.chdir(project)
    monkeypatch.setenv("DEFAKE_HOME", str(defake_home))
    monkeypatch.delenv("DEFAKE_PROJECT", raising=False)
    dg.materialize([defs.get_assets_def("image_manifest")], instance=instance, resources=defs.resources)


def upstream_or_skip(*parts: str) -> Path:
    path = UPSTREAM.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference data {path} is absent (../shared/upstream is not beside this checkout)")
    return path


@pytest.fixture
def chat_server():
    """A real OpenAI-compatible HTTP server on 127.0.0.1; tests reach into .state to script it."""
    with ChatServer(ServerState()) as server:
        yield server


@pytest.fixture
def defake_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "defake_home"
    monkeypatch.setenv("DEFAKE_HOME", str(home))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    return home


@pytest.fixture(scope="session")
def demo_manifest():
    return build_manifest(get_dataset("demo"))


@pytest.fixture
def demo_jobs(demo_manifest):
    return list(jobs_from_manifest(demo_manifest))


@pytest.fixture
def vllm_endpoint(chat_server, defake_home, monkeypatch):
    """The ``vllm`` preset answered by the test server: a chat model for tests of model × prompt
    partitions (the Canny baseline reads no prompt, so it has none)."""
    monkeypatch.setenv("BASE_URL", chat_server.base_url)
    return chat_server


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL server (``initdb`` in a temporary folder), one for each test module."""
    from defake_pipeline.testing.postgres import PostgresServer

    with PostgresServer(PLANTED_PASSWORD) as server:
        yield server


def assert_no_password_under(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert PLANTED_PASSWORD.encode() not in path.read_bytes(), path


def assert_no_password_in_database(url: str) -> None:
    """No row of any table in the database at ``url`` holds the planted password."""
    import psycopg2

    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema='public'")
        tables = [row[0] for row in cur.fetchall()]
        assert tables
        for table in tables:
            cur.execute(f'SELECT count(*) FROM "{table}" t WHERE t::text LIKE %s', (f"%{PLANTED_PASSWORD}%",))
            assert cur.fetchone()[0] == 0, table
    conn.close()


@pytest.fixture(scope="module")
def s3():
    """A real S3-compatible server (moto's) with one bucket; its secret key is the planted password."""
    from defake_pipeline.testing.object_store import S3Server

    with S3Server(PLANTED_PASSWORD) as server:
        yield server


@contextmanager
def mounted_tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``folder`` with ``options`` (the test is skipped where that needs the
    root this machine's tests run as). Unmounted lazily: a command run in process keeps its log
    file open on it until the test process ends."""
    folder.mkdir(exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)]).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)

"""deploy/ cannot run here (no container runtime): its files are checked against what the
project reads, and against the dagster.yaml the tested set-up uses."""

from __future__ import annotations

import json
import re

import yaml
from celery_deployment import CODE_SERVER_COMMAND, WORKER_COMMAND

from conftest import REPO
from defake_pipeline.settings import Settings

DEPLOY = REPO / "deploy"
# Read by libraries, not by the project's code: boto/s3fs, Dagster itself, Python, the Dagster
# chart's own dagster.yaml (its Postgres password), and the store and database images.
READ_ELSEWHERE = {
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "DAGSTER_HOME",
    "PYTHONPATH",
    "DAGSTER_PG_PASSWORD",
}
IMAGE_VARIABLES = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}


def _instance_env_refs(node) -> set[str]:
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {node["env"]}
        return set().union(*(_instance_env_refs(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_instance_env_refs(v) for v in node)) if node else set()
    return set()


SHIPPED = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
CELERY_CONFIG = (DEPLOY / "celery" / "dagster_celery_config.py").read_text()
READ = (
    set(Settings.model_fields)
    | _instance_env_refs(SHIPPED)
    | set(re.findall(r"os\.environ(?:\.get\(|\[)\"(\w+)\"", CELERY_CONFIG))
    | READ_ELSEWHERE
)


def _compose_env() -> set[str]:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    names = set(compose["x-defake-env"])
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        if name in ("defake_postgresql", "defake_s3"):
            assert set(env) <= IMAGE_VARIABLES, name
        elif isinstance(env, dict):
            names |= set(env)
    return names


def _manifest_env(node) -> set[str]:
    """Names of every ``env: [{name: …}]`` entry in a Kubernetes manifest or Helm values."""
    found = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                found |= {item["name"] for item in value}
            else:
                found |= _manifest_env(value)
    elif isinstance(node, list):
        for item in node:
            found |= _manifest_env(item)
    return found


def test_every_variable_the_deployment_sets_is_one_the_project_reads():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    env_block = re.search(r"^ENV (.*?)(?=^\S|\Z)", dockerfile, re.M | re.S)
    assert env_block
    dockerfile_env = set(re.findall(r"(\w+)=", env_block.group(1)))
    helm_values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    workers = yaml.safe_load((DEPLOY / "helm" / "celery-workers.yaml").read_text())
    for where, names in {
        "Dockerfile": dockerfile_env,
        "docker-compose.yml": _compose_env(),
        "helm/values.yaml": _manifest_env(helm_values),
        "helm/celery-workers.yaml": _manifest_env(workers),
    }.items():
        assert names, where
        assert names <= READ, f"{where} sets variables nothing reads: {sorted(names - READ)}"
    # And every variable the shipped dagster.yaml needs is set by compose and by the Dockerfile
    # or compose together.
    assert _instance_env_refs(SHIPPED) <= _compose_env() | dockerfile_env


def test_the_images_and_the_chart_carry_the_tested_dagster_yaml():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "COPY deploy/dagster.yaml /opt/dagster/dagster_home/dagster.yaml" in dockerfile
    assert "ENV DAGSTER_HOME=/opt/dagster/dagster_home" in dockerfile
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    custom = values["runLauncher"]["config"]["customRunLauncher"]
    assert {"module": custom["module"], "class": custom["class"], "config": custom["config"]} == SHIPPED["run_launcher"]
    assert values["computeLogManager"]["type"] == SHIPPED["compute_logs"]["class"]
    monitoring = values["dagsterDaemon"]["runMonitoring"]
    assert {re.sub(r"([A-Z])", r"_\1", k).lower(): v for k, v in monitoring.items()} == SHIPPED["run_monitoring"]
    assert values["additionalInstanceConfig"]["run_retries"] == SHIPPED["run_retries"]
    # The daemon and webserver load the run launcher from the project's image.
    image = values["dagster-user-deployments"]["deployments"][0]["image"]
    assert values["dagsterDaemon"]["image"] == values["dagsterWebserver"]["image"] == image
    assert values["postgresql"]["postgresqlScheme"] == SHIPPED["storage"]["postgres"]["postgres_db"]["scheme"]
    # The workers of both set-ups start as the tested ones do.
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    tested = WORKER_COMMAND
    assert compose["services"]["defake_worker"]["entrypoint"] == tested
    workers = yaml.safe_load((DEPLOY / "helm" / "celery-workers.yaml").read_text())
    assert workers["spec"]["template"]["spec"]["containers"][0]["command"] == tested
    # And the code server the tested daemon and commands reach is the image's, on another address.
    command = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
    assert [
        a for i, a in enumerate(command) if a not in ("-h", "-p") and command[i - 1] not in ("-h", "-p")
    ] == CODE_SERVER_COMMAND

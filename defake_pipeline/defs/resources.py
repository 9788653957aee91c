"""Resources: where outputs go, and how to reach model endpoints. Secrets come in through EnvVar."""

import os

import dagster as dg

from defake_pipeline.core.gate import GateThresholds
from defake_pipeline.core.models import ModelSpec, model_by_key
from defake_pipeline.core.paths import HomeLayout


class DefakeStore(dg.ConfigurableResource):
    """The DEFAKE_HOME folder: manifests, prediction partitions, the DuckDB warehouse, reports."""

    home: str | None = None

    def layout(self) -> HomeLayout:
        return HomeLayout(self.home)


class ModelEndpoint(dg.ConfigurableResource):
    """Credentials and URLs for chat endpoints; unset fields fall back to each preset's defaults."""

    api_key: str | None = None
    base_url: str | None = None  # self-hosted presets (vLLM)
    openai_base_url: str | None = None  # OpenAI presets

    def spec(self, model: ModelSpec | str) -> ModelSpec:
        """The spec with this resource's URLs filled in (``model``: a spec, or a partition key)."""
        spec = model if isinstance(model, ModelSpec) else model_by_key(model)
        override = self.openai_base_url if spec.backend == "openai" else self.base_url
        if override and spec.backend != "baseline" and not spec.base_url:
            spec = spec.model_copy(update={"base_url": override})
        return spec


class QualityGate(dg.ConfigurableResource):
    """Thresholds of the blocking checks on each predictions partition.

    A partition over either rate fails its check, and the warehouse marks it failed in
    ``partition_gate``: it gets no report and no place in any ranking or comparison, so a
    broken endpoint or a prompt the model cannot answer never reaches the leaderboard.
    """

    max_error_rate: float = GateThresholds.max_error_rate
    max_unknown_rate: float = GateThresholds.max_unknown_rate

    def thresholds(self) -> GateThresholds:
        return GateThresholds(self.max_error_rate, self.max_unknown_rate)


def _env_or_none(name: str) -> dg.EnvVar | None:
    # EnvVar fails a run when its variable is unset; baselines need no key, so an unset
    # variable leaves the field empty instead.
    return dg.EnvVar(name) if os.environ.get(name) else None


def default_resources() -> dict[str, dg.ConfigurableResource]:
    return {
        "store": DefakeStore(home=_env_or_none("DEFAKE_HOME")),
        "endpoint": ModelEndpoint(
            api_key=_env_or_none("OPENAI_API_KEY"),
            base_url=_env_or_none("BASE_URL"),
            openai_base_url=_env_or_none("OPENAI_BASE_URL"),
        ),
        "quality": QualityGate(),
    }

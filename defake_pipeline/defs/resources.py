"""Resources: where outputs go, how to reach model endpoints, and the quality gate's thresholds."""

import dagster as dg

from defake_pipeline.endpoints.registry import ModelSpec, model_by_key
from defake_pipeline.settings import load_settings
from defake_pipeline.warehouse.gate import GateThresholds
from defake_pipeline.warehouse.layout import HomeLayout


class DefakeHomeFolder(dg.ConfigurableResource):
    """The DEFAKE_HOME folder: manifests, prediction partitions, the DuckDB warehouse, reports."""

    home: str | None = None  # None: DEFAKE_HOME at run time

    def layout(self) -> HomeLayout:
        return HomeLayout(self.home)


class ModelEndpoint(dg.ConfigurableResource):
    """Credentials and URLs for chat endpoints. Unset fields are read from the environment when
    a run starts (settings.py), so no secret is ever part of a run's config."""

    api_key: str | None = None
    base_url: str | None = None  # self-hosted presets (vLLM)
    openai_base_url: str | None = None  # OpenAI presets

    def key(self) -> str | None:
        return self.api_key or load_settings().api_key

    def spec(self, model: ModelSpec | str) -> ModelSpec:
        """The spec with the endpoint URLs filled in (``model``: a spec, or a partition key)."""
        spec = model if isinstance(model, ModelSpec) else model_by_key(model)
        env = load_settings()
        return spec.with_endpoint_urls(self.base_url or env.BASE_URL, self.openai_base_url or env.OPENAI_BASE_URL)


class QualityGate(dg.ConfigurableResource):
    """Thresholds of the quality checks on each predictions partition (not blocking).

    A partition over either rate fails its check, and the warehouse marks it failed in
    ``partition_gate``: it gets no report and no place in any ranking or comparison, so a
    broken endpoint or a prompt the model cannot answer never reaches the leaderboard.
    """

    max_error_rate: float = GateThresholds.max_error_rate
    max_unknown_rate: float = GateThresholds.max_unknown_rate

    def thresholds(self) -> GateThresholds:
        return GateThresholds(self.max_error_rate, self.max_unknown_rate)


def default_resources() -> dict[str, dg.ConfigurableResource]:
    return {
        "store": DefakeHomeFolder(),
        "endpoint": ModelEndpoint(),
        "quality": QualityGate(),
    }


resources = dg.Definitions(resources=default_resources())

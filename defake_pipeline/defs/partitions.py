"""Partitions of the evaluation: model × prompt, both dynamic, keyed by slugs."""

import dagster as dg

model_partitions = dg.DynamicPartitionsDefinition(name="model")
prompt_partitions = dg.DynamicPartitionsDefinition(name="prompt")
model_prompt_partitions = dg.MultiPartitionsDefinition({"model": model_partitions, "prompt": prompt_partitions})


def partition_key(model: str, prompt: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"model": model, "prompt": prompt})


def split_partition_key(key: str) -> tuple[str, str]:
    """``(model, prompt)`` of a ``model|prompt`` key."""
    dims = model_prompt_partitions.get_partition_key_from_str(key).keys_by_dimension
    return dims["model"], dims["prompt"]


def register_partitions(instance: dg.DagsterInstance, models: list[str], prompts: list[str]) -> None:
    """Add any model and prompt keys the instance does not have yet."""
    for definition, keys in ((model_partitions, models), (prompt_partitions, prompts)):
        existing = set(instance.get_dynamic_partitions(definition.name))
        new = [k for k in keys if k not in existing]
        if new:
            instance.add_dynamic_partitions(definition.name, new)


def registered_pairs(instance: dg.DagsterInstance) -> list[tuple[str, str]]:
    """Every model × prompt the instance has partitions for."""
    models = instance.get_dynamic_partitions(model_partitions.name)
    prompts = instance.get_dynamic_partitions(prompt_partitions.name)
    return [(m, p) for m in models for p in prompts]

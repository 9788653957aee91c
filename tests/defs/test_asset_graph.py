"""The asset graph as a snapshot: a change to keys, dependencies, partitions, checks, automation
conditions, jobs, sensors or schedules is a visible diff of asset_graph.json.

After an intended change: UPDATE_SNAPSHOT=1 .venv/bin/python -m pytest tests/defs/test_asset_graph.py
"""

import json
import os
from pathlib import Path

import dagster as dg

from defake_pipeline.definitions import defs

SNAPSHOT = Path(__file__).with_name("asset_graph.json")


def _partitions(partitions_def) -> object:
    if partitions_def is None:
        return None
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return {d.name: _partitions(d.partitions_def) for d in partitions_def.partitions_defs}
    if isinstance(partitions_def, dg.DynamicPartitionsDefinition):
        return f"dynamic:{partitions_def.name}"
    return type(partitions_def).__name__


def graph_snapshot() -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        condition = node.automation_condition
        assets[key.to_user_string()] = {
            "deps": sorted(p.to_user_string() for p in node.parent_keys),
            "partitions": _partitions(node.partitions_def),
            "checks": sorted(c.name for c in node.check_keys),
            "automation_condition": condition.get_label() if condition else None,
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "backfill_policy": str(node.backfill_policy.policy_type) if node.backfill_policy else None,
        }
    return {
        "assets": assets,
        "jobs": sorted(j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__")),
        "sensors": sorted(s.name for s in defs.sensors or []),
        "schedules": sorted(s.name for s in defs.schedules or []),
        "resources": sorted((defs.resources or {}).keys()),
    }


def test_the_asset_graph_matches_its_snapshot():
    current = json.dumps(graph_snapshot(), indent=2, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(current)
    assert SNAPSHOT.exists(), f"no snapshot yet: run with UPDATE_SNAPSHOT=1 to write {SNAPSHOT.name}"
    assert current == SNAPSHOT.read_text(), f"the asset graph changed; review the diff and rewrite {SNAPSHOT.name}"

"""Data-quality findings on a manifest (used by the asset checks; a partition's gate is warehouse/gate.py)."""

from __future__ import annotations

import json
import re

import pandas as pd

# Software names that mean an image came out of a generator.
_GENERATOR_SOFTWARE = re.compile(
    r"stable.?diffusion|automatic1111|comfyui|invokeai|novelai|midjourney|dall.?e|firefly|imagen|leonardo|"
    r"fooocus|flux|sdxl|runway|ideogram",
    re.IGNORECASE,
)
# Sampler names that generation UIs write into file names (such as A1111's default pattern).
_SAMPLER_IN_NAME = re.compile(r"DPM\+\+|Euler|Karras|DDIM|UniPC|LMS|Heun", re.IGNORECASE)
# PNG text chunks that only generation tools write.
_GENERATOR_KEYS = ("parameters", "prompt", "workflow")


def label_leaks(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images whose exact bytes appear with both labels (a train/test style leak between classes)."""
    hashed = manifest[manifest["sha256"].notna()]
    labels = hashed.groupby("sha256")["label"].nunique()
    leaked = labels[labels > 1].index
    return hashed[hashed["sha256"].isin(leaked)].sort_values(["sha256", "label"])


def unreadable(manifest: pd.DataFrame) -> pd.DataFrame:
    return manifest[manifest["probe_error"].notna()]


def generator_evidence(row) -> str | None:
    """Why an image looks generated from its metadata or name, or None."""
    provenance = json.loads(row.provenance) if isinstance(row.provenance, str) and row.provenance else {}
    for key in _GENERATOR_KEYS:
        if key in provenance:
            return f"PNG text chunk {key!r}"
    if provenance.get("c2pa"):
        return "C2PA manifest"
    for key in ("exif_software", "Software"):
        if _GENERATOR_SOFTWARE.search(provenance.get(key, "")):
            return f"{key} {provenance[key]!r}"
    if _SAMPLER_IN_NAME.search(str(row.rel_path)):
        return "a sampler name in the file name"
    return None


def generator_metadata_on_real(manifest: pd.DataFrame) -> list[tuple[str, str]]:
    """(path, evidence) for images labelled real whose metadata or name says a generator made them."""
    found = []
    for row in manifest[manifest["label"] == 1].itertuples(index=False):
        evidence = generator_evidence(row)
        if evidence:
            found.append((f"{row.dataset}/{row.rel_path}", evidence))
    return found

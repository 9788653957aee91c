"""Dataset definitions (``datasets/*.toml``) and the folder layouts they describe.

Layouts:
- ``real_fake``: ``root/real`` and ``root/fake`` (the seed's demo, WildFakeResampled);
- ``image_folders``: any ``real_dir`` and ``fake_dir`` (the seed's ImageFolders);
- ``generator_folders``: ``root/<generator>/**/0_real`` and ``1_fake`` (CNNDetection, AIGCDetectBenchmark);
- ``genimage``: ``root/<generator>/{train,val}/{nature,ai}`` (GenImage);
- ``csv``: a manifest CSV with ``path,label[,subset]``, paths relative to the CSV.
The subset (usually the generator) lands in the manifest and splits the metrics.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from defake_pipeline.datasets.walk import FoundImage, walk_images
from defake_pipeline.errors import DatasetError, validation_line
from defake_pipeline.imaging.perturb import Perturbation
from defake_pipeline.records import label_from_text
from defake_pipeline.settings import is_url, project_dirs, project_root
from defake_pipeline.storage import StoredPath, is_remote, read_project_file, relative_parts, stored_path
from defake_pipeline.text import slugify

Layout = Literal["real_fake", "image_folders", "generator_folders", "genimage", "csv"]
REAL, FAKE = 1, 0
# Images outside any generator subfolder; "all" is reserved for the whole-dataset metrics row.
DEFAULT_SUBSET = "default"
# The folder names that label the images below them, in the layouts that label by name.
LABEL_FOLDERS = {"generator_folders": ({"0_real"}, {"1_fake"}), "genimage": ({"nature"}, {"ai"})}


class DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    layout: Layout = "real_fake"
    # A folder (resolved against the definition's folder) or an object store URL (s3://…),
    # read from there by every worker: none needs a copy of the images.
    root: Path | str | None = None
    real_dir: Path | str | None = None
    fake_dir: Path | str | None = None
    csv: Path | None = None
    description: str = ""
    # Each makes a derived dataset, ``<name>~<perturbation>`` (see ``imaging/perturb.py``).
    perturbations: list[str] = []
    # Set on a derived dataset only: its base's key, and what is done to each of its images.
    base_key: str | None = None
    perturbation: str | None = None

    @field_validator("perturbations")
    @classmethod
    def _known_perturbations(cls, values: list[str]) -> list[str]:
        slugs = [Perturbation.parse(v).slug for v in values]
        twice = sorted({s for s in slugs if slugs.count(s) > 1})
        if twice:
            raise ValueError(f"perturbations are listed twice: {', '.join(twice)}")
        return values

    @field_validator("perturbation")
    @classmethod
    def _known_perturbation(cls, value: str | None) -> str | None:
        return None if value is None else Perturbation.parse(value).text

    @model_validator(mode="after")
    def _needs_paths(self) -> DatasetSpec:
        needed = {"image_folders": ("real_dir", "fake_dir"), "csv": ("csv",)}.get(self.layout, ("root",))
        missing = [f for f in needed if getattr(self, f) is None]
        if missing:
            raise ValueError(f"layout {self.layout!r} needs {' and '.join(missing)}")
        return self

    def path(self, field: Literal["root", "real_dir", "fake_dir", "csv"]) -> StoredPath:
        """A path the layout needs (the validator made sure it is set)."""
        value = getattr(self, field)
        if value is None:
            raise DatasetError(f"dataset {self.name!r}: layout {self.layout!r} needs {field}")
        return stored_path(value)

    @property
    def key(self) -> str:
        if self.base_key and self.perturbation:
            return f"{self.base_key}~{Perturbation.parse(self.perturbation).slug}"
        return slugify(self.name)

    def derived(self) -> list[DatasetSpec]:
        """The datasets its perturbations make: the same images, labels and subsets, perturbed."""
        out = []
        for text in self.perturbations:
            perturbation = Perturbation.parse(text)
            update = {"perturbations": [], "base_key": self.key, "perturbation": perturbation.text}
            out.append(self.model_copy(update={**update, "name": f"{self.name}~{perturbation.slug}"}))
        return out

    def path_roots(self) -> list[StoredPath]:
        """The folders a manifest row's ``rel_path`` is taken from."""
        if self.layout == "image_folders":
            return [self.path("real_dir"), self.path("fake_dir")]
        if self.layout == "csv":
            return [self.path("csv").parent]
        return [self.path("root")]

    def image_dirs(self) -> list[StoredPath]:
        """The folders the listing reads images from, at any depth; none for a CSV, which lists
        its images. The sensors' fingerprint walks these and no more: a root may hold other
        files, such as the thumbnails every run writes where DEFAKE_HOME lies under it."""
        if self.layout == "real_fake":
            return [self.path("root") / "real", self.path("root") / "fake"]
        if self.layout == "csv":
            return []
        return self.path_roots()


@dataclass(frozen=True)
class LabeledImage:
    path: StoredPath
    label: int
    subset: str


def load_dataset_spec(file: Path) -> DatasetSpec:
    """Read one definition; relative paths are taken from the definition file's folder."""
    try:
        raw = tomllib.loads(read_project_file(file, DatasetError))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise DatasetError(f"{file}: invalid TOML ({exc})") from None
    raw.setdefault("name", file.stem)
    for key in ("root", "real_dir", "fake_dir", "csv"):
        if key in raw and not (isinstance(raw[key], str) and is_url(raw[key]) and key != "csv"):
            raw[key] = (file.parent / raw[key]).resolve()
    try:
        return DatasetSpec.model_validate(raw)
    except ValidationError as exc:
        raise DatasetError(f"{file}: {validation_line(exc)}") from None


def dataset_specs() -> list[DatasetSpec]:
    """Every dataset defined under ``datasets/`` (the working directory's first; names are unique)."""
    specs: dict[str, DatasetSpec] = {}
    for folder in project_dirs("datasets"):
        own: dict[str, Path] = {}
        for file in sorted(folder.glob("*.toml")):
            spec = load_dataset_spec(file)
            if spec.key in own:
                raise DatasetError(f"{own[spec.key]} and {file} give one dataset key {spec.key!r}; rename one")
            own[spec.key] = file
            for each in (spec, *spec.derived()):
                specs.setdefault(each.key, each)
    return list(specs.values())


def defined_datasets() -> list[DatasetSpec]:
    """``dataset_specs``, or a DatasetError saying where to define one when there is none."""
    specs = dataset_specs()
    if not specs:
        folder = (project_root() or Path.cwd()) / "datasets"
        raise DatasetError(f"no dataset is defined: add one to {folder} as <name>.toml (layout and root; see README)")
    return specs


def get_dataset(name: str) -> DatasetSpec:
    for spec in dataset_specs():
        if spec.key == slugify(name) or spec.name == name:
            return spec
    known = ", ".join(s.name for s in dataset_specs()) or "none"
    raise DatasetError(f"unknown dataset {name!r}; datasets/ defines: {known}")


def images_below(spec: DatasetSpec, folder: StoredPath, notes: list[str] | None = None) -> Iterator[FoundImage]:
    """The walk of one of ``spec``'s image folders, which no symlink takes into a folder of the
    other label: the listing and the sensors' fingerprint both walk this way."""
    return walk_images(folder, notes, _crossing(spec, folder) if isinstance(folder, Path) else None)


def _crossing(spec: DatasetSpec, folder: Path) -> Callable[[Path], str | None]:
    """Where a folder or symlink below ``folder`` leads into a folder of the other label: it, or None."""
    if spec.layout in LABEL_FOLDERS:
        root = os.path.realpath(folder)

        def into_other_label_folder(link: Path) -> str | None:
            target = os.path.realpath(link)
            if not _within(target, root):
                return None
            here = _label_of(relative_parts(link, folder), spec.layout)
            there = _label_of(tuple(Path(target).relative_to(root).parts), spec.layout)
            return f"{target}, a folder of the other label" if None not in (here, there) and here != there else None

        return into_other_label_folder
    others = [os.path.realpath(str(o)) for o in spec.image_dirs() if o != folder and not is_remote(o)]

    def into_other_folder(link: Path) -> str | None:
        target = os.path.realpath(link)
        other = next((o for o in others if _within(target, o)), None)
        return None if other is None else f"{other}, the folder of the other label"

    return into_other_folder


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _label_of(folders: tuple[str, ...], layout: str) -> int | None:
    """The label the innermost label folder among ``folders`` gives, if any."""
    real_names, fake_names = LABEL_FOLDERS[layout]
    labels = [REAL if name in real_names else FAKE for name in folders if name in real_names | fake_names]
    return labels[-1] if labels else None


def _images_under(spec: DatasetSpec, folder: StoredPath, notes: list[str] | None) -> list[StoredPath]:
    # Broken and looping symlinks are kept: they become manifest rows with a probe error
    # rather than images that silently vanish.
    return sorted((found.path for found in images_below(spec, folder, notes)), key=str)


def _require_dir(spec_name: str, folder: StoredPath) -> StoredPath:
    if not folder.is_dir():
        raise DatasetError(f"dataset {spec_name!r}: folder {folder} does not exist")
    return folder


def _from_label_dirs(spec: DatasetSpec, notes: list[str] | None) -> list[LabeledImage]:
    real, fake = (_require_dir(spec.name, folder) for folder in spec.image_dirs())
    if not (is_remote(real) or is_remote(fake)):
        inner, outer = sorted((os.path.realpath(str(real)), os.path.realpath(str(fake))), key=len, reverse=True)
        if _within(inner, outer):
            raise DatasetError(f"dataset {spec.name!r}: {real} and {fake} overlap; each label needs its own folder")
    out = []
    for label, folder in ((REAL, real), (FAKE, fake)):
        for path in _images_under(spec, folder, notes):
            out.append(LabeledImage(path, label, _first_subfolder(folder, path)))
    return out


def _first_subfolder(folder: StoredPath, path: StoredPath) -> str:
    parts = relative_parts(path, folder)
    return parts[0] if len(parts) > 1 else DEFAULT_SUBSET


def list_images(spec: DatasetSpec, notes: list[str] | None = None) -> list[LabeledImage]:
    """Every labelled image of a dataset, in a stable order; what the walk skipped (a folder
    reached twice, one that cannot be listed) goes to ``notes``."""
    if spec.layout in ("real_fake", "image_folders"):
        return _from_label_dirs(spec, notes)
    if spec.layout == "csv":
        return _from_csv(spec)
    root = _require_dir(spec.name, spec.path("root"))
    out = []
    for path in _images_under(spec, root, notes):
        rel = relative_parts(path, root)
        label = _label_of(rel[:-1], spec.layout)
        if label is not None and len(rel) > 2:
            out.append(LabeledImage(path, label, rel[0]))
    return out


def require_regular_csv(spec: DatasetSpec) -> StoredPath:
    """The CSV of a ``csv`` dataset, which must be a regular file: a named pipe would block
    every reader, the sensor's included."""
    csv = spec.path("csv")
    if csv.exists() and not csv.is_file():
        raise DatasetError(f"{csv}: the dataset's CSV is not a regular file (a named pipe, device or folder)")
    return csv


def _from_csv(spec: DatasetSpec) -> list[LabeledImage]:
    import pandas as pd  # here, not at the top: listing folders (the common case) needs no pandas

    require_regular_csv(spec)
    try:
        table = pd.read_csv(spec.csv, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError) as exc:
        raise DatasetError(f"{spec.csv}: cannot read manifest CSV ({exc})") from None
    for column in ("path", "label"):
        if column not in table.columns:
            raise DatasetError(f"{spec.csv}: missing column {column!r} (expected path,label[,subset])")
    out = []
    for line, row in enumerate(table.itertuples(index=False), start=2):
        label = label_from_text(row.label)
        if label is None:
            raise DatasetError(f"{spec.csv}:{line}: label {row.label!r} is not real/fake/1/0")
        subset = getattr(row, "subset", "") or DEFAULT_SUBSET
        out.append(LabeledImage((spec.path("csv").parent / row.path).resolve(), label, subset))
    return out

"""Load a labelled face folder laid out like faces-dev (`Person/Person_NNNN.jpg` plus `pairs.tsv`)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class FaceSet:
    """Images sorted by path, identity labels, and verification pairs as indices into `paths`.

    Indices (not paths) so that scores computed once per image can be gathered for any pair list.
    """

    root: Path
    paths: list[Path]
    labels: np.ndarray  # (N,) int64, index into `names`
    names: list[str]  # identity name of each label
    pairs: np.ndarray  # (P, 2) int64, rows of pairs.tsv in file order
    same: np.ndarray  # (P,) bool


def data_root() -> Path:
    """Shared data folder: env `EDGE_FACE_DATA`, else `../shared/data` next to the repo (never in it)."""
    env = os.environ.get("EDGE_FACE_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def load_faceset(root: str | Path) -> FaceSet:
    """Read every `Person/*.jpg|png` under `root` and, if present, `pairs.tsv` (`left right same`)."""
    root = Path(root)
    paths = sorted(p for p in root.glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise FileNotFoundError(f"no Person/*.jpg|png images under {root}")
    names = sorted({p.parent.name for p in paths})
    label_of = {name: i for i, name in enumerate(names)}
    labels = np.array([label_of[p.parent.name] for p in paths], dtype=np.int64)

    pairs = np.zeros((0, 2), dtype=np.int64)
    same = np.zeros(0, dtype=bool)
    pairs_file = root / "pairs.tsv"
    if pairs_file.exists():
        index = {p.relative_to(root).as_posix(): i for i, p in enumerate(paths)}
        with pairs_file.open(newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        try:
            pairs = np.array([(index[r["left"]], index[r["right"]]) for r in rows], dtype=np.int64)
        except KeyError as e:
            raise ValueError(f"{pairs_file} names an image that is not under {root}: {e}") from None
        pairs = pairs.reshape(-1, 2)
        same = np.array([r["same"].strip() == "1" for r in rows], dtype=bool)
        if np.any((labels[pairs[:, 0]] == labels[pairs[:, 1]]) != same):
            raise ValueError(f"{pairs_file}: `same` disagrees with the folder names")
    return FaceSet(root=root, paths=paths, labels=labels, names=names, pairs=pairs, same=same)

"""Datasets are ``.npz`` files with ``x`` (samples first) and optionally ``y`` (integer labels)."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np

from tinymlops.errors import InvalidDatasetError
from tinymlops.spec.model_info import ModelInfo

ROLES = ("eval", "calibration")


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray
    y: np.ndarray | None

    @property
    def n(self) -> int:
        return int(self.x.shape[0])


def parse_npz(data: bytes, source: str = "dataset") -> Dataset:
    """Parse without pickles; every problem is an :class:`InvalidDatasetError` naming ``source``."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            keys = set(npz.files)
            if "x" not in keys:
                raise InvalidDatasetError(f"{source}: the .npz has no array named 'x' (found: {sorted(keys)})")
            unknown = keys - {"x", "y"}
            if unknown:
                raise InvalidDatasetError(f"{source}: unexpected array(s) {sorted(unknown)}; allowed: x, y")
            x = npz["x"]
            y = npz["y"] if "y" in keys else None
    except InvalidDatasetError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidDatasetError(f"{source}: not a readable .npz file ({exc})") from exc
    if x.ndim < 1 or x.shape[0] == 0:
        raise InvalidDatasetError(f"{source}: 'x' must hold at least one sample (shape {x.shape})")
    if x.dtype.kind not in "fiu":
        raise InvalidDatasetError(f"{source}: 'x' must be numeric, got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise InvalidDatasetError(f"{source}: 'x' contains NaN or infinite values")
    if y is not None:
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise InvalidDatasetError(
                f"{source}: 'y' must be one label per sample: x has {x.shape[0]} samples, y has shape {y.shape}"
            )
        if y.dtype.kind not in "iu":
            raise InvalidDatasetError(f"{source}: 'y' must hold integer class labels, got dtype {y.dtype}")
    return Dataset(x=x, y=y)


def check_matches(dataset: Dataset, info: ModelInfo, source: str = "dataset") -> None:
    """The samples must fit the model's single input (any symbolic dimension matches)."""
    if len(info.inputs) != 1:
        raise InvalidDatasetError(
            f"{source}: the model has {len(info.inputs)} inputs; datasets feed single-input models only"
        )
    spec = info.inputs[0]
    want = spec.shape[1:]
    got = dataset.x.shape[1:]
    ok = len(want) == len(got) and all(
        not isinstance(w, int) or w <= 0 or w == g for w, g in zip(want, got, strict=True)
    )
    if not ok:
        raise InvalidDatasetError(
            f"{source}: sample shape {tuple(got)} does not match the model input "
            f"'{spec.name}' {tuple(spec.shape)} (batch dimension first)"
        )

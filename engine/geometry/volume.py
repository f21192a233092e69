"""Label volumes from files: ``.npy`` or ``.tif``/``.tiff`` stacks, validated.

TIFF stacks are read as one page per z slice and transposed to the engine's axis
order (x, y, z); 2D images to (x, y).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssbx.engine.errors import ConfigError
from ssbx.engine.phases import LABEL_NAMES

MAX_LABEL = max(LABEL_NAMES)


def check_labels(labels):
    """Validate a label array (2D/3D, non-empty, integer-valued) and return it as integers."""
    arr = np.asarray(labels)
    if arr.ndim not in (2, 3):
        raise ConfigError(f"labels.ndim = {arr.ndim} (shape {arr.shape}); valid: 2 or 3")
    if arr.size == 0 or min(arr.shape) < 1:
        raise ConfigError(f"labels.shape = {arr.shape}; valid: every axis length >= 1")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ConfigError(
                f"labels dtype = {arr.dtype} with non-integer values; valid: integer labels "
                f"0..{MAX_LABEL}"
            )
    elif not np.issubdtype(arr.dtype, np.integer):
        raise ConfigError(f"labels dtype = {arr.dtype}; valid: integer labels 0..{MAX_LABEL}")
    lo, hi = arr.min(), arr.max()
    if lo < 0 or hi > MAX_LABEL:
        bad = np.unique(arr[(arr < 0) | (arr > MAX_LABEL)])[:5]
        raise ConfigError(
            f"labels contain unknown label value(s) {bad.tolist()}; valid range 0..{MAX_LABEL} "
            f"({', '.join(f'{k} {v}' for k, v in LABEL_NAMES.items())})"
        )
    return arr.astype(np.int64)


def load_labels(path):
    """Read a label volume from ``.npy`` or ``.tif``/``.tiff`` (see module docstring for
    the TIFF axis order). Raises ConfigError for a missing, unreadable or corrupt file
    or an unsupported extension; the labels themselves are validated by the solvers."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".npy", ".tif", ".tiff"):
        raise ConfigError(f"file = {str(p)!r}: unsupported extension {suffix!r}; valid: .npy, .tif, .tiff")
    if not p.is_file():
        raise ConfigError(f"file = {str(p)!r} does not exist or is not a file")
    if suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except Exception as err:  # corrupt header / truncated data / pickled objects
            raise ConfigError(f"file = {str(p)!r} is not a readable .npy array: {err}") from None
        return arr
    try:
        import tifffile
    except ModuleNotFoundError:
        raise ConfigError(
            f"file = {str(p)!r}: reading TIFF needs the 'tifffile' package (pip install tifffile)"
        ) from None
    try:
        with tifffile.TiffFile(p) as tif:
            samples = int(tif.pages[0].samplesperpixel) if len(tif.pages) else 1
        if samples > 1:  # colour images are not label volumes: refuse rather than read channels as slices
            raise ConfigError(f"file = {str(p)!r} is a {samples}-channel (colour) TIFF; a label volume is a "
                              "single-channel integer stack, one page per z slice")
        arr = np.asarray(tifffile.imread(p))
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(f"file = {str(p)!r} is not a readable TIFF: {err}") from None
    if arr.size == 0:
        raise ConfigError(f"file = {str(p)!r} is not a readable TIFF: it holds no image data")
    if arr.ndim in (2, 3):
        arr = arr.T  # (z, y, x) -> (x, y, z); (y, x) -> (x, y)
    return arr

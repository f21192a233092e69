"""XDMF sidecars: ``run.xdmf`` beside ``run.h5`` so ParaView opens a run file directly.

The sidecar is a small XML file (XDMF 2, read by ParaView's "XDMF Reader" and by VTK's
``vtkXdmfReader``) that holds no data: every array is an HDF5 reference
``run.h5:/fields/soc`` (file name relative to the sidecar, so the pair can be moved
together). Mapping (docs/paraview.md):

* one uniform grid, ``3DCoRectMesh`` (``2DCoRectMesh`` for 2D runs) with
  ``ORIGIN_DXDYDZ`` geometry: voxel size ``/geometry`` attr ``voxel_size_m`` (m), origin
  ``/geometry`` attr ``origin_m`` if present, else 0;
* a temporal collection with one grid per snapshot, ``Time`` = ``/fields/t_s`` (s);
* cell data at every time: each ``/fields/<name>`` (snapshot ``i`` as an HDF5 hyperslab)
  and every grid-shaped dataset of ``/geometry`` (``labels``, ``grain_id``);
* field data (ParaView: "Field Data") at every time: each ``/snapshots/<name>`` (the
  scalar statistics of that snapshot) and each ``/grains/<name>`` (one value per grain).

Axis convention. ssbx arrays are indexed ``[x, y, z]`` and stored in C order (z varies
fastest). XDMF lists dimensions slowest first and VTK puts the fastest axis on X, so
ParaView's axes (X, Y, Z) show ssbx (z, y, x): lengths and distances are right, the axes
are swapped (a mirror image). docs/paraview.md gives the Transform that restores ssbx's
axes. No data is copied or transposed.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np

from ssbx.engine.errors import ConfigError
from ssbx.engine.io.run_file import open_run_file

#: written into every sidecar; a file without it is not overwritten by a finishing run
MARKER = "ssbx_sidecar"


def sidecar_path(run_path: str | Path) -> Path:
    """The sidecar of a run file: same folder and stem, suffix ``.xdmf``."""
    return Path(run_path).with_suffix(".xdmf")


def is_ssbx_sidecar(path: str | Path) -> bool:
    """True if ``path`` is a sidecar ssbx wrote (its marker is in the first 4 kB)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return f'Name="{MARKER}"'.encode() in head


def _number_type(dtype: np.dtype) -> tuple[str, int]:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return "UChar", 1
    if dtype.kind == "f":
        return "Float", dtype.itemsize
    if dtype.kind == "i":
        return ("Char" if dtype.itemsize == 1 else "Int"), dtype.itemsize
    if dtype.kind == "u":
        return ("UChar" if dtype.itemsize == 1 else "UInt"), dtype.itemsize
    raise ValueError(f"no XDMF number type for {dtype}")


def _dims(shape) -> str:
    return " ".join(str(int(n)) for n in shape)


def _hdf_item(parent, ref: str, ds: h5py.Dataset) -> ET.Element:
    number, precision = _number_type(ds.dtype)
    item = ET.SubElement(parent, "DataItem", Dimensions=_dims(ds.shape), NumberType=number,
                         Precision=str(precision), Format="HDF")
    item.text = ref
    return item


def _slab(parent, ref: str, ds: h5py.Dataset, index: int) -> None:
    """Entry ``index`` along axis 0 of ``ds`` (the snapshot axis), as a HyperSlab DataItem."""
    rest = ds.shape[1:]
    ndim = ds.ndim
    slab = ET.SubElement(parent, "DataItem", ItemType="HyperSlab", Dimensions=_dims(rest) if rest else "1")
    sel = ET.SubElement(slab, "DataItem", Dimensions=f"3 {ndim}", Format="XML")
    start = [index] + [0] * (ndim - 1)
    stride = [1] * ndim
    count = [1] + list(rest)
    sel.text = " ".join(str(v) for v in start + stride + count)
    _hdf_item(slab, ref, ds)


def _attribute(grid, name: str, center: str) -> ET.Element:
    return ET.SubElement(grid, "Attribute", Name=name, AttributeType="Scalar", Center=center)


def build_xdmf(run_path: str | Path, h5_ref: str | None = None) -> str:
    """The XDMF text for the run file ``run_path``.

    ``h5_ref``: the file name written into the HDF5 references (default: the run file's
    name, i.e. a sidecar in the same folder).

    Raises:
        ConfigError: if the file is not an HDF5 file with the ssbx layout.
    """
    run_path = Path(run_path)
    h5_ref = h5_ref or run_path.name
    with open_run_file(run_path) as f:
        if "geometry" not in f or "labels" not in f["geometry"] or "fields" not in f:
            raise ConfigError(f"run file {str(run_path)!r} lacks /geometry/labels or /fields; not an ssbx run file")
        geo = f["geometry"]
        grid = tuple(geo["labels"].shape)
        h = float(geo.attrs["voxel_size_m"])
        origin = [float(v) for v in np.broadcast_to(geo.attrs.get("origin_m", 0.0), (len(grid),))]
        t_snap = f["fields/t_s"][()] if "t_s" in f["fields"] else np.zeros(0)

        root = ET.Element("Xdmf", Version="2.0")
        domain = ET.SubElement(root, "Domain")
        ET.SubElement(domain, "Information", Name=MARKER, Value=h5_ref)
        ET.SubElement(domain, "Information", Name="axes",
                      Value="ParaView X, Y, Z = ssbx z, y, x (arrays [x, y, z] in C order); see docs/paraview.md")
        series = ET.SubElement(domain, "Grid", Name="run", GridType="Collection", CollectionType="Temporal")

        static = [(name, ds) for name, ds in geo.items() if isinstance(ds, h5py.Dataset) and ds.shape == grid]
        fields = [(name, ds) for name, ds in f["fields"].items()
                  if isinstance(ds, h5py.Dataset) and name != "t_s" and tuple(ds.shape[1:]) == grid]
        stats = [(f"snapshots/{name}", name, ds) for name, ds in f.get("snapshots", {}).items()
                 if isinstance(ds, h5py.Dataset) and ds.ndim == 1]
        stats += [(f"grains/{name}", f"grain_{name}", ds) for name, ds in f.get("grains", {}).items()
                  if isinstance(ds, h5py.Dataset) and ds.ndim == 2]
        # a run killed inside a snapshot may have t_s one entry ahead of some fields
        times = list(t_snap) if len(t_snap) else [0.0]
        for i, t in enumerate(times):
            g = ET.SubElement(series, "Grid", Name=f"snapshot_{i}", GridType="Uniform")
            ET.SubElement(g, "Time", Value=repr(float(t)))
            three = len(grid) == 3
            ET.SubElement(g, "Topology", TopologyType="3DCoRectMesh" if three else "2DCoRectMesh",
                          Dimensions=_dims(n + 1 for n in grid))
            geometry = ET.SubElement(g, "Geometry", GeometryType="ORIGIN_DXDYDZ" if three else "ORIGIN_DXDY")
            ET.SubElement(geometry, "DataItem", Dimensions=str(len(grid)), Format="XML").text = \
                " ".join(repr(v) for v in origin)
            ET.SubElement(geometry, "DataItem", Dimensions=str(len(grid)), Format="XML").text = \
                " ".join(repr(h) for _ in grid)
            for name, ds in static:
                _hdf_item(_attribute(g, name, "Cell"), f"{h5_ref}:/geometry/{name}", ds)
            for name, ds in fields:
                if ds.shape[0] > i:
                    _slab(_attribute(g, name, "Cell"), f"{h5_ref}:/fields/{name}", ds, i)
            for path, name, ds in stats:
                if ds.shape[0] > i:
                    _slab(_attribute(g, name, "Grid"), f"{h5_ref}:/{path}", ds, i)
    ET.indent(root)
    header = '<?xml version="1.0" ?>\n<!DOCTYPE Xdmf SYSTEM "Xdmf.dtd" []>\n'
    return header + ET.tostring(root, encoding="unicode") + "\n"


def write_xdmf(run_path: str | Path, xdmf_path: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write the sidecar of ``run_path`` (default ``run.xdmf`` beside it) and return its path.

    Refuses (ConfigError) to replace an existing file unless ``overwrite``. The file is
    written to a temporary name and renamed, so a reader never sees half of it.
    """
    run_path = Path(run_path)
    xdmf_path = Path(xdmf_path) if xdmf_path is not None else sidecar_path(run_path)
    if xdmf_path.resolve() == run_path.resolve():
        raise ConfigError(f"xdmf output {str(xdmf_path)!r} is the run file itself; give a .xdmf name")
    if xdmf_path.exists() and not overwrite:
        raise ConfigError(f"output {xdmf_path} already exists; pass --overwrite to replace it, or choose another "
                          "--out")
    ref = os.path.relpath(run_path.resolve(), xdmf_path.resolve().parent)
    text = build_xdmf(run_path, h5_ref=Path(ref).as_posix())
    tmp = xdmf_path.with_name(xdmf_path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, xdmf_path)
    return xdmf_path


def write_sidecar(run_path: str | Path) -> Path | None:
    """The hook called when a run file is closed (engine.io.run_file.RunWriter.close).

    Writes ``run.xdmf`` unless a file that ssbx did not write is already there (then it
    warns and leaves it: ``ssbx run`` refuses such a file before the run unless
    ``--overwrite``). Never raises: a sidecar that cannot be written must not turn a
    finished run into a failed one; it warns instead (``ssbx xdmf RUN.h5`` writes it later).
    """
    path = sidecar_path(run_path)
    try:
        if path == Path(run_path):
            warnings.warn(f"the run file {run_path} itself ends in .xdmf, so it has no sidecar; write one with "
                          f"`ssbx xdmf {run_path} --out OTHER.xdmf`", stacklevel=2)
            return None
        if path.exists() and not is_ssbx_sidecar(path):
            warnings.warn(f"{path} exists and was not written by ssbx; left as it is (write the sidecar with "
                          f"`ssbx xdmf {run_path} --out OTHER.xdmf`)", stacklevel=2)
            return None
        return write_xdmf(run_path, path, overwrite=True)
    except Exception as err:  # noqa: BLE001 - reported, never raised (see docstring)
        warnings.warn(f"could not write the XDMF sidecar {path}: {type(err).__name__}: {err}", stacklevel=2)
        return None


def add_parser(sub) -> None:
    p = sub.add_parser("xdmf", help="write the ParaView (XDMF) sidecar of an existing run file",
                       description="Write RUN.xdmf beside RUN.h5 (or --out): a small XML file that makes "
                                   "ParaView open the run file's fields, labels and grain ids over every "
                                   "snapshot time. See docs/paraview.md.")
    p.add_argument("run_file", metavar="RUN.h5", help="an ssbx run file")
    p.add_argument("--out", "-o", default=None, help="sidecar path (default: the run file with .xdmf)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing sidecar")


def run(args: argparse.Namespace) -> int:
    """``ssbx xdmf RUN.h5``: exit 0 on success, 2 on invalid input."""
    from ssbx.engine.safe_files import check_writable_folder

    try:
        run_path = Path(args.run_file)
        if not run_path.is_file():
            raise ConfigError(f"run file {str(run_path)!r} does not exist")
        out = Path(args.out) if args.out else sidecar_path(run_path)
        check_writable_folder(out, "--out")
        path = write_xdmf(run_path, out, overwrite=args.overwrite)
    except ConfigError as err:
        print(f"ssbx xdmf: invalid input: {err}", file=sys.stderr)
        return 2
    print(f"ssbx xdmf: wrote {path}", file=sys.stderr)
    return 0

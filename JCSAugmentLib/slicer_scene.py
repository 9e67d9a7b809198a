"""The one module of JCSAugmentLib that talks to the MRML scene (3D Slicer).

Everything else in the library works on files; this module moves data between the scene and
the run folder:

* **geometry** -- Slicer's IJK-to-RAS matrix versus ITK's LPS ``origin / spacing / direction``
  (:func:`lps_geometry_from_ijk_to_ras`, :func:`ijk_to_ras_from_lps_geometry`).  This is the
  only place where the two conventions meet: the origin and the direction rows x and y change
  sign (``diag(-1, -1, 1)``); spacing is the length of each IJK-to-RAS column.  Numpy arrays
  from both worlds are ``(K, J, I)`` = ``(z, y, x)``.  Oblique, anisotropic and flipped grids
  are exact to rounding.
* **export** -- volume, label map and segmentation nodes to NRRD/NIfTI/MHA files that the engine
  reads (:func:`export_volume_node`, :func:`export_label_node`, :func:`export_cases`).  Files are
  written with SimpleITK from the voxel array and the node's own IJK-to-RAS (its local frame: a
  parent transform is not applied, just as Slicer's own storage node does); a label map is
  written on its image's grid.  A segmentation is turned into a label map on the image's grid by
  ``vtkSlicerSegmentationsModuleLogic``.
* **import** -- results back into the scene (:func:`load_label_map`,
  :func:`load_scalar_volume`, :func:`label_map_to_segmentation`): a result on its input's grid
  gets the input node's IJK-to-RAS exactly, its parent transform and its subject-hierarchy
  folder (study).
* **live views** -- preview volumes (:func:`update_preview_nodes`), a metrics table
  (:func:`metrics_table_node`) and curves in a plot chart (:func:`curve_plot_nodes`,
  :func:`update_curve_table`).  Nodes are found again by an attribute and reused; the scene is
  never cleared.

Every problem the user can fix raises :class:`SceneError` with one sentence naming the node.

``slicer`` and ``vtk`` are imported inside the functions only, so ``import JCSAugmentLib`` (and
this module) never loads them.  Outside the Slicer application (the ``slicer-core`` wheel) there
is no ``slicer.mrmlScene``: pass ``scene=`` (for instance :func:`headless_scene`).  Showing a
result as the label layer of the slice views (``slicer.util.setSliceViewerLayers``) needs
``slicer.app`` and is the module's job.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .image_files import GRID_TOLERANCE, IMAGE_EXTENSIONS, is_image_file

__all__ = [
    "SceneError",
    "GRID_TOLERANCE",
    "ATTRIBUTE",
    "lps_geometry_from_ijk_to_ras",
    "ijk_to_ras_from_lps_geometry",
    "node_ijk_to_ras",
    "node_lps_geometry",
    "grids_agree",
    "describe_grid",
    "headless_scene",
    "export_volume_node",
    "export_label_node",
    "export_cases",
    "load_label_map",
    "load_scalar_volume",
    "label_map_to_segmentation",
    "place_beside",
    "update_preview_nodes",
    "metrics_table_node",
    "curve_plot_nodes",
    "update_curve_table",
]


#: Node attribute that marks the nodes this module made (value: what the node is for).
ATTRIBUTE = "JCSAugment.role"

#: RAS <-> LPS: x and y change sign.
_FLIP = np.diag([-1.0, -1.0, 1.0])


#: Line colours of the curves (matplotlib's tab10).
_PALETTE = ((0.12, 0.47, 0.71), (1.0, 0.50, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16),
            (0.58, 0.40, 0.74), (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.50, 0.50, 0.50),
            (0.74, 0.74, 0.13), (0.09, 0.75, 0.81))


class SceneError(ValueError):
    """A problem with the scene's data that the user can fix; the message names the node."""


# ----------------------------------------------------------------------------- geometry

def _matrix(m: Any) -> np.ndarray:
    """A 4x4 float array from a numpy-like 4x4 or a ``vtkMatrix4x4``."""
    if hasattr(m, "GetElement"):
        return np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)], float)
    a = np.array(m, dtype=float)
    if a.shape != (4, 4):
        raise SceneError(f"expected a 4x4 IJK-to-RAS matrix, got shape {a.shape}")
    return a


def _vtk_matrix(a: np.ndarray):
    from vtkmodules.vtkCommonMath import vtkMatrix4x4
    m = vtkMatrix4x4()
    for i in range(4):
        for j in range(4):
            m.SetElement(i, j, float(a[i, j]))
    return m


def lps_geometry_from_ijk_to_ras(matrix: Any) -> Dict[str, Tuple[float, ...]]:
    """ITK/SimpleITK geometry (LPS) of a Slicer IJK-to-RAS matrix.

    Returns ``{"origin": (x, y, z), "spacing": (sx, sy, sz), "direction": 9 floats}`` in
    SimpleITK's order: ``direction`` is the row-major 3x3 matrix whose column ``i`` is the
    LPS direction of voxel axis ``i`` (I, J, K), ready for ``SetDirection``.
    """
    m = _matrix(matrix)
    if not np.all(np.isfinite(m)):
        raise SceneError("the IJK-to-RAS matrix has non-finite values")
    if not np.allclose(m[3], (0.0, 0.0, 0.0, 1.0)):
        raise SceneError(f"the IJK-to-RAS matrix is not affine (last row {m[3].tolist()})")
    columns = m[:3, :3]
    spacing = np.sqrt((columns ** 2).sum(axis=0))
    if np.any(spacing == 0):
        raise SceneError("the IJK-to-RAS matrix has a zero column (zero voxel spacing)")
    direction = _FLIP @ (columns / spacing)
    if abs(np.linalg.det(direction)) < 1e-6:
        raise SceneError("the IJK-to-RAS matrix is singular (two voxel axes are parallel)")
    origin = _FLIP @ m[:3, 3]
    # "+ 0.0" turns -0.0 into 0.0
    return {"origin": tuple(float(v) + 0.0 for v in origin),
            "spacing": tuple(float(v) for v in spacing),
            "direction": tuple(float(v) + 0.0 for v in direction.reshape(-1))}


def ijk_to_ras_from_lps_geometry(origin: Sequence[float], spacing: Sequence[float],
                                 direction: Sequence[float]) -> np.ndarray:
    """Slicer's IJK-to-RAS matrix (4x4 numpy) of an ITK/SimpleITK grid (LPS, x-y-z order)."""
    o = np.asarray(origin, float).reshape(3)
    s = np.asarray(spacing, float).reshape(3)
    d = np.asarray(direction, float).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = (_FLIP @ d) * s
    m[:3, 3] = _FLIP @ o
    return m + 0.0


def node_ijk_to_ras(volume_node) -> np.ndarray:
    """The IJK-to-RAS matrix of a volume node (4x4 numpy; the node's own frame)."""
    if volume_node is None:
        raise SceneError("no volume node given")
    from vtkmodules.vtkCommonMath import vtkMatrix4x4
    m = vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return _matrix(m)


def node_lps_geometry(volume_node) -> Dict[str, Tuple[float, ...]]:
    """:func:`lps_geometry_from_ijk_to_ras` of a volume node, from the origin, spacing and axis
    directions that MRML stores (no rounding through the composed matrix)."""
    if volume_node is None:
        raise SceneError("no volume node given")
    from vtkmodules.vtkCommonMath import vtkMatrix4x4
    m = vtkMatrix4x4()
    volume_node.GetIJKToRASDirectionMatrix(m)
    direction = _FLIP @ _matrix(m)[:3, :3]
    origin = _FLIP @ np.asarray(volume_node.GetOrigin(), float)
    spacing = np.asarray(volume_node.GetSpacing(), float)
    if np.any(spacing <= 0) or abs(np.linalg.det(direction)) < 1e-6:
        return lps_geometry_from_ijk_to_ras(node_ijk_to_ras(volume_node))
    return {"origin": tuple(float(v) + 0.0 for v in origin),
            "spacing": tuple(float(v) for v in spacing),
            "direction": tuple(float(v) + 0.0 for v in direction.reshape(-1))}


def _sitk_geometry_matrix(image) -> np.ndarray:
    return ijk_to_ras_from_lps_geometry(image.GetOrigin(), image.GetSpacing(),
                                        image.GetDirection())


def grids_agree(size_a: Sequence[int], ijk_to_ras_a: Any, size_b: Sequence[int],
                ijk_to_ras_b: Any, tolerance: float = GRID_TOLERANCE) -> bool:
    """Whether two grids (size I, J, K and IJK-to-RAS) are the same up to ``tolerance``.

    The rule is the engine's (io/volume.py): spacing relative, origin relative to the larger
    of its size and a voxel, direction cosines absolute.
    """
    if tuple(int(v) for v in size_a) != tuple(int(v) for v in size_b):
        return False
    a = lps_geometry_from_ijk_to_ras(ijk_to_ras_a)
    b = lps_geometry_from_ijk_to_ras(ijk_to_ras_b)
    sa, sb = np.asarray(a["spacing"]), np.asarray(b["spacing"])
    if np.any(np.abs(sa - sb) > tolerance * np.abs(sb)):
        return False
    scale = max(float(np.max(np.abs(sb))), 1e-12)
    oa, ob = np.asarray(a["origin"]), np.asarray(b["origin"])
    if np.any(np.abs(oa - ob) > tolerance * np.maximum(np.abs(ob), scale)):
        return False
    da, db = np.asarray(a["direction"]), np.asarray(b["direction"])
    return bool(np.all(np.abs(da - db) <= tolerance))


def _fmt(values: Iterable[float], sep: str = ", ") -> str:
    return sep.join(f"{float(v):.6g}" for v in values)


def describe_grid(size: Sequence[int], ijk_to_ras: Any) -> str:
    """One phrase for a grid in the user's terms (RAS): size, spacing, origin, axes."""
    m = _matrix(ijk_to_ras)
    spacing = np.sqrt((m[:3, :3] ** 2).sum(axis=0))
    axes = m[:3, :3] / np.where(spacing == 0, 1, spacing)
    return (f"{'x'.join(str(int(v)) for v in size)} voxels, spacing {_fmt(spacing, ' x ')} mm, "
            f"origin RAS ({_fmt(m[:3, 3])}), IJK axes in RAS "
            + " ".join(f"({_fmt(axes[:, k])})" for k in range(3)))


def _volume_size(node) -> Tuple[int, int, int]:
    image = node.GetImageData() if hasattr(node, "GetImageData") else None
    if image is None:
        return (0, 0, 0)
    return tuple(int(v) for v in image.GetDimensions())  # type: ignore[return-value]


# ----------------------------------------------------------------------------- scene basics

def _scene(scene=None, *nodes):
    """``scene``, else the scene of the first node that has one, else ``slicer.mrmlScene``."""
    if scene is not None:
        return scene
    for n in nodes:
        if n is not None and hasattr(n, "GetScene") and n.GetScene() is not None:
            return n.GetScene()
    import slicer
    s = getattr(slicer, "mrmlScene", None)
    if s is None:
        raise SceneError("no MRML scene: outside the Slicer application there is no "
                         "slicer.mrmlScene; pass scene= (e.g. slicer_scene.headless_scene())")
    return s


def headless_scene():
    """A new ``vtkMRMLScene`` set up as in the Slicer application, for plain Python
    (``slicer-core``) and tests: the segmentation logic (binary-labelmap and surface
    converters), the colour logic (default colour tables for label maps) and the
    subject-hierarchy logic are attached.  The logics live as long as the scene object."""
    import slicer
    scene = slicer.vtkMRMLScene()
    logics = []
    for name in ("vtkMRMLColorLogic", "vtkSlicerSegmentationsModuleLogic",
                 "vtkSlicerSubjectHierarchyModuleLogic"):
        cls = getattr(slicer, name, None)
        if cls is None:
            continue
        logic = cls()
        logic.SetMRMLScene(scene)
        logics.append(logic)
    scene._jcsaugment_logics = logics  # keep them alive with the scene
    return scene


def _node_name(node) -> str:
    try:
        return node.GetName() or node.GetID() or node.GetClassName()
    except Exception:  # pragma: no cover - not a MRML node
        return repr(node)


def _is(node, class_name: str) -> bool:
    return node is not None and hasattr(node, "IsA") and bool(node.IsA(class_name))


def _require_volume(node, what: str = "volume"):
    if node is None:
        raise SceneError(f"no {what} node given")
    if not _is(node, "vtkMRMLVolumeNode"):
        raise SceneError(f"{_node_name(node)!r} is a {node.GetClassName()}, not a {what} node")
    image = node.GetImageData()
    if image is None or min(_volume_size(node)) <= 0:
        raise SceneError(f"{what} {_node_name(node)!r} has no voxels (no image data)")
    components = image.GetNumberOfScalarComponents()
    if components != 1 or not _is(node, "vtkMRMLScalarVolumeNode"):
        kind = (f"has {components} components per voxel" if components != 1
                else f"is a {node.GetClassName()}, not a scalar volume")
        raise SceneError(f"{what} {_node_name(node)!r} {kind}; make one scalar volume per "
                         f"component first (e.g. with the 'Vector to Scalar Volume' module)")
    return node


def _node_array(node) -> np.ndarray:
    """A copy of a scalar volume node's voxels, ``(K, J, I)``."""
    from vtkmodules.util.numpy_support import vtk_to_numpy
    image = node.GetImageData()
    scalars = image.GetPointData().GetScalars() if image is not None else None
    if scalars is None:
        raise SceneError(f"volume {_node_name(node)!r} has no voxel values")
    dims = image.GetDimensions()
    return np.array(vtk_to_numpy(scalars)).reshape(dims[::-1])


def _vtk_ready(arr: np.ndarray, what: str) -> np.ndarray:
    """Voxel types VTK (and Slicer's views) handle: no bool, no 64-bit integers."""
    arr = np.asarray(arr)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if arr.dtype in (np.int64, np.uint64):
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        for t in (np.uint8, np.int16, np.int32):
            info = np.iinfo(t)
            if info.min <= lo and hi <= info.max:
                return arr.astype(t)
        raise SceneError(f"{what}: voxel values {lo}..{hi} do not fit a 32-bit integer")
    if arr.dtype == np.float16:
        return arr.astype(np.float32)
    return arr


def _set_node_array(node, arr: np.ndarray, ijk_to_ras: Optional[np.ndarray]) -> None:
    """Voxels ``(K, J, I)`` and geometry into a volume node (array deep-copied)."""
    from vtkmodules.util.numpy_support import get_vtk_array_type, numpy_to_vtk
    from vtkmodules.vtkCommonDataModel import vtkImageData
    arr = np.ascontiguousarray(arr)
    if arr.ndim != 3:
        raise SceneError(f"{_node_name(node)!r}: expected a 3D array (z, y, x), got shape "
                         f"{arr.shape}")
    if ijk_to_ras is not None:
        node.SetIJKToRASMatrix(_vtk_matrix(_matrix(ijk_to_ras)))
    image = node.GetImageData()
    if image is None:
        image = vtkImageData()
    image.SetDimensions(arr.shape[2], arr.shape[1], arr.shape[0])
    image.SetOrigin(0.0, 0.0, 0.0)
    image.SetSpacing(1.0, 1.0, 1.0)
    values = numpy_to_vtk(arr.reshape(-1), deep=True, array_type=get_vtk_array_type(arr.dtype))
    values.SetName("ImageScalars")
    image.GetPointData().SetScalars(values)
    image.Modified()
    if node.GetImageData() is not image:
        node.SetAndObserveImageData(image)
    node.StorableModified()
    node.Modified()
    import slicer
    node.InvokeEvent(slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, node)


def place_beside(node, reference_node) -> None:
    """Put ``node`` in the subject-hierarchy folder (study) that holds ``reference_node`` and
    under the same parent transform.  Does nothing where the scene has no subject hierarchy or
    the reference is not in it."""
    if reference_node is None or node is None:
        return
    if hasattr(reference_node, "GetTransformNodeID") and \
            hasattr(node, "SetAndObserveTransformNodeID"):
        node.SetAndObserveTransformNodeID(reference_node.GetTransformNodeID())
    scene = node.GetScene()
    if scene is None:
        return
    try:
        import slicer
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    except Exception:  # pragma: no cover - no subject hierarchy in this build
        return
    if sh is None:
        return
    invalid = getattr(sh, "GetInvalidItemID", lambda: 0)()
    ref_item = sh.GetItemByDataNode(reference_node)
    if ref_item == invalid:
        return
    parent = sh.GetItemParent(ref_item)
    item = sh.GetItemByDataNode(node)
    if item == invalid:
        sh.CreateItem(parent, node)
    else:
        sh.SetItemParent(item, parent)


# ----------------------------------------------------------------------------- writing

def _check_path(path: Union[str, "os.PathLike[str]"]) -> str:
    path = os.fspath(path)
    if not is_image_file(path):
        raise SceneError(f"{path}: unsupported file type; use one of "
                         f"{', '.join(IMAGE_EXTENSIONS)}")
    return os.path.abspath(path)


def _write(arr: np.ndarray, g: Mapping[str, Sequence[float]], path: str) -> str:
    """Write voxels ``(K, J, I)`` with an LPS geometry (see :func:`node_lps_geometry`)."""
    import SimpleITK as sitk
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    image.SetOrigin(g["origin"])
    image.SetSpacing(g["spacing"])
    image.SetDirection(g["direction"])
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    lower = path.lower()
    # single-file formats: write then rename, so a crash never leaves a half-written file under
    # the final name (.nhdr / .mhd name their data file inside: written in place)
    ending = next((e for e in (".nii.gz", ".nrrd", ".nii", ".mha") if lower.endswith(e)), None)
    tmp = path[:-len(ending)] + ".part" + ending if ending else path
    try:
        sitk.WriteImage(image, tmp, True)
        if tmp != path:
            os.replace(tmp, path)
    except RuntimeError as exc:
        if tmp != path and os.path.exists(tmp):
            os.remove(tmp)
        detail = " ".join(str(exc).split())[:300]
        raise SceneError(f"{path}: could not write the file ({detail})") from exc
    return path


def export_volume_node(volume_node, path) -> str:
    """Write a scalar volume node to ``path`` (NRRD, NIfTI or MHA by the ending) with its
    exact geometry (its IJK-to-RAS in LPS) and voxel type.  Returns the absolute path.
    Vector / RGB volumes (several components) raise :class:`SceneError`."""
    _require_volume(volume_node, "volume")
    path = _check_path(path)
    return _write(_node_array(volume_node), node_lps_geometry(volume_node), path)


def _segments_by_name(segmentation, names: Sequence[str]) -> Dict[str, Tuple[str, str]]:
    """``{wanted name: (segment id, the segment's own name)}`` (case-insensitive match)."""
    seg = segmentation.GetSegmentation()
    by_name = {}
    for i in range(seg.GetNumberOfSegments()):
        sid = seg.GetNthSegmentID(i)
        own = seg.GetSegment(sid).GetName()
        by_name.setdefault(own.strip().lower(), (sid, own))
    return {n: by_name[n.strip().lower()] for n in names if n.strip().lower() in by_name}


def _segmentation_to_array(segmentation, reference, segment_names=None) -> np.ndarray:
    """Segments as a label map ``(K, J, I)`` on ``reference``'s grid."""
    import slicer
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    scene = _scene(None, segmentation, reference)
    temp = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "JCSAugment export (temporary)")
    temp.SetHideFromEditors(True)
    try:
        if segment_names is None:
            ok = logic.ExportVisibleSegmentsToLabelmapNode(segmentation, temp, reference)
        else:
            found = _segments_by_name(segmentation, segment_names)
            if not found:
                have = [segmentation.GetSegmentation().GetNthSegment(i).GetName()
                        for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
                raise SceneError(f"segmentation {_node_name(segmentation)!r} has none of the "
                                 f"segments {list(segment_names)} (it has {have})")
            ids = [found[n][0] for n in segment_names if n in found]
            # a colour table maps segment names to label values: name k -> value k + 1 (the
            # logic looks the segment's own name up, case-sensitively)
            color = slicer.vtkMRMLColorTableNode()
            color.SetTypeToUser()
            color.SetNumberOfColors(len(segment_names) + 1)
            color.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
            for k, name in enumerate(segment_names):
                r, g, b = _PALETTE[k % len(_PALETTE)]
                color.SetColor(k + 1, found[name][1] if name in found else name, r, g, b, 1.0)
            extent = slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
            ok = logic.ExportSegmentsToLabelmapNode(segmentation, ids, temp, reference, extent,
                                                     color)
        if not ok or temp.GetImageData() is None or min(_volume_size(temp)) <= 0 \
                or temp.GetImageData().GetPointData().GetScalars() is None:
            return np.zeros(_volume_size(reference)[::-1], np.uint8)
        arr = _node_array(temp)
        if arr.shape != _volume_size(reference)[::-1]:  # pragma: no cover - logic contract
            raise SceneError(f"segmentation {_node_name(segmentation)!r}: the export came back "
                             f"on a {arr.shape[::-1]} grid, not the image's "
                             f"{_volume_size(reference)}")
        return arr
    finally:
        display = temp.GetDisplayNode() if hasattr(temp, "GetDisplayNode") else None
        if display is not None:
            scene.RemoveNode(display)
        scene.RemoveNode(temp)


def export_label_node(label_or_segmentation_node, reference_volume_node, path,
                      segment_names: Optional[Sequence[str]] = None) -> str:
    """Write a label map for ``reference_volume_node`` (the case's image) to ``path``.

    * a ``vtkMRMLSegmentationNode`` is exported on the reference's grid (resampled if its own
      grid differs) with ``vtkSlicerSegmentationsModuleLogic``: without ``segment_names`` the
      visible segments get the values 1, 2, ... in segment order
      (``ExportVisibleSegmentsToLabelmapNode``); with ``segment_names`` the segment named
      ``segment_names[k]`` (case-insensitive) gets ``k + 1`` and other segments are left out,
      so every case gets the same values whatever the order of its segments;
    * a label map (or scalar) volume node must already lie on the reference's grid (same size,
      spacing, origin and axes within :data:`GRID_TOLERANCE`, same parent transform); it is
      written with the reference's exact geometry.

    A label with no foreground voxel, a grid that differs (both grids are named) or a missing
    node raise :class:`SceneError`.  Returns the absolute path.
    """
    node = label_or_segmentation_node
    if node is None:
        raise SceneError("no label map or segmentation node given")
    _require_volume(reference_volume_node, "image")
    ref_name = _node_name(reference_volume_node)
    path = _check_path(path)
    ref_matrix = node_ijk_to_ras(reference_volume_node)
    if _is(node, "vtkMRMLSegmentationNode"):
        what = f"segmentation {_node_name(node)!r}"
        n = node.GetSegmentation().GetNumberOfSegments()
        if n == 0:
            raise SceneError(f"{what} is empty: it has no segment; paint the structure first")
        arr = _segmentation_to_array(node, reference_volume_node, segment_names)
        if not arr.any():
            raise SceneError(f"{what} is empty: none of its {n} segment(s) has a voxel inside "
                             f"image {ref_name!r}; paint the structure first")
    elif _is(node, "vtkMRMLVolumeNode"):
        _require_volume(node, "label map")
        what = f"label map {_node_name(node)!r}"
        size, matrix = _volume_size(node), node_ijk_to_ras(node)
        ref_size = _volume_size(reference_volume_node)
        if not grids_agree(size, matrix, ref_size, ref_matrix):
            raise SceneError(f"{what} is not on the grid of image {ref_name!r}: the label map "
                             f"has {describe_grid(size, matrix)}; the image has "
                             f"{describe_grid(ref_size, ref_matrix)}. Resample the label map "
                             f"onto the image, or convert it to a segmentation (exported on "
                             f"the image's grid)")
        if node.GetTransformNodeID() != reference_volume_node.GetTransformNodeID():
            raise SceneError(f"{what} and image {ref_name!r} are under different parent "
                             f"transforms ({node.GetTransformNodeID()} and "
                             f"{reference_volume_node.GetTransformNodeID()}); harden the "
                             f"transforms first")
        arr = _node_array(node)
        if np.issubdtype(arr.dtype, np.floating):
            if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
                raise SceneError(f"{what} has non-integer voxel values; a label map holds "
                                 f"class numbers 0, 1, 2, ...")
        if arr.size and arr.min() < 0:
            raise SceneError(f"{what} has negative voxel values (smallest {arr.min():g}); "
                             f"labels must be 0 (background), 1, 2, ...")
        if not arr.any():
            raise SceneError(f"{what} is empty (every voxel is 0); paint the structure first")
    else:
        raise SceneError(f"{_node_name(node)!r} is a {node.GetClassName()}, neither a label map "
                         f"nor a segmentation")
    return _write(arr, node_lps_geometry(reference_volume_node), path)


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _file_stem(case_id: str) -> str:
    stem = _SAFE.sub("_", case_id).strip("._") or "case"
    return stem


def export_cases(cases: Sequence[Mapping[str, Any]], folder, *,
                 extension: str = ".nrrd", segment_names: Optional[Sequence[str]] = None,
                 relative_to: Optional[str] = None) -> List[Dict[str, Any]]:
    """Export the panel's cases into ``folder`` and return job.json case dicts.

    ``cases``: ``{"case_id" (or "id"), "image_nodes": [nodes, one per channel], "label_node":
    label map / segmentation node or None, "split": ...}`` (optional ``"roi_node"``: a mask
    for background sampling).  Files: ``<id>_0000.nrrd`` ... per channel, ``<id>_label.nrrd``
    (every label on its case's first image grid), ``<id>_roi.nrrd``.

    Returns ``[{"id", "images": [paths], "label": path or None, "split": ...}, ...]``: the
    ``split`` key is there when the input case had one (value passed through unchanged, so
    ``panel.settings.build_job`` puts it into ``data.splits``; without one it draws the
    splits); ``"roi"`` when a ROI was given.  Paths are absolute, or relative to
    ``relative_to`` (e.g. the run folder, which job.json paths are relative to).
    """
    if not cases:
        raise SceneError("no case to export")
    folder = os.path.abspath(os.fspath(folder))
    os.makedirs(folder, exist_ok=True)
    ext = extension if extension.startswith(".") else "." + extension
    seen: Dict[str, str] = {}

    def rel(p: str) -> str:
        return os.path.relpath(p, relative_to) if relative_to else p

    out: List[Dict[str, Any]] = []
    for k, case in enumerate(cases):
        cid = case.get("case_id", case.get("id"))
        if cid is None or not str(cid).strip():
            raise SceneError(f"case {k + 1} has no name (case_id)")
        cid = str(cid).strip()
        stem = _file_stem(cid)
        if stem.lower() in seen:
            raise SceneError(f"cases {seen[stem.lower()]!r} and {cid!r} have the same name; "
                             f"give every case its own name")
        seen[stem.lower()] = cid
        nodes = case.get("image_nodes")
        if nodes is None and case.get("image_node") is not None:
            nodes = [case["image_node"]]
        nodes = [n for n in (nodes or [])]
        if not nodes or any(n is None for n in nodes):
            raise SceneError(f"case {cid!r} has no image volume"
                             if not nodes else f"case {cid!r}: an image channel is not set")
        first = nodes[0]
        _require_volume(first, "image")
        size0, m0 = _volume_size(first), node_ijk_to_ras(first)
        images = []
        for c, node in enumerate(nodes):
            _require_volume(node, "image")
            if c and not grids_agree(_volume_size(node), node_ijk_to_ras(node), size0, m0):
                raise SceneError(
                    f"case {cid!r}: channel {c + 1} {_node_name(node)!r} is not on the grid of "
                    f"channel 1 {_node_name(first)!r}: it has "
                    f"{describe_grid(_volume_size(node), node_ijk_to_ras(node))}; channel 1 has "
                    f"{describe_grid(size0, m0)}")
            images.append(rel(export_volume_node(node, os.path.join(folder,
                                                                    f"{stem}_{c:04d}{ext}"))))
        label = case.get("label_node")
        entry: Dict[str, Any] = {"id": cid, "images": images, "label": None}
        if label is not None:
            try:
                entry["label"] = rel(export_label_node(
                    label, first, os.path.join(folder, f"{stem}_label{ext}"), segment_names))
            except SceneError as exc:
                raise SceneError(f"case {cid!r}: {exc}") from None
        roi = case.get("roi_node")
        if roi is not None:
            try:
                entry["roi"] = rel(export_label_node(roi, first,
                                                     os.path.join(folder, f"{stem}_roi{ext}")))
            except SceneError as exc:
                raise SceneError(f"case {cid!r} (ROI): {exc}") from None
        if "split" in case:
            entry["split"] = case["split"]
        out.append(entry)
    return out


# ----------------------------------------------------------------------------- reading

def _read(path, kind: str = "image") -> Tuple[np.ndarray, np.ndarray]:
    """Voxels ``(K, J, I)`` and IJK-to-RAS of a scalar image file (``kind`` "label" for a
    label map: the memory budget counts it as int64)."""
    import SimpleITK as sitk
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SceneError(f"{path}: file does not exist")
    from .io.file_checks import check_volume_file
    from .io.volume import VolumeError
    try:  # the checked reading path: memory budget and a complete payload first
        check_volume_file(path, kind)
    except VolumeError as exc:
        raise SceneError(str(exc)) from None
    try:
        image = sitk.ReadImage(path)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise SceneError(f"{path}: SimpleITK could not read the file ({detail})") from exc
    if image.GetDimension() != 3:
        raise SceneError(f"{path}: a {image.GetDimension()}D image; a 3D volume is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise SceneError(f"{path}: {image.GetNumberOfComponentsPerPixel()} components per "
                         f"voxel; a scalar volume is needed")
    return sitk.GetArrayFromImage(image), _sitk_geometry_matrix(image)


def _same_grid(arr: np.ndarray, file_matrix: np.ndarray, reference) -> bool:
    return reference is not None and grids_agree(arr.shape[::-1], file_matrix,
                                                 _volume_size(reference),
                                                 node_ijk_to_ras(reference))


def _new_volume(scene, cls: str, name: str, arr: np.ndarray, file_matrix: np.ndarray,
                reference):
    """A new volume node with ``arr``: on the reference's grid it copies the reference's
    orientation (origin, spacing, axes: bit for bit), otherwise it takes the file's."""
    node = scene.AddNewNodeByClass(cls, name)
    if _same_grid(arr, file_matrix, reference):
        _set_node_array(node, arr, None)
        node.CopyOrientation(reference)
    else:
        _set_node_array(node, arr, file_matrix)
    node.CreateDefaultDisplayNodes()
    node.SetAttribute(ATTRIBUTE, "result")
    place_beside(node, reference)
    return node


def load_label_map(path, reference_volume_node, name: Optional[str] = None, scene=None):
    """Load a label map file (e.g. a prediction) as a ``vtkMRMLLabelMapVolumeNode``.

    On the reference's grid (within :data:`GRID_TOLERANCE`) the node gets the reference's
    IJK-to-RAS exactly, otherwise the file's own.  Named ``"<reference name> segmentation"``
    by default, put under the reference's parent transform and in its subject-hierarchy folder,
    with default display nodes (the label colour table).  ``scene``: default the reference's
    scene, else ``slicer.mrmlScene``.  Showing it as the label layer is the caller's job
    (``slicer.util.setSliceViewerLayers(label=node)`` in the application).
    """
    arr, matrix = _read(path, "label")
    if np.issubdtype(arr.dtype, np.floating):
        if np.any(arr != np.round(arr)):
            raise SceneError(f"{os.fspath(path)}: not a label map (non-integer voxel values)")
        arr = arr.astype(np.int32)
    arr = _vtk_ready(arr, os.fspath(path))
    scene = _scene(scene, reference_volume_node)
    if name is None:
        name = (f"{_node_name(reference_volume_node)} segmentation" if reference_volume_node
                is not None else os.path.basename(os.fspath(path)).split(".")[0])
    return _new_volume(scene, "vtkMRMLLabelMapVolumeNode", name, arr, matrix,
                       reference_volume_node)


def load_scalar_volume(path, name: str, scene=None, reference_volume_node=None):
    """Load a scalar file (e.g. an uncertainty map) as a ``vtkMRMLScalarVolumeNode`` named
    ``name``; with ``reference_volume_node`` its geometry, transform and folder as in
    :func:`load_label_map`."""
    arr, matrix = _read(path)
    arr = _vtk_ready(arr, os.fspath(path))
    scene = _scene(scene, reference_volume_node)
    return _new_volume(scene, "vtkMRMLScalarVolumeNode", name, arr, matrix,
                       reference_volume_node)


def label_map_to_segmentation(label_node, scene=None, name: Optional[str] = None,
                              segment_names: Union[None, Mapping[int, str], Sequence[str]] = None):
    """A new ``vtkMRMLSegmentationNode`` with one segment per label value of ``label_node``
    (``ImportLabelmapToSegmentationNode``), whose reference geometry is the label map's grid.

    ``segment_names``: ``{value: name}`` or a list (``names[k]`` for value ``k + 1``) to name
    the segments; otherwise the label map's colour table names them.  Named after the label
    map, beside it in the subject hierarchy.  An empty label map raises :class:`SceneError`.
    """
    import slicer
    if label_node is None:
        raise SceneError("no label map node given")
    _require_volume(label_node, "label map")
    if not _node_array(label_node).any():
        raise SceneError(f"label map {_node_name(label_node)!r} is empty (every voxel is 0)")
    scene = _scene(scene, label_node)
    if name is None:
        name = scene.GenerateUniqueName(_node_name(label_node))
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(label_node)
    seg.SetAndObserveTransformNodeID(label_node.GetTransformNodeID())
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label_node,
                                                                                      seg):
        scene.RemoveNode(seg)
        raise SceneError(f"label map {_node_name(label_node)!r} could not be converted to a "
                         f"segmentation")
    if segment_names is not None:
        if not isinstance(segment_names, Mapping):
            segment_names = {k + 1: n for k, n in enumerate(segment_names)}
        segmentation = seg.GetSegmentation()
        for i in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(i)
            value = segment.GetLabelValue() if hasattr(segment, "GetLabelValue") else i + 1
            if value in segment_names:
                segment.SetName(str(segment_names[value]))
    seg.SetAttribute(ATTRIBUTE, "result")
    place_beside(seg, label_node)
    return seg


# ----------------------------------------------------------------------------- live views

def _find_ours(scene, class_name: str, role: str):
    """The node of ``class_name`` that this module made for ``role`` (attribute), or None."""
    nodes = scene.GetNodesByClass(class_name)
    try:
        for i in range(nodes.GetNumberOfItems()):
            node = nodes.GetItemAsObject(i)
            if node.GetAttribute(ATTRIBUTE) == role:
                return node
    finally:
        if hasattr(nodes, "UnRegister"):
            # GetNodesByClass hands over a new reference (as slicer.util.getNodesByClass does)
            nodes.UnRegister(None)
    return None


def update_preview_nodes(arrays: Mapping[str, Any], scene=None,
                         prefix: str = "JCSAugment preview") -> Dict[str, Any]:
    """Show arrays as volume nodes named ``"<prefix> <name>"``, reusing this module's nodes.

    ``arrays``: ``{name: (array (z, y, x), ijk_to_ras 4x4 or None)}`` or ``{name: array}``.
    Integer and bool arrays become label maps, others scalar volumes; ``None`` geometry keeps
    the node's (1 mm, identity for a new node).  The same ``prefix`` and name update the same
    node (found by an attribute, so renaming it in Slicer does not break the link); nothing
    else in the scene is touched.  Returns ``{name: node}``.
    """
    scene = _scene(scene)
    out: Dict[str, Any] = {}
    for name, value in arrays.items():
        if isinstance(value, tuple) and len(value) == 2:
            arr, matrix = value
        else:
            arr, matrix = value, None
        arr = np.asarray(arr)
        label = arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer)
        cls = "vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode"
        role = f"preview:{prefix}:{name}"
        node = _find_ours(scene, "vtkMRMLVolumeNode", role)
        if node is None or node.GetClassName() != cls:
            old = node
            node = scene.AddNewNodeByClass(cls, f"{prefix} {name}")
            node.SetAttribute(ATTRIBUTE, role)
            if old is not None:  # our own node of the other kind (label <-> scalar)
                scene.RemoveNode(old)
            fresh = True
        else:
            fresh = False
        if not label:
            arr = arr.astype(np.float32)
        arr = _vtk_ready(arr, f"preview {name!r}")
        _set_node_array(node, arr, None if matrix is None else _matrix(matrix))
        if fresh or node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        if not label:
            display = node.GetDisplayNode()
            if display is not None and hasattr(display, "AutoWindowLevelOn"):
                display.AutoWindowLevelOn()
        out[name] = node
    return out


def _numeric(values: Sequence[Any]) -> bool:
    return all(v is None or (isinstance(v, (int, float, np.integer, np.floating))
                             and not isinstance(v, bool)) for v in values)


def _fill_table(table_node, columns: Mapping[str, Sequence[Any]]) -> None:
    """Replace the columns of a table node: numbers as double columns (None -> NaN), others as
    text."""
    from vtkmodules.vtkCommonCore import vtkDoubleArray, vtkStringArray
    table = table_node.GetTable()
    was = table_node.StartModify()
    try:
        table.Initialize()
        n = max((len(v) for v in columns.values()), default=0)
        for name, values in columns.items():
            values = list(values) + [None] * (n - len(values))
            if _numeric(values):
                col = vtkDoubleArray()
                col.SetName(name)
                col.SetNumberOfTuples(n)
                for i, v in enumerate(values):
                    col.SetValue(i, math.nan if v is None else float(v))
            else:
                col = vtkStringArray()
                col.SetName(name)
                col.SetNumberOfValues(n)
                for i, v in enumerate(values):
                    col.SetValue(i, "" if v is None else (f"{v:.4g}" if isinstance(v, float)
                                                           else str(v)))
            table.AddColumn(col)
        table.Modified()
        table_node.Modified()
    finally:
        table_node.EndModify(was)


def metrics_table_node(rows: Sequence[Mapping[str, Any]], name: str, scene=None):
    """A ``vtkMRMLTableNode`` named ``name`` with one row per dict and one column per key
    (in first-seen order; numbers as numeric columns, missing values NaN / empty).  A table
    this module made with the same name is reused and refilled."""
    scene = _scene(scene)
    role = f"table:{name}"
    node = _find_ours(scene, "vtkMRMLTableNode", role)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
        node.SetAttribute(ATTRIBUTE, role)
    keys: List[str] = []
    for row in rows:
        for k in row:
            if k not in keys:
                keys.append(k)
    _fill_table(node, {k: [row.get(k) for row in rows] for k in keys})
    return node


def curve_plot_nodes(name: str, scene=None):
    """``(table node, plot chart node)`` for curves named ``name`` (reused when they exist).
    Fill them with :func:`update_curve_table`; show the chart in a plot view
    (``qMRMLPlotView.setMRMLPlotChartNode`` or the layout's plot widget)."""
    scene = _scene(scene)
    table = _find_ours(scene, "vtkMRMLTableNode", f"curves:{name}")
    if table is None:
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} table")
        table.SetAttribute(ATTRIBUTE, f"curves:{name}")
    chart = _find_ours(scene, "vtkMRMLPlotChartNode", f"chart:{name}")
    if chart is None:
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
        chart.SetAttribute(ATTRIBUTE, f"chart:{name}")
        chart.SetTitle(name)
        if hasattr(chart, "SetXAxisTitle"):
            chart.SetXAxisTitle("iteration")
        if hasattr(chart, "SetLegendVisibility"):
            chart.SetLegendVisibility(True)
    table.SetAttribute("JCSAugment.chart", chart.GetID())
    return table, chart


def update_curve_table(table_node, curves: Mapping[str, Sequence[Tuple[float, float]]],
                       chart_node=None) -> None:
    """Put curves into ``table_node`` -- columns ``"<curve> x"`` and ``"<curve>"`` per curve,
    shorter curves padded with NaN (not drawn) -- and give the chart (``chart_node``, else the
    one :func:`curve_plot_nodes` made with this table) one line series per curve."""
    if table_node is None:
        raise SceneError("no table node given")
    columns: Dict[str, List[Optional[float]]] = {}
    for name, points in curves.items():
        pts = [(float(x), float(y)) for x, y in points]
        columns[f"{name} x"] = [p[0] for p in pts]
        columns[str(name)] = [p[1] for p in pts]
    _fill_table(table_node, columns)
    scene = table_node.GetScene()
    if chart_node is None and scene is not None:
        chart_id = table_node.GetAttribute("JCSAugment.chart")
        chart_node = scene.GetNodeByID(chart_id) if chart_id else None
    if chart_node is None or scene is None:
        return
    import slicer
    series_cls = slicer.vtkMRMLPlotSeriesNode
    for k, name in enumerate(curves):
        role = f"series:{chart_node.GetID()}:{name}"
        series = _find_ours(scene, "vtkMRMLPlotSeriesNode", role)
        if series is None:
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", str(name))
            series.SetAttribute(ATTRIBUTE, role)
            series.SetPlotType(series_cls.PlotTypeScatter)
            series.SetLineStyle(series_cls.LineStyleSolid)
            series.SetMarkerStyle(series_cls.MarkerStyleNone)
            series.SetColor(*_PALETTE[k % len(_PALETTE)])
        series.SetAndObserveTableNodeID(table_node.GetID())
        series.SetXColumnName(f"{name} x")
        series.SetYColumnName(str(name))
        if not chart_node.HasPlotSeriesNodeID(series.GetID()):
            chart_node.AddAndObservePlotSeriesNodeID(series.GetID())

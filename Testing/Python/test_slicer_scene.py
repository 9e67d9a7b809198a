"""The MRML glue (JCSAugmentLib.slicer_scene) on a real MRML scene from the ``slicer-core`` wheel.

The geometry conversions are checked against SimpleITK's own index-to-point mapping without
MRML; everything else needs ``slicer-core`` (installed by the ``test`` extra) and is skipped,
with the reason, where it is missing.  The end-to-end test exports scene nodes into a run
folder, trains for two iterations in the real worker process, predicts with the real command
and loads the result back onto the input's grid.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from JCSAugmentLib import slicer_scene as ss
from JCSAugmentLib.slicer_scene import SceneError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rotation(ax, ay, az):
    ax, ay, az = np.deg2rad([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


#: LPS grids (origin, spacing, direction) as SimpleITK sees them
GRIDS = {
    "identity": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), np.eye(3)),
    "anisotropic": ((12.5, -40.0, 7.25), (0.7, 1.3, 2.9), np.eye(3)),
    "oblique": ((-3.0, 17.0, 101.5), (0.6, 0.9, 2.2), _rotation(17, -11, 33)),
    "ras-flipped": ((90.0, 126.0, -72.0), (0.9375, 0.9375, 3.0), np.diag([-1.0, -1.0, 1.0])),
    "permuted-left-handed": ((5.0, 6.0, 7.0), (1.5, 0.5, 2.5),
                             np.array([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]])),
    "oblique-flipped": ((1.0, -2.0, 3.0), (0.8, 1.1, 3.3),
                        _rotation(-25, 40, 5) @ np.diag([1.0, -1.0, 1.0])),
}


def _sitk_image(grid, size=(9, 7, 5)):
    origin, spacing, direction = grid
    img = sitk.Image(list(size), sitk.sitkFloat32)
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(tuple(np.asarray(direction, float).reshape(-1)))
    return img


# ----------------------------------------------------------------------------- geometry (no MRML)

@pytest.mark.parametrize("name", list(GRIDS))
def test_ijk_to_ras_maps_voxels_where_simpleitk_puts_them(name):
    img = _sitk_image(GRIDS[name])
    m = ss.ijk_to_ras_from_lps_geometry(img.GetOrigin(), img.GetSpacing(), img.GetDirection())
    rng = np.random.default_rng(0)
    for ijk in [(0, 0, 0), (8, 6, 4), *rng.uniform(-2, 10, size=(5, 3))]:
        lps = np.array(img.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk]))
        ras = (m @ np.r_[np.asarray(ijk, float), 1.0])[:3]
        assert np.allclose(ras, lps * [-1, -1, 1], atol=1e-9), (name, ijk)


@pytest.mark.parametrize("name", list(GRIDS))
def test_geometry_round_trip_is_exact(name):
    img = _sitk_image(GRIDS[name])
    m = ss.ijk_to_ras_from_lps_geometry(img.GetOrigin(), img.GetSpacing(), img.GetDirection())
    g = ss.lps_geometry_from_ijk_to_ras(m)
    assert np.allclose(g["origin"], img.GetOrigin(), rtol=0, atol=1e-12)
    assert np.allclose(g["spacing"], img.GetSpacing(), rtol=1e-14, atol=0)
    assert np.allclose(g["direction"], img.GetDirection(), rtol=0, atol=1e-14)
    m2 = ss.ijk_to_ras_from_lps_geometry(g["origin"], g["spacing"], g["direction"])
    assert np.allclose(m, m2, rtol=0, atol=1e-12)
    # no negative zeros leak into the geometry
    assert all(str(v) != "-0.0" for v in g["direction"] + g["origin"])


def test_bad_matrices_are_refused():
    with pytest.raises(SceneError, match="4x4"):
        ss.lps_geometry_from_ijk_to_ras(np.eye(3))
    m = np.eye(4)
    m[:3, 1] = 0
    with pytest.raises(SceneError, match="zero"):
        ss.lps_geometry_from_ijk_to_ras(m)
    m = np.eye(4)
    m[:3, 1] = m[:3, 0]
    with pytest.raises(SceneError, match="singular"):
        ss.lps_geometry_from_ijk_to_ras(m)


def test_grids_agree_uses_the_engines_tolerance():
    m = ss.ijk_to_ras_from_lps_geometry(*GRIDS["oblique"][:2], GRIDS["oblique"][2].reshape(-1))
    assert ss.grids_agree((9, 7, 5), m, (9, 7, 5), m)
    near = m.copy()
    near[:3, 3] += 1e-7
    assert ss.grids_agree((9, 7, 5), near, (9, 7, 5), m)
    far = m.copy()
    far[:3, 3] += 0.5
    assert not ss.grids_agree((9, 7, 5), far, (9, 7, 5), m)
    assert not ss.grids_agree((9, 7, 6), m, (9, 7, 5), m)


def test_importing_the_library_never_imports_slicer_or_vtk():
    code = ("import sys, JCSAugmentLib, JCSAugmentLib.cli, JCSAugmentLib.slicer_scene; "
            "bad = [m for m in ('slicer', 'vtk', 'vtkmodules') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ----------------------------------------------------------------------------- MRML fixtures

@pytest.fixture(scope="module")
def slicer():
    pytest.importorskip("slicer_core", reason="slicer-core (PyPI wheel with the MRML scene) is "
                                              "not installed: pip install -e '.[test]'")
    import slicer as sl
    if not hasattr(sl, "vtkMRMLScene"):
        pytest.skip("'import slicer' is not slicer-core's (the unrelated PyPI package 'slicer' "
                    "shadows it; pip uninstall slicer && pip install --force-reinstall "
                    "slicer-core)")
    return sl


@pytest.fixture
def scene(slicer):
    s = ss.headless_scene()
    yield s
    s.Clear(True)


def _matrix(grid_name):
    o, sp, d = GRIDS[grid_name]
    return ss.ijk_to_ras_from_lps_geometry(o, sp, np.asarray(d).reshape(-1))


def _volume(scene, name, arr, matrix, cls="vtkMRMLScalarVolumeNode"):
    node = scene.AddNewNodeByClass(cls, name)
    ss._set_node_array(node, arr, matrix)
    node.CreateDefaultDisplayNodes()
    return node


def _blob(shape=(20, 28, 24), centre=(10, 14, 12), radius=5, value=1):
    zz, yy, xx = np.indices(shape)
    r2 = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2
    return np.where(r2 <= radius ** 2, value, 0).astype(np.uint8)


def _assert_file(path, arr, matrix, exact=True):
    img = sitk.ReadImage(path)
    got = sitk.GetArrayFromImage(img)
    assert got.shape == arr.shape
    assert np.array_equal(got, arr)
    g = ss.lps_geometry_from_ijk_to_ras(matrix)
    tol = 1e-12 if exact else 1e-5
    assert np.allclose(img.GetOrigin(), g["origin"], rtol=0, atol=tol * 100)
    assert np.allclose(img.GetSpacing(), g["spacing"], rtol=tol, atol=0)
    assert np.allclose(img.GetDirection(), g["direction"], rtol=0, atol=tol)
    return img


# ----------------------------------------------------------------------------- nodes and files

@pytest.mark.parametrize("name", ["oblique", "anisotropic", "ras-flipped", "oblique-flipped"])
def test_node_geometry_matches_simpleitk(scene, name):
    m = _matrix(name)
    node = _volume(scene, "img", np.zeros((5, 7, 9), np.float32), m)
    # MRML keeps origin, spacing and axes apart and rebuilds the matrix: equal to rounding
    assert np.allclose(ss.node_ijk_to_ras(node), m, rtol=0, atol=1e-12)
    img = _sitk_image(GRIDS[name])
    g = ss.lps_geometry_from_ijk_to_ras(ss.node_ijk_to_ras(node))
    assert np.allclose(g["origin"], img.GetOrigin(), atol=1e-12)
    assert np.allclose(g["direction"], img.GetDirection(), atol=1e-14)
    exact = ss.node_lps_geometry(node)
    assert np.allclose(exact["origin"], img.GetOrigin(), rtol=0, atol=1e-12)
    assert np.allclose(exact["spacing"], img.GetSpacing(), rtol=1e-15, atol=0)
    assert np.allclose(exact["direction"], img.GetDirection(), rtol=0, atol=1e-15)
    # Slicer's own accessors agree with the conversion
    assert np.allclose(node.GetSpacing(), img.GetSpacing(), rtol=1e-14)
    assert np.allclose(node.GetOrigin(), np.multiply(img.GetOrigin(), [-1, -1, 1]), atol=1e-12)


@pytest.mark.parametrize("ending,exact", [(".nrrd", True), (".nii.gz", False), (".mha", True)])
def test_export_volume_keeps_voxels_and_geometry(scene, tmp_path, ending, exact):
    m = _matrix("oblique")
    arr = np.random.default_rng(1).normal(size=(5, 7, 9)).astype(np.float32)
    node = _volume(scene, "T1 oblique", arr, m)
    path = ss.export_volume_node(node, tmp_path / f"img{ending}")
    assert os.path.isabs(path) and os.path.exists(path)
    _assert_file(path, arr, m, exact=exact)
    assert not [f for f in os.listdir(tmp_path) if ".part" in f]


def test_export_volume_keeps_the_voxel_type(scene, tmp_path):
    arr = np.arange(5 * 7 * 9, dtype=np.int16).reshape(5, 7, 9) - 100
    node = _volume(scene, "ct", arr, _matrix("ras-flipped"))
    img = _assert_file(ss.export_volume_node(node, tmp_path / "ct.nrrd"), arr,
                       _matrix("ras-flipped"))
    assert img.GetPixelID() == sitk.sitkInt16


def test_export_volume_refuses_bad_input(scene, tmp_path):
    vec = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    from vtkmodules.vtkCommonDataModel import vtkImageData
    from vtkmodules.util.numpy_support import numpy_to_vtk
    image = vtkImageData()
    image.SetDimensions(4, 3, 2)
    image.GetPointData().SetScalars(numpy_to_vtk(np.zeros((24, 3), np.uint8), deep=True))
    vec.SetAndObserveImageData(image)
    with pytest.raises(SceneError, match=r"'rgb' has 3 components per voxel"):
        ss.export_volume_node(vec, tmp_path / "rgb.nrrd")
    with pytest.raises(SceneError, match="no volume node"):
        ss.export_volume_node(None, tmp_path / "x.nrrd")
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "nothing")
    with pytest.raises(SceneError, match="'nothing' has no voxels"):
        ss.export_volume_node(empty, tmp_path / "x.nrrd")
    node = _volume(scene, "ok", np.zeros((2, 3, 4), np.float32), np.eye(4))
    with pytest.raises(SceneError, match="unsupported file type"):
        ss.export_volume_node(node, tmp_path / "x.png")


def test_export_label_map_on_the_image_grid(scene, tmp_path):
    m = _matrix("oblique-flipped")
    image = _volume(scene, "img", np.zeros((20, 28, 24), np.float32), m)
    lab = _blob() + 2 * _blob(centre=(5, 6, 7), radius=2)
    node = _volume(scene, "img label", lab, m, "vtkMRMLLabelMapVolumeNode")
    path = ss.export_label_node(node, image, tmp_path / "lab.nrrd")
    _assert_file(path, lab, m)
    # the engine accepts it as the image's label
    from JCSAugmentLib.io.volume import read_images, read_label
    img_path = ss.export_volume_node(image, tmp_path / "img.nrrd")
    assert read_label(path, reference=read_images([img_path])).array.max() == 2


def test_export_label_refuses_another_grid_naming_both(scene, tmp_path):
    image = _volume(scene, "CT chest", np.zeros((20, 28, 24), np.float32), _matrix("oblique"))
    shifted = _matrix("oblique")
    shifted[:3, 3] += 3.0
    lab = _volume(scene, "lungs", _blob(), shifted, "vtkMRMLLabelMapVolumeNode")
    with pytest.raises(SceneError) as e:
        ss.export_label_node(lab, image, tmp_path / "lab.nrrd")
    msg = str(e.value)
    assert "'lungs'" in msg and "'CT chest'" in msg and msg.count("24x28x20 voxels") == 2
    small = _volume(scene, "small", _blob((10, 28, 24), (5, 14, 12)), _matrix("oblique"),
                    "vtkMRMLLabelMapVolumeNode")
    with pytest.raises(SceneError, match="24x28x10 voxels.*24x28x20 voxels"):
        ss.export_label_node(small, image, tmp_path / "lab.nrrd")
    assert not os.path.exists(tmp_path / "lab.nrrd")


def test_export_label_refuses_empty_missing_and_non_labels(scene, tmp_path):
    image = _volume(scene, "img", np.zeros((20, 28, 24), np.float32), np.eye(4))
    empty = _volume(scene, "blank", np.zeros((20, 28, 24), np.uint8), np.eye(4),
                    "vtkMRMLLabelMapVolumeNode")
    with pytest.raises(SceneError, match="'blank' is empty"):
        ss.export_label_node(empty, image, tmp_path / "l.nrrd")
    with pytest.raises(SceneError, match="no label map or segmentation"):
        ss.export_label_node(None, image, tmp_path / "l.nrrd")
    with pytest.raises(SceneError, match="no image node"):
        ss.export_label_node(empty, None, tmp_path / "l.nrrd")
    frac = _volume(scene, "prob", np.full((20, 28, 24), 0.5, np.float32), np.eye(4))
    with pytest.raises(SceneError, match="'prob' has non-integer"):
        ss.export_label_node(frac, image, tmp_path / "l.nrrd")
    no_segments = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    with pytest.raises(SceneError, match="'seg' is empty: it has no segment"):
        ss.export_label_node(no_segments, image, tmp_path / "l.nrrd")
    no_segments.GetSegmentation().AddEmptySegment("tumour")
    with pytest.raises(SceneError, match="'seg' is empty: none of its 1 segment"):
        ss.export_label_node(no_segments, image, tmp_path / "l.nrrd")
    # the temporary export node is gone again
    assert [n.GetName() for n in _volumes(scene)] == ["img", "blank", "prob"]
    with pytest.raises(SceneError, match="'blank' is empty"):
        ss.label_map_to_segmentation(empty)
    with pytest.raises(SceneError, match="no label map node"):
        ss.label_map_to_segmentation(None, scene=scene)
    moved = _volume(scene, "moved", _blob(), np.eye(4), "vtkMRMLLabelMapVolumeNode")
    moved.SetAndObserveTransformNodeID(
        scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "t").GetID())
    with pytest.raises(SceneError, match="'moved' and image 'img' are under different parent "
                                         "transforms"):
        ss.export_label_node(moved, image, tmp_path / "l.nrrd")


def test_segmentation_label_map_round_trip(scene, tmp_path):
    m = _matrix("oblique")
    image = _volume(scene, "img", np.zeros((20, 28, 24), np.float32), m)
    lab = _blob() + 2 * _blob(centre=(4, 5, 6), radius=2)
    labnode = _volume(scene, "truth", lab, m, "vtkMRMLLabelMapVolumeNode")
    seg = ss.label_map_to_segmentation(labnode, segment_names={1: "tumour", 2: "cyst"})
    assert seg.IsA("vtkMRMLSegmentationNode") and seg.GetScene() is scene
    segmentation = seg.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName()
             for i in range(segmentation.GetNumberOfSegments())]
    assert names == ["tumour", "cyst"]
    path = ss.export_label_node(seg, image, tmp_path / "seg.nrrd")
    _assert_file(path, lab, m)
    # names fix the values whatever the segment order
    path = ss.export_label_node(seg, image, tmp_path / "named.nrrd",
                                segment_names=["cyst", "tumour"])
    _assert_file(path, np.where(lab == 1, 2, np.where(lab == 2, 1, 0)).astype(lab.dtype), m)
    path = ss.export_label_node(seg, image, tmp_path / "only.nrrd", segment_names=["Tumour"])
    _assert_file(path, (lab == 1).astype(lab.dtype), m)
    with pytest.raises(SceneError, match="none of the segments"):
        ss.export_label_node(seg, image, tmp_path / "x.nrrd", segment_names=["liver"])


def test_segmentation_is_exported_on_the_image_grid(scene, tmp_path):
    # painted on a coarser, shifted grid: exported (resampled) on the image's grid
    fine = _matrix("anisotropic")
    image = _volume(scene, "img", np.zeros((20, 28, 24), np.float32), fine)
    coarse = fine.copy()
    coarse[:3, :3] *= 2
    lab = _volume(scene, "coarse", _blob((10, 14, 12), (5, 7, 6), 3), coarse,
                  "vtkMRMLLabelMapVolumeNode")
    seg = ss.label_map_to_segmentation(lab)
    path = ss.export_label_node(seg, image, tmp_path / "seg.nii.gz")
    img = sitk.ReadImage(path)
    assert img.GetSize() == (24, 28, 20)
    g = ss.lps_geometry_from_ijk_to_ras(fine)
    assert np.allclose(img.GetSpacing(), g["spacing"], rtol=1e-6)
    assert np.allclose(img.GetOrigin(), g["origin"], atol=1e-4)
    got = sitk.GetArrayFromImage(img)
    # fine voxels 0, 2, 4, ... sit on the coarse voxel centres: the same labels there
    assert set(np.unique(got)) == {0, 1}
    assert np.array_equal(got[::2, ::2, ::2], _blob((10, 14, 12), (5, 7, 6), 3))
    assert abs(int(got.sum()) - 8 * int(_blob((10, 14, 12), (5, 7, 6), 3).sum())) < 0.2 * got.sum()


def _sh_study(scene, ref):
    import slicer
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study = sh.CreateStudyItem(patient, "Study 1")
    sh.CreateItem(study, ref)
    return sh, study


def test_load_label_map_gets_the_references_geometry_name_and_folder(scene, tmp_path):
    m = _matrix("oblique-flipped")
    ref = _volume(scene, "MR head", np.zeros((20, 28, 24), np.float32), m)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    ref.SetAndObserveTransformNodeID(transform.GetID())
    sh, study = _sh_study(scene, ref)
    lab = _blob()
    # a prediction as the engine writes it: NIfTI (single precision geometry), LPS
    g = ss.lps_geometry_from_ijk_to_ras(m)
    img = sitk.GetImageFromArray(lab)
    img.SetOrigin(g["origin"]), img.SetSpacing(g["spacing"]), img.SetDirection(g["direction"])
    path = str(tmp_path / "pred.nii.gz")
    sitk.WriteImage(img, path)
    assert not np.array_equal(ss.ijk_to_ras_from_lps_geometry(
        *[getattr(sitk.ReadImage(path), f"Get{k}")() for k in ("Origin", "Spacing",
                                                                 "Direction")]), m)
    node = ss.load_label_map(path, ref)
    assert node.IsA("vtkMRMLLabelMapVolumeNode") and node.GetScene() is scene
    assert node.GetName() == "MR head segmentation"
    assert np.array_equal(ss.node_ijk_to_ras(node), ss.node_ijk_to_ras(ref))
    assert np.array_equal(ss._node_array(node), lab)
    assert node.GetTransformNodeID() == transform.GetID()
    assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study
    assert node.GetDisplayNode() is not None
    named = ss.load_label_map(path, ref, name="mine", scene=scene)
    assert named.GetName() == "mine"
    # a file on another grid keeps its own geometry
    img.SetOrigin(tuple(np.add(g["origin"], 5.0)))
    sitk.WriteImage(img, str(tmp_path / "moved.nrrd"))
    moved = ss.load_label_map(str(tmp_path / "moved.nrrd"), ref)
    assert np.allclose(ss.node_ijk_to_ras(moved)[:3, 3], m[:3, 3] + [-5, -5, 5])


def test_load_results_refuse_bad_files(scene, tmp_path):
    ref = _volume(scene, "img", np.zeros((4, 5, 6), np.float32), np.eye(4))
    with pytest.raises(SceneError, match="does not exist"):
        ss.load_label_map(tmp_path / "none.nrrd", ref)
    img = sitk.GetImageFromArray(np.full((4, 5, 6), 0.5, np.float32))
    sitk.WriteImage(img, str(tmp_path / "prob.nrrd"))
    with pytest.raises(SceneError, match="non-integer"):
        ss.load_label_map(tmp_path / "prob.nrrd", ref)
    vec = sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.float32), isVector=True)
    sitk.WriteImage(vec, str(tmp_path / "vec.nrrd"))
    with pytest.raises(SceneError, match="3 components"):
        ss.load_scalar_volume(tmp_path / "vec.nrrd", "u", scene=scene)


def test_load_scalar_volume_for_uncertainty(scene, tmp_path):
    m = _matrix("oblique")
    ref = _volume(scene, "img", np.zeros((5, 7, 9), np.float32), m)
    _sh, study = _sh_study(scene, ref)
    g = ss.lps_geometry_from_ijk_to_ras(m)
    arr = np.random.default_rng(0).uniform(size=(5, 7, 9)).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetOrigin(g["origin"]), img.SetSpacing(g["spacing"]), img.SetDirection(g["direction"])
    sitk.WriteImage(img, str(tmp_path / "u.nrrd"))
    node = ss.load_scalar_volume(str(tmp_path / "u.nrrd"), "img uncertainty", scene=scene,
                                 reference_volume_node=ref)
    assert node.GetClassName() == "vtkMRMLScalarVolumeNode"
    assert np.array_equal(ss._node_array(node), arr)
    assert np.array_equal(ss.node_ijk_to_ras(node), ss.node_ijk_to_ras(ref))
    assert _sh.GetItemParent(_sh.GetItemByDataNode(node)) == study
    alone = ss.load_scalar_volume(str(tmp_path / "u.nrrd"), "alone", scene=scene)
    assert np.allclose(ss.node_ijk_to_ras(alone), m, atol=1e-12)


def test_without_a_scene_the_error_says_what_to_pass(slicer, tmp_path):
    if getattr(slicer, "mrmlScene", None) is not None:
        pytest.skip("running inside the Slicer application")
    with pytest.raises(SceneError, match="pass scene="):
        ss.metrics_table_node([{"a": 1}], "t")


def test_preview_nodes_are_reused_and_nothing_else_is_touched(scene):
    user = _volume(scene, "JCSAugment preview image", np.zeros((2, 2, 2), np.float32), np.eye(4))
    m = _matrix("anisotropic")
    arrays = {"image": (np.random.default_rng(0).normal(size=(8, 9, 10)), m),
              "label": (np.zeros((8, 9, 10), np.int64), m)}
    nodes = ss.update_preview_nodes(arrays, scene=scene)
    assert nodes["image"].GetClassName() == "vtkMRMLScalarVolumeNode"
    assert nodes["label"].GetClassName() == "vtkMRMLLabelMapVolumeNode"
    assert nodes["image"] is not user
    assert np.array_equal(ss.node_ijk_to_ras(nodes["label"]), m)
    count = scene.GetNumberOfNodes()
    again = ss.update_preview_nodes({"image": np.ones((3, 4, 5), np.float32),
                                     "label": (np.ones((8, 9, 10), bool), None)}, scene=scene)
    assert again["image"] is nodes["image"] and again["label"] is nodes["label"]
    assert scene.GetNumberOfNodes() == count
    assert ss._node_array(again["image"]).shape == (3, 4, 5)
    assert np.array_equal(ss.node_ijk_to_ras(again["label"]), m)  # None keeps the geometry
    assert ss._node_array(again["label"]).all()
    assert ss._node_array(user).shape == (2, 2, 2)  # the user's node is untouched
    other = ss.update_preview_nodes({"image": np.ones((3, 4, 5), np.float32)}, scene=scene,
                                    prefix="other")
    assert other["image"] is not nodes["image"]
    # a name whose arrays turn from labels into intensities swaps its node, never adds one
    count = scene.GetNumberOfNodes()
    swapped = ss.update_preview_nodes({"label": np.zeros((2, 3, 4), np.float32)}, scene=scene)
    assert swapped["label"].GetClassName() == "vtkMRMLScalarVolumeNode"
    assert scene.GetNodeByID(nodes["label"].GetID()) is None
    back = ss.update_preview_nodes({"label": np.zeros((2, 3, 4), np.uint8)}, scene=scene)
    assert back["label"].GetClassName() == "vtkMRMLLabelMapVolumeNode"
    assert scene.GetNodeByID(swapped["label"].GetID()) is None
    assert len([n for n in _volumes(scene) if n.GetAttribute(ss.ATTRIBUTE) ==
                "preview:JCSAugment preview:label"]) == 1


def _volumes(scene):
    nodes = scene.GetNodesByClass("vtkMRMLVolumeNode")
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())]


def _column(table_node, name):
    col = table_node.GetTable().GetColumnByName(name)
    assert col is not None, name
    return [col.GetValue(i) for i in range(col.GetNumberOfTuples()
                                            if hasattr(col, "GetNumberOfTuples")
                                            else col.GetNumberOfValues())]


def test_metrics_table(scene):
    rows = [{"case": "c1", "dice": 0.81, "hd95": 3.5}, {"case": "c2", "dice": 0.5, "note": "x"},
            {"case": "mean", "dice": 0.655, "hd95": None}]
    node = ss.metrics_table_node(rows, "JCSAugment metrics", scene=scene)
    assert node.GetName() == "JCSAugment metrics"
    table = node.GetTable()
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == \
        ["case", "dice", "hd95", "note"]
    assert table.GetNumberOfRows() == 3
    assert _column(node, "case") == ["c1", "c2", "mean"]
    assert _column(node, "dice") == [0.81, 0.5, 0.655]
    hd = _column(node, "hd95")
    assert hd[0] == 3.5 and np.isnan(hd[1]) and np.isnan(hd[2])
    assert _column(node, "note") == ["", "x", ""]
    again = ss.metrics_table_node(rows[:1], "JCSAugment metrics", scene=scene)
    assert again is node and node.GetTable().GetNumberOfRows() == 1


def test_curves_table_and_chart(scene):
    table, chart = ss.curve_plot_nodes("JCSAugment loss", scene=scene)
    assert table.IsA("vtkMRMLTableNode") and chart.IsA("vtkMRMLPlotChartNode")
    curves = {"train loss": [(1, 0.9), (2, 0.7), (3, 0.6)], "val Dice": [(2, 0.3)]}
    ss.update_curve_table(table, curves)
    assert _column(table, "train loss x") == [1.0, 2.0, 3.0]
    assert _column(table, "train loss") == [0.9, 0.7, 0.6]
    val = _column(table, "val Dice")
    assert val[0] == 0.3 and np.isnan(val[1:]).all()
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    series = [chart.GetNthPlotSeriesNode(i) for i in range(2)]
    assert [s.GetName() for s in series] == ["train loss", "val Dice"]
    assert all(s.GetTableNodeID() == table.GetID() for s in series)
    assert series[1].GetXColumnName() == "val Dice x" and series[1].GetYColumnName() == "val Dice"
    curves["val Dice"].append((4, 0.5))
    count = scene.GetNumberOfNodes()
    again = ss.curve_plot_nodes("JCSAugment loss", scene=scene)
    assert again == (table, chart)
    ss.update_curve_table(table, curves)
    assert scene.GetNumberOfNodes() == count and chart.GetNumberOfPlotSeriesNodes() == 2
    assert _column(table, "val Dice") == [0.3, 0.5, pytest.approx(np.nan, nan_ok=True)]


def test_export_cases_writes_job_cases(scene, tmp_path):
    m = _matrix("oblique")
    a = _volume(scene, "a T1", np.zeros((20, 28, 24), np.float32), m)
    a2 = _volume(scene, "a FLAIR", np.ones((20, 28, 24), np.float32), m)
    la = _volume(scene, "a label", _blob(), m, "vtkMRMLLabelMapVolumeNode")
    b = _volume(scene, "b T1", np.zeros((20, 28, 24), np.float32), _matrix("anisotropic"))
    b2 = _volume(scene, "b FLAIR", np.zeros((20, 28, 24), np.float32), m)
    run = tmp_path / "run"
    out = ss.export_cases([{"case_id": "case a", "image_nodes": [a, a2], "label_node": la,
                            "split": "train"},
                           {"case_id": "b", "image_nodes": [b, b], "label_node": None,
                            "split": None}], run / "data", relative_to=str(run))
    assert out[0] == {"id": "case a", "images": ["data/case_a_0000.nrrd", "data/case_a_0001.nrrd"],
                      "label": "data/case_a_label.nrrd", "split": "train"}
    assert out[1]["label"] is None and out[1]["split"] is None
    _assert_file(str(run / out[0]["label"]), _blob(), m)
    no_split = ss.export_cases([{"id": "c", "image_nodes": [a], "label_node": la}], run / "d2")
    assert "split" not in no_split[0] and os.path.isabs(no_split[0]["images"][0])
    # the panel's job builder takes them as they are
    settings_mod = pytest.importorskip("JCSAugmentLib.panel.settings")
    from JCSAugmentLib.run.job import Job
    if hasattr(settings_mod, "PanelSettings") and hasattr(settings_mod, "build_job"):
        job = settings_mod.build_job(out, settings_mod.PanelSettings(mode="heuristic"))
        Job.from_dict(job)
    with pytest.raises(SceneError, match="channel 2 'b FLAIR' is not on the grid of channel 1"):
        ss.export_cases([{"case_id": "b", "image_nodes": [b, b2], "label_node": None}],
                        tmp_path / "x")
    with pytest.raises(SceneError, match="same name"):
        ss.export_cases([{"case_id": "a/1", "image_nodes": [a]},
                         {"case_id": "a 1", "image_nodes": [a]}], tmp_path / "x")
    with pytest.raises(SceneError, match="case 'z' has no image"):
        ss.export_cases([{"case_id": "z", "image_nodes": []}], tmp_path / "x")
    with pytest.raises(SceneError, match="case 'a': label map 'a label' is not on the grid"):
        ss.export_cases([{"case_id": "a", "image_nodes": [b], "label_node": la}], tmp_path / "x")


# ----------------------------------------------------------------------------- end to end

def test_scene_to_worker_to_scene_end_to_end(scene, tmp_path):
    """Scene nodes -> run folder -> the real worker trains 2 iterations -> the real predict
    command -> the result is back in the scene on the input's exact grid."""
    from JCSAugmentLib.demo_augment import synthetic_case
    from JCSAugmentLib.run.job import save_job
    grids = {"c0": _matrix("oblique"), "c1": _matrix("oblique-flipped"),
             "c2": _matrix("anisotropic")}
    cases = []
    for k, (cid, m) in enumerate(grids.items()):
        img, lab, _roi = synthetic_case(size=(20, 28, 24), seed=k)
        image = _volume(scene, f"{cid} MR", sitk.GetArrayFromImage(img), m)
        label = _volume(scene, f"{cid} label", sitk.GetArrayFromImage(lab), m,
                        "vtkMRMLLabelMapVolumeNode")
        cases.append({"case_id": cid, "image_nodes": [image], "label_node": label,
                      "split": {"c0": "train", "c1": "validation", "c2": "test"}[cid]})
    run = str(tmp_path / "run")
    exported = ss.export_cases(cases, os.path.join(run, "data"), relative_to=run)
    splits = {s: [c["id"] for c in exported if c["split"] == s]
              for s in ("train", "validation", "test")}
    for c in exported:
        del c["split"]
    save_job(run, {"schema": 1, "data": {"cases": exported, "splits": splits},
                   "model": {"backbone": "unet3d", "patch_size": [16, 16, 16],
                             "base_features": 2},
                   "training": {"mode": "joint", "epochs": 1, "iterations_per_epoch": 2,
                                "batch_size": 4, "val_batch_size": 2, "tea_copies": 2,
                                "preview_every": 0, "checkpoint_every": 1,
                                "validate_every": 1},
                   "device": "cpu", "seed": 3})
    # one thread: a tiny job runs faster so, and much faster on a busy shared CPU
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    train = subprocess.run([sys.executable, "-m", "JCSAugmentLib", "train", run, "--quiet"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert train.returncode == 0, train.stdout + train.stderr
    with open(os.path.join(run, "job.json")) as f:
        assert json.load(f)["data"]["cases"][2]["images"] == ["data/c2_0000.nrrd"]
    test_node = cases[2]["image_nodes"][0]
    out = os.path.join(run, "predictions")
    pred = subprocess.run([sys.executable, "-m", "JCSAugmentLib", "predict", "--run", run,
                           "--image", os.path.join(run, exported[2]["images"][0]), "--out", out,
                           "--tea", "learned", "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert pred.returncode == 0, pred.stdout + pred.stderr
    files = [f for f in os.listdir(out) if f.endswith((".nrrd", ".nii.gz", ".nii", ".mha"))]
    assert len(files) == 1, files
    node = ss.load_label_map(os.path.join(out, files[0]), test_node)
    assert node.GetName() == "c2 MR segmentation"
    assert np.array_equal(ss.node_ijk_to_ras(node), ss.node_ijk_to_ras(test_node))
    result = ss._node_array(node)
    assert result.shape == (20, 28, 24) and set(np.unique(result)) <= {0, 1, 2}
    seg = ss.label_map_to_segmentation(node) if result.any() else None
    assert seg is None or seg.GetSegmentation().GetNumberOfSegments() >= 1

import numpy as np
import pytest

from pose_toss.skeletons import COCO17, LSP14, MPII16, to_common14


def test_lsp_order():
    assert LSP14.joint_names == (
        "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "r_wrist", "r_elbow", "r_shoulder",
        "l_shoulder", "l_elbow", "l_wrist", "neck", "head_top")


@pytest.mark.parametrize("sk", [LSP14, MPII16, COCO17])
def test_flip_pairs_swap_sides_by_name(sk):
    perm = sk.flip_index
    assert sorted(perm) == list(range(sk.num_joints))
    assert (perm[perm] == np.arange(sk.num_joints)).all()  # an involution
    for i, name in enumerate(sk.joint_names):
        mirrored = sk.joint_names[perm[i]]
        if name.startswith("r_"):
            assert mirrored == "l_" + name[2:]
        elif name.startswith("l_"):
            assert mirrored == "r_" + name[2:]
        else:
            assert mirrored == name
    coord = sk.flip_coordinate_index
    assert (coord[0::2] == 2 * perm).all() and (coord[1::2] == 2 * perm + 1).all()


@pytest.mark.parametrize("sk", [LSP14, MPII16, COCO17])
def test_link_matrix_joins_exactly_the_limbs_ends_both_ways(sk):
    pairs = {(a, b) for a, b in sk.limbs} | {(b, a) for a, b in sk.limbs}
    got = sk.link_matrix
    assert got.shape == (sk.num_joints, sk.num_joints)
    assert {(int(a), int(b)) for a, b in zip(*got.nonzero(), strict=True)} == pairs


@pytest.mark.parametrize("sk", [LSP14, MPII16, COCO17])
def test_limb_sides(sk):
    for (a, b), side in zip(sk.limbs, sk.limb_sides, strict=False):
        names = sk.joint_names[a] + sk.joint_names[b]
        if side == "right":
            assert "r_" in names and "l_" not in names


def test_mpii_to_common():
    joints = np.arange(32, dtype=float).reshape(16, 2)
    vis = np.ones(16)
    vis[MPII16.index("l_wrist")] = 0
    out, ovis = to_common14(MPII16, joints, vis)
    for name in ("r_ankle", "l_shoulder", "head_top"):
        assert (out[LSP14.index(name)] == joints[MPII16.index(name)]).all()
    assert (out[LSP14.index("neck")] == joints[MPII16.index("upper_neck")]).all()
    assert ovis[LSP14.index("l_wrist")] == 0 and ovis.sum() == 13


def test_coco_to_common():
    rng = np.random.default_rng(0)
    joints = rng.uniform(0, 100, (17, 2))
    out, vis = to_common14("coco17", joints, np.ones(17))
    neck = 0.5 * (joints[COCO17.index("l_shoulder")] + joints[COCO17.index("r_shoulder")])
    assert np.allclose(out[LSP14.index("neck")], neck)
    assert vis[LSP14.index("head_top")] == 0  # COCO has no head top
    assert np.allclose(out[LSP14.index("r_knee")], joints[COCO17.index("r_knee")])
    v = np.ones(17)
    v[COCO17.index("r_shoulder")] = 0
    _, vis = to_common14("coco17", joints, v)
    assert vis[LSP14.index("neck")] == 0 and vis[LSP14.index("r_shoulder")] == 0
    with pytest.raises(ValueError, match=r"expected joints of shape \(17, 2\)"):
        to_common14("coco17", joints[:5], np.ones(5))


def test_the_onnx_example_draws_the_skeletons_limbs():
    import importlib.util
    from pathlib import Path

    from pose_toss.skeletons import COCO17, LSP14, MPII16

    path = Path(__file__).resolve().parents[1] / "examples" / "onnx_inference.py"
    spec = importlib.util.spec_from_file_location("onnx_inference", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)  # the example's copy of the limbs must stay the skeletons'
    for skeleton in (LSP14, MPII16, COCO17):
        assert example.LIMBS[skeleton.num_joints] == list(skeleton.limbs)


def test_yaml_skeletons_round_trip_and_bad_ones_name_the_file_and_key(tmp_path):
    from pose_toss.skeletons import COCO17, get_skeleton, load_skeleton, skeleton_from_coco_category

    good = tmp_path / "tri.yaml"
    good.write_text("name: tri\njoints: [top, l_foot, r_foot]\nflip_pairs: [[l_foot, r_foot]]\n"
                    "links: [[top, 1], [top, 2]]\nsigmas: [0.1, 0.2, 0.2]\n")
    tri = get_skeleton(str(good))
    assert tri == load_skeleton(good) and tri.flip_index.tolist() == [0, 2, 1] and tri.limbs == ((0, 1), (0, 2))
    assert tri.oks_sigmas.tolist() == [0.1, 0.2, 0.2] and get_skeleton(tri.to_dict()) == tri
    assert tri.limb_sides == ("left", "right")
    cases = {"joints: [a, b]\nflip_pairs: [[a, c]]\n": r"bad.yaml: flip_pairs: unknown joint 'c'",
             "joints: [a, a]\n": r"bad.yaml: skeleton 'bad': joint names must be distinct",
             "joints: [a, b]\nsigmas: [0.1]\n": r"sigmas must be 2 positive numbers",
             "joints: [a, b]\ncolour: red\n": r"bad.yaml: unknown keys \['colour'\]",
             "- a\n- b\n": r"bad.yaml: expected a mapping"}
    for text, message in cases.items():
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(ValueError, match=message):
            load_skeleton(tmp_path / "bad.yaml")
    # COCO's own category (long names) is the built-in COCO-17.
    names = [n.replace("l_", "left_").replace("r_", "right_") if n[:2] in ("l_", "r_") else n
             for n in COCO17.joint_names]
    assert skeleton_from_coco_category({"keypoints": names, "skeleton": []}) is COCO17

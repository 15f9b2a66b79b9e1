"""From photos and videos to people: PoseEstimator, the detector path, tracks on a two-person clip, and
`pose-toss predict` end to end."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import QUICK

from pose_toss import PoseEstimator, load_config, save_model
from pose_toss.cli import main
from pose_toss.coco_results import coco_result
from pose_toss.data.media import as_rgb_image, write_video
from pose_toss.data.video import synthetic_sequence
from pose_toss.engine.predict_media import track_video
from pose_toss.engine.trainer import build_model_from_config
from pose_toss.models.checkpoint import load_model
from pose_toss.models.detector import COCO_PERSON, PersonDetector, build_detector
from pose_toss.skeletons import LSP14

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_model(build_model_from_config(load_config(QUICK), 14), path)
    return path


def person_detector(seed: int = 0) -> torch.nn.Module:
    """A randomly initialised torchvision detector whose classifier favours "person": random boxes, all people."""
    torch.manual_seed(seed)
    model = build_detector("fasterrcnn_mobilenet_v3_large_320_fpn", "random")
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[COCO_PERSON] = 20.0
    return model


def test_load_model_returns_an_eval_mode_model(model_file):
    model = load_model(model_file)
    assert not model.training and not any(m.training for m in model.modules())


def test_scores_are_the_expected_keypoint_similarities_eval_writes(model_file):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    boxes = np.array([[10.0, 5.0, 60.0, 100.0], [80.0, 20.0, 50.0, 90.0]])
    people = PoseEstimator(model_file)(image, boxes)
    pred = load_model(model_file).predict(image, [boxes])[0]
    assert len(people) == 2
    for person, joints, cov, box in zip(people, pred["joints"], pred["cov"], boxes, strict=True):
        np.testing.assert_allclose(person.keypoints, joints)
        # eval's scores: coco_result with the person's box area; and independently, the closed form per joint.
        from_eval = np.asarray(coco_result(joints, cov, 0, area=box[2] * box[3])["keypoints"]).reshape(-1, 3)[:, 2]
        np.testing.assert_allclose(person.keypoint_scores, from_eval, atol=1e-4)  # eval rounds to 4 decimals
        blocks = torch.stack([torch.from_numpy(cov[2 * j:2 * j + 2, 2 * j:2 * j + 2]) for j in range(14)])
        area, kappa = box[2] * box[3], 2 * LSP14.oks_sigmas
        direct = [np.linalg.det(np.eye(2) + b.numpy() / (area * kappa[j] ** 2)) ** -0.5 for j, b in enumerate(blocks)]
        np.testing.assert_allclose(person.keypoint_scores, direct, rtol=1e-9)
        assert person.score == pytest.approx(person.keypoint_scores.mean())  # given boxes score 1


def test_a_float_image_is_refused_and_bgr_is_converted(model_file, tmp_path):
    estimator = PoseEstimator(model_file)
    rgb = np.random.default_rng(1).integers(0, 256, (96, 80, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"expected a uint8 image \(values 0-255\), got dtype float32"):
        estimator(rgb.astype(np.float32) / 255)
    with pytest.raises(ValueError, match="got dtype float64"):
        load_model(model_file).predict(rgb / 255.0)  # the model's own predict refuses it too
    from_rgb = estimator(rgb)[0]
    from_bgr = estimator(np.ascontiguousarray(rgb[:, :, ::-1]), bgr=True)[0]
    np.testing.assert_array_equal(from_rgb.keypoints, from_bgr.keypoints)
    cv2.imwrite(str(tmp_path / "photo.png"), rgb[:, :, ::-1])  # OpenCV writes BGR; a path is read as RGB
    np.testing.assert_array_equal(estimator(tmp_path / "photo.png")[0].keypoints, from_rgb.keypoints)
    np.testing.assert_array_equal(as_rgb_image(rgb[:, :, 0]), np.repeat(rgb[:, :, :1], 3, axis=2))


@pytest.mark.slow
def test_the_detector_path_runs_end_to_end_with_random_weights(model_file):
    image = np.random.default_rng(2).integers(0, 256, (200, 240, 3), dtype=np.uint8)
    detector = PersonDetector(person_detector(), score_threshold=0.5, max_people=4)
    boxes = detector(image)
    assert boxes.shape[1] == 5 and 1 <= len(boxes) <= 4 and (boxes[:, 4] >= 0.5).all()
    assert (np.diff(boxes[:, 4]) <= 0).all()  # highest score first
    people = PoseEstimator(model_file, detector)(image)
    assert len(people) == len(boxes)
    for person, box in zip(people, boxes, strict=True):
        np.testing.assert_allclose(person.box, box[:4])
        assert person.detection_score == pytest.approx(box[4])
        assert person.score == pytest.approx(box[4] * person.keypoint_scores.mean())  # detector x keypoints
    with pytest.raises(ValueError, match="unknown detector 'yolo'"):
        build_detector("yolo", "random")


def two_person_clip(path: Path, frames: int = 24) -> list[list[np.ndarray]]:
    """Two synthetic figures side by side walking towards each other; returns each frame's true boxes
    (left person first)."""
    a = synthetic_sequence(frames, 128, seed=3)
    b = synthetic_sequence(frames, 128, seed=4)
    images, boxes = [], []
    for t in range(frames):
        shift = int(2 * t)
        canvas = np.zeros((128, 320, 3), np.uint8)
        canvas[:, shift:shift + 128] = a[t]["image"]
        canvas[:, 192 - shift:320 - shift] = np.maximum(canvas[:, 192 - shift:320 - shift], b[t]["image"])
        images.append(canvas)
        ba = np.asarray(a[t]["bbox"], dtype=np.float64) + [shift, 0, 0, 0]
        bb = np.asarray(b[t]["bbox"], dtype=np.float64) + [192 - shift, 0, 0, 0]
        boxes.append([ba, bb])
    assert write_video(path, images, fps=10) == frames
    return boxes


@pytest.mark.slow
def test_a_two_person_clip_becomes_two_tracks_with_the_right_identities(model_file, tmp_path):
    clip = tmp_path / "clip.mp4"
    truth = two_person_clip(clip)
    frame = iter(range(10**6))

    def detector(image):  # the true boxes, in a shuffled order each frame, with scores
        t = next(frame)
        order = np.random.default_rng(t).permutation(2)
        return np.array([[*truth[t][k], 0.9 - 0.1 * k] for k in order])

    results = track_video(PoseEstimator(model_file, detector), clip, progress=False)
    assert len(results) == 2 * len(truth)
    for t in range(len(truth)):
        here = [r for r in results if r["frame"] == t]
        left = min(here, key=lambda r: r["bbox"][0])
        right = max(here, key=lambda r: r["bbox"][0])
        assert (left["track_id"], right["track_id"]) == (0, 1), t


@pytest.mark.slow
def test_predict_command_on_images_and_a_video(model_file, tmp_path):
    clip = tmp_path / "in" / "clip.mp4"
    clip.parent.mkdir()
    two_person_clip(clip, frames=8)
    photo = tmp_path / "in" / "photo.jpg"
    cv2.imwrite(str(photo), np.random.default_rng(3).integers(0, 256, (90, 70, 3), dtype=np.uint8))
    weights = tmp_path / "detector.pth"
    torch.save(person_detector().state_dict(), weights)
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(model_file), "--inputs", str(clip.parent), "--out", str(out),
                 "--detector", "fasterrcnn_mobilenet_v3_large_320_fpn", "--detector-weights", str(weights),
                 "--quiet"]) == 0
    results = json.loads((out / "predictions.json").read_text())
    stills = [r for r in results if r["file_name"] == "photo.jpg"]
    video = [r for r in results if r.get("video") == "clip.mp4"]
    assert stills and video and {r["frame"] for r in video} == set(range(8))
    for r in results:
        assert len(r["keypoints"]) == 42 and np.asarray(r["covariance"]).shape == (28, 28)
        assert r["score"] == pytest.approx(r["detection_score"] * r["keypoint_score"], abs=1e-4)
    picture = cv2.imread(str(out / "pictures" / "photo.png"))
    assert picture is not None and picture.shape[0] > 720  # the frame enlarged, and the legend below it
    capture = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 8
    capture.release()
    # An existing output is refused; a detector name that does not exist is named.
    assert main(["predict", "--checkpoint", str(model_file), "--inputs", str(photo), "--out", str(out)]) == 2
    assert main(["predict", "--checkpoint", str(model_file), "--inputs", str(photo), "--out", str(tmp_path / "o2"),
                 "--detector", "yolo", "--detector-weights", "random"]) == 2


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data")
def test_predict_on_the_real_images(model_file, tmp_path):
    images = sorted((SHARED / "coco").glob("*.jpg"))
    out = tmp_path / "real"
    assert main(["predict", "--checkpoint", str(model_file), "--inputs", *map(str, images), "--out", str(out),
                 "--boxes", str(SHARED / "coco" / "test_coco.json"), "--score-threshold", "0", "--quiet"]) == 0
    results = json.loads((out / "predictions.json").read_text())
    assert {r["file_name"] for r in results} <= {p.name for p in images} and results
    assert len(list((out / "pictures").glob("*.png"))) == len(images)

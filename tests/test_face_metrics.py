"""dlib face metrics (training.face_metrics) and the evaluation core (training.evaluate).

Real-face checks read the Wav2Pix data from ``../shared/data`` (or ``$AVGAN_SHARED_DATA``) and skip
when it is absent. They use 10 distinct face crops per identity, decoded and downscaled to 64 px
exactly as training does.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from training import face_metrics as fm

REPO = Path(__file__).resolve().parent.parent


def shared_data() -> Path:
    """``$AVGAN_SHARED_DATA`` or ``<repo>/../shared/data``."""
    return Path(os.environ.get("AVGAN_SHARED_DATA", REPO.parent / "shared" / "data"))


W2P = shared_data() / "wav2pix" / "train"
needs_data = pytest.mark.skipif(
    not W2P.is_dir(), reason=f"real Wav2Pix data not found at {W2P} (set AVGAN_SHARED_DATA)"
)


@pytest.fixture(scope="module")
def analyzer() -> fm.FaceAnalyzer:
    return fm.FaceAnalyzer()


def real_faces(per_identity: int = 10, size: int = 64) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``per_identity`` distinct real face crops per identity, uint8 [N, size, size, 3], labels, names."""
    from datastore.images import channel_order, decode_image

    order = channel_order(W2P)  # the published crops: red and blue swapped, undone here
    identities = sorted(p.name for p in W2P.iterdir() if p.is_dir())
    images, labels = [], []
    for k, ident in enumerate(identities):
        files = sorted((W2P / ident).glob("cropped_face_frame_*.png"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
        seen: set[str] = set()
        # spread over the identity's frames: every 25th file, distinct content only
        for f in files[::25]:
            data = f.read_bytes()
            digest = hashlib.sha1(data).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            images.append(decode_image(data, size, str(f), order))
            labels.append(k)
            if len(seen) == per_identity:
                break
    return np.stack(images), np.asarray(labels), identities


@pytest.fixture(scope="module")
def real() -> tuple[np.ndarray, np.ndarray, list[str]]:
    if not W2P.is_dir():
        pytest.skip(f"real Wav2Pix data not found at {W2P}")
    return real_faces()


@pytest.fixture(scope="module")
def real_analysis(analyzer, real) -> fm.FaceAnalysis:
    return analyzer.analyze(real[0])


# ---------------------------------------------------------------------- models and input checks
def test_models_dir_has_dlib_files():
    folder = fm.models_dir()
    assert (folder / fm.LANDMARKS_68).is_file()
    assert (folder / fm.RECOGNITION_RESNET).is_file()


def test_rejects_float_and_grey_images(analyzer):
    with pytest.raises(ValueError, match="uint8"):
        analyzer.detect(np.zeros((1, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        analyzer.detect(np.zeros((1, 64, 64), np.uint8))
    with pytest.raises(ValueError, match="interpolation"):
        fm.FaceAnalyzer(interpolation="nearest")


# ---------------------------------------------------------------------- real faces
@needs_data
def test_real_64px_faces_are_detected(real, real_analysis):
    images = real[0]
    assert images.shape == (20, 64, 64, 3)
    ratio = real_analysis.detection_ratio
    assert ratio >= 0.85, f"only {ratio:.2f} of real 64 px faces detected"
    for box in real_analysis.boxes:
        if box is not None:  # boxes are in the 64 px input's coordinates
            assert -16 <= box.left < box.right <= 80 and -16 <= box.top < box.bottom <= 80


@needs_data
def test_real_faces_embeddings_and_identity_accuracy(real, real_analysis):
    _, labels, identities = real
    emb = real_analysis.embeddings
    assert emb.shape == (20, 128) and emb.dtype == np.float32
    assert real_analysis.n_fallback == int((~real_analysis.detected).sum())
    first = np.concatenate([np.flatnonzero(labels == k)[:5] for k in range(len(identities))])
    second = np.setdiff1d(np.arange(len(labels)), first)
    centroids = fm.identity_centroids(emb[first], labels[first], len(identities))
    assert fm.identity_accuracy(emb[second], labels[second], centroids) >= 0.9
    # same person: small distances; the dlib same-person threshold is 0.6
    d = fm.diversity(emb, labels, emb, labels, len(identities))
    for k in range(len(identities)):
        assert 0.05 < d[k]["real"] < 0.6 and d[k]["ratio"] == pytest.approx(1.0)


@needs_data
def test_detection_is_invariant_to_input_size(analyzer, real):
    """128 px images (already over the 64 px regime) are detected too (upscaled to 256)."""
    import cv2

    big = np.stack([cv2.resize(im, (128, 128), interpolation=cv2.INTER_CUBIC) for im in real[0][:6]])
    assert fm.detection_ratio(analyzer.detect(big)) >= 0.8


def test_noise_images_have_low_detection_ratio(analyzer):
    """The metric can fail: noise, blurred noise and flat images contain no face."""
    import cv2

    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    blurred = np.stack([cv2.GaussianBlur(x, (0, 0), 3) for x in noise])
    blurred = ((blurred - blurred.min()) / max(1, np.ptp(blurred)) * 255).astype(np.uint8)
    flat = np.full((2, 64, 64, 3), 128, np.uint8)
    images = np.concatenate([noise, blurred, flat])
    assert fm.detection_ratio(analyzer.detect(images)) <= 0.1
    emb = analyzer.embed(images[:3])
    assert emb.shape == (3, 128) and np.isfinite(emb).all()
    assert analyzer.last_fallback_count == 3  # every image embedded on its full-image box


# ---------------------------------------------------------------------- metric maths
def test_detection_ratio_inputs():
    box = fm.FaceBox(0, 0, 10, 10)
    assert fm.detection_ratio([box, None, box, None]) == 0.5
    assert fm.detection_ratio(np.array([True, True, False])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        fm.detection_ratio([])


def test_frechet_distance_zero_for_same_set_and_grows_with_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 0.05, (300, 32))
    assert fm.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifts = [0.01, 0.05, 0.1]
    fds = [fm.frechet_distance(a, a + s) for s in shifts]
    assert fds == sorted(fds)
    for s, fd in zip(shifts, fds):  # a pure mean shift: FD = |shift|^2 = s^2 * D
        assert fd == pytest.approx(s * s * 32, rel=1e-4)
    wider = fm.frechet_distance(a, rng.normal(0.0, 0.1, (300, 32)))
    assert wider > fm.frechet_distance(a, rng.normal(0.0, 0.05, (300, 32)))
    # the two terms: a shift lands in the mean term, a wider spread in the covariance term
    mean_term, cov_term = fm.frechet_terms(a, a + 0.1)
    assert mean_term == pytest.approx(0.01 * 32, rel=1e-6) and cov_term == pytest.approx(0.0, abs=1e-6)
    b = rng.normal(0.0, 0.1, (300, 32))
    mean_term, cov_term = fm.frechet_terms(a, b)
    assert cov_term > 5 * mean_term and mean_term + cov_term == pytest.approx(fm.frechet_distance(a, b))


def test_frechet_distance_rank_deficient_covariances_are_finite():
    """Fewer samples than dimensions (singular covariances, complex sqrtm parts) still give a finite value."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(12, 48)), rng.normal(size=(20, 48))
    fd = fm.frechet_distance(a, b)
    assert np.isfinite(fd) and fd > 0
    with pytest.raises(ValueError, match="at least 2"):
        fm.frechet_distance(a[:1], b)
    with pytest.raises(ValueError, match="equal D"):
        fm.frechet_distance(a, b[:, :24])


def test_identity_accuracy_and_diversity_synthetic():
    centroids = np.array([[0.0, 0.0], [1.0, 0.0]], np.float32)
    emb = np.array([[0.1, 0.0], [0.9, 0.1], [0.2, 0.0], [0.4, 0.0]])
    assert fm.identity_accuracy(emb, np.array([0, 1, 0, 1]), centroids) == 0.75
    with pytest.raises(ValueError, match="no centroid"):
        fm.identity_accuracy(emb, np.array([0, 1, 0, 2]), centroids)
    # collapsed generator: all faces of an identity identical -> diversity ratio 0
    real = np.random.default_rng(2).normal(size=(10, 4))
    labels = np.array([0] * 5 + [1] * 5)
    collapsed = np.repeat(real[[0, 5]], 5, axis=0)
    div = fm.diversity(collapsed, labels, real, labels, 2)
    assert div[0]["ratio"] == 0.0 and div[1]["ratio"] == 0.0
    assert np.isnan(fm.diversity(real[:1], labels[:1], real, labels, 2)[0]["ratio"])


def test_evaluate_embeddings_reference_figures():
    from training.face_eval import evaluate_embeddings, format_table

    rng = np.random.default_rng(3)
    means = np.array([[0.3] * 8, [-0.3] * 8])
    train_lab, val_lab = np.repeat([0, 1], 40), np.repeat([0, 1], 10)
    train = means[train_lab] + rng.normal(0, 0.05, (80, 8))
    val = means[val_lab] + rng.normal(0, 0.05, (20, 8))
    gen_lab = np.repeat([0, 1], 15)
    gen = means[1 - gen_lab] + 0.2 + rng.normal(0, 0.01, (30, 8))  # wrong identity, shifted, little variety
    m = evaluate_embeddings(
        gen,
        np.ones(30, bool),
        gen_lab,
        val,
        np.ones(20, bool),
        val_lab,
        ["a", "b"],
        train,
        np.ones(80, bool),
        train_lab,
    )
    assert m["identity_accuracy"] == 0.0 and m["reference"]["identity_accuracy"] == 1.0
    assert m["frechet_distance"] > 10 * m["reference"]["frechet_distance_train_vs_val"]
    terms = m["frechet_terms"]
    assert terms["mean"] + terms["covariance"] == pytest.approx(m["frechet_distance"])
    assert terms["mean"] > terms["covariance"]  # the generated faces sit elsewhere more than they spread differently
    per_id, ref_per_id = (
        m["frechet_distance_per_identity"],
        m["reference"]["frechet_distance_train_vs_val_per_identity"],
    )
    assert set(per_id) == set(ref_per_id) == {"a", "b"}
    assert all(per_id[n] > 10 * ref_per_id[n] for n in per_id)  # each identity's faces are the other's
    assert m["diversity_ratio"] < 0.5
    assert m["detection_ratio"] == 1.0 and m["embedding_fallbacks"] == 0
    table = format_table(m)
    assert "identity accuracy" in table and "mean term / covariance term" in table and "Fréchet distance b" in table


@needs_data
def test_evaluate_images_on_real_faces(analyzer, real):
    """Real faces scored as if generated: near-perfect figures (the reference the model is compared with)."""
    from training.face_eval import evaluate_images

    images, labels, identities = real[0][::2], real[1][::2], real[2]  # 5 faces per identity
    m = evaluate_images(images, labels, images, labels, identities, analyzer=analyzer)
    assert m["detection_ratio"] >= 0.85
    assert m["identity_accuracy"] >= 0.9
    assert m["frechet_distance"] == pytest.approx(0.0, abs=1e-6)
    assert m["diversity_ratio"] == pytest.approx(1.0)
    assert all(p["std_ratio"] == pytest.approx(1.0) for p in m["pose"].values())  # the same faces: same spread
    assert sorted(m["pose_per_identity"]) == sorted(identities)
    for per in m["pose_per_identity"].values():
        assert all(p["std_ratio"] == pytest.approx(1.0) for p in per.values())
    # one identity's faces scored against both: its own spread differs from the pooled one
    one = labels == 0
    m1 = evaluate_images(images[one], labels[one], images, labels, identities, analyzer=analyzer)
    assert list(m1["pose_per_identity"]) == [identities[0]]
    assert m1["pose_per_identity"][identities[0]]["yaw"]["std_ratio"] == pytest.approx(1.0)
    assert m1["pose"]["yaw"]["std_ratio"] != pytest.approx(1.0)


def test_reduce_resolution_keeps_size_and_removes_detail():
    from training.face_metrics import reduce_resolution

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    half = reduce_resolution(images, 2)
    assert half.shape == images.shape and half.dtype == np.uint8
    assert np.array_equal(reduce_resolution(images, 1), images)
    # a 2x2-constant image survives; white noise loses most of its high-frequency energy
    blocky = np.repeat(np.repeat(images[:, ::2, ::2], 2, axis=1), 2, axis=2)
    assert np.abs(reduce_resolution(blocky, 2).astype(int) - blocky).mean() < np.abs(half.astype(int) - images).mean()
    assert np.diff(half.astype(float), axis=2).std() < 0.6 * np.diff(images.astype(float), axis=2).std()
    with pytest.raises(ValueError, match="factor"):
        reduce_resolution(images, 0)
    with pytest.raises(ValueError, match="uint8"):
        reduce_resolution(images.astype(np.float32), 2)


def test_pose_statistics_of_synthetic_landmarks():
    """Yaw, roll and mouth opening from hand-placed points: eyes 20 px apart, nose 3 px right, lips 4 px apart."""
    p = np.zeros((2, 68, 2))
    p[:, 36:42] = (20.0, 30.0)
    p[:, 42:48] = (40.0, 30.0)
    p[:, 30] = (33.0, 40.0)
    p[:, 62], p[:, 66] = (30.0, 50.0), (30.0, 54.0)
    p[1] = p[1] @ np.array([[np.cos(0.2), np.sin(0.2)], [-np.sin(0.2), np.cos(0.2)]])  # rotate by 0.2 rad
    s = fm.pose_statistics(p)
    assert s["yaw"][0] == pytest.approx(3 / 20)
    assert s["roll_deg"] == pytest.approx([0.0, np.degrees(0.2)])
    assert s["mouth_open"] == pytest.approx([4 / 20, 4 / 20])
    spread = fm.pose_spread(p, np.concatenate([p, np.full((1, 68, 2), np.nan)]))  # NaN rows (no face) left out
    assert spread["roll_deg"]["std_ratio"] == pytest.approx(1.0)
    assert spread["roll_deg"]["real_std"] == pytest.approx(np.degrees(0.1))
    assert np.isnan(fm.pose_spread(p[:1], p[:1])["yaw"]["std_ratio"])  # one face: no spread to compare
    with pytest.raises(ValueError, match=r"\[N, 68, 2\]"):
        fm.pose_statistics(np.zeros((2, 5, 2)))


@needs_data
def test_pose_statistics_of_real_faces_follow_mirroring_and_rotation(analyzer, real):
    """A mirrored face has the opposite yaw; a face rotated by 10 degrees has 10 degrees more roll."""
    import cv2

    images = real[0][:6]
    up = np.stack([cv2.resize(im, (256, 256), interpolation=cv2.INTER_LANCZOS4) for im in images])
    base = analyzer.analyze(up, embed=False)
    mirrored = analyzer.analyze(np.ascontiguousarray(up[:, :, ::-1]), embed=False)
    turn = cv2.getRotationMatrix2D((128, 128), -10, 1.0)  # OpenCV: positive angle = counter-clockwise
    rotated = analyzer.analyze(np.stack([cv2.warpAffine(im, turn, (256, 256)) for im in up]), embed=False)
    ok = base.detected & mirrored.detected & rotated.detected
    assert ok.sum() >= 4
    a, m, r = (fm.pose_statistics(x.landmarks[ok]) for x in (base, mirrored, rotated))
    assert np.abs(a["yaw"] + m["yaw"]).max() < 0.05
    assert np.abs(r["roll_deg"] - a["roll_deg"] - 10).max() < 2.5
    assert np.isnan(base.landmarks[~base.detected]).all()

"""The pipeline on real photos: detection counts, no false faces, FaceDetail shape, verification."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.evaluation.dataset import load_faceset
from edge.rekognition.shapes import DEFAULT_LANDMARKS, face_detail
from edge.vision.pipeline import FacePipeline

# Faces found by each detector range on the group photos of misc/, as the README states them:
# (least, most) for short range, then for full range. The README's table holds the measured counts.
GROUP_COUNTS: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "group_6faces_cast_photo.jpg": ((0, 1), (5, 6)),
    "group_6faces_voc_2008_002079.jpg": ((0, 2), (4, 6)),
    "group_6faces_voc_2008_002470.jpg": ((0, 1), (5, 6)),
    "group_7faces_voc_2007_007763.jpg": ((0, 1), (5, 7)),
    "group_7faces_voc_2008_007676.jpg": ((0, 2), (6, 7)),
    "group_selfie_about7faces.jpg": ((2, 4), (3, 6)),
    "collage_about24faces_4people_bald_guys.jpg": ((1, 4), (15, 24)),
    "crowd_about30faces_small.jpg": ((0, 2), (4, 12)),
    "rotated_6faces_children_circle.jpg": ((1, 3), (1, 4)),
    "two_faces.jpg": ((2, 2), (2, 2)),
    "large_2280x1588_two_faces.jpg": ((2, 2), (2, 2)),
}

NO_FACE = ["noface_street_2482x614.jpg", "noface_random_noise.jpg", "noface_horses.jpg",
           "noface_giraffe_zebra.jpg", "noface_eagle.jpg", "noface_dog_faces_collage.jpg"]


@pytest.mark.parametrize("name", NO_FACE)
def test_no_face_where_there_is_none(pipeline: FacePipeline, full_range_pipeline: FacePipeline, misc: Path,
                                     name: str) -> None:
    data = (misc / name).read_bytes()
    assert pipeline.analyse(data, embed=False).faces == []
    assert full_range_pipeline.analyse(data, embed=False).faces == []


@pytest.mark.parametrize("name", sorted(GROUP_COUNTS))
def test_group_photo_counts(pipeline: FacePipeline, full_range_pipeline: FacePipeline, misc: Path, name: str) -> None:
    data = (misc / name).read_bytes()
    (short_lo, short_hi), (full_lo, full_hi) = GROUP_COUNTS[name]
    assert short_lo <= len(pipeline.analyse(data, embed=False).faces) <= short_hi
    assert full_lo <= len(full_range_pipeline.analyse(data, embed=False).faces) <= full_hi


@pytest.mark.parametrize("name", ["large_3061x4600_one_face.jpg", "large_4352x2903_one_face.jpg",
                                  "format_rgba_32bit.png", "format_grayscale_1channel_lfw_AJ_Cook_0001.jpg"])
def test_single_face_photos(pipeline: FacePipeline, misc: Path, name: str) -> None:
    analysis = pipeline.analyse((misc / name).read_bytes(), max_faces=1)
    assert len(analysis.faces) >= 1
    face = analysis.faces[0]
    assert face.embedding is not None and abs(float(np.linalg.norm(face.embedding)) - 1) < 1e-4
    assert face.confidence > 70


def test_face_detail_has_rekognition_shape(pipeline: FacePipeline, misc: Path) -> None:
    analysis = pipeline.analyse((misc / "two_faces.jpg").read_bytes(), embed=False)
    assert len(analysis.faces) == 2
    for face in analysis.faces:
        detail = face_detail(analysis.image, face)
        box = detail["BoundingBox"]
        assert set(box) == {"Width", "Height", "Left", "Top"}
        assert 0 < box["Width"] < 0.5 and 0 < box["Height"] < 0.5
        assert -0.05 <= box["Left"] <= 1 and -0.05 <= box["Top"] <= 1
        assert [lm["Type"] for lm in detail["Landmarks"]] == list(DEFAULT_LANDMARKS)
        marks = {lm["Type"]: lm for lm in detail["Landmarks"]}
        # eyeLeft is on the image's left, both eyes above the mouth, inside the box.
        assert marks["eyeLeft"]["X"] < marks["eyeRight"]["X"]
        assert marks["eyeLeft"]["Y"] < marks["mouthLeft"]["Y"]
        assert box["Left"] < marks["nose"]["X"] < box["Left"] + box["Width"]
        assert abs(detail["Pose"]["Yaw"]) < 45 and abs(detail["Pose"]["Roll"]) < 30
        assert 0 <= detail["Quality"]["Brightness"] <= 100 and 0 <= detail["Quality"]["Sharpness"] <= 100
        assert 50 < detail["Confidence"] <= 100
    assert len(face_detail(analysis.image, analysis.faces[0], all_attributes=True)["Landmarks"]) == 30


def test_same_person_pairs_score_above_different_person_pairs(pipeline: FacePipeline, faces_dev: Path) -> None:
    faceset = load_faceset(faces_dev)
    rows = np.arange(120)  # pairs.tsv is shuffled: its first rows are a balanced sample
    cache: dict[int, np.ndarray | None] = {}

    def embedding(index: int) -> np.ndarray | None:
        if index not in cache:
            faces = pipeline.analyse(faceset.paths[index].read_bytes(), max_faces=1).faces
            cache[index] = faces[0].embedding if faces else None
        return cache[index]

    scored = [(float(ea @ eb), bool(same)) for (a, b), same in zip(faceset.pairs[rows], faceset.same[rows], strict=True)
              if (ea := embedding(a)) is not None and (eb := embedding(b)) is not None]
    assert len(scored) >= 0.95 * len(rows), "a face was found in too few photos"
    scores = np.array([s for s, _ in scored])
    same = np.array([m for _, m in scored])
    genuine, impostor = scores[same], scores[~same]
    # Ranking: a random same-person pair outscores a random different-person pair almost always.
    auc = float(np.mean(genuine[:, None] > impostor[None, :]))
    assert auc > 0.99
    assert np.median(genuine) > np.max(impostor) - 0.1

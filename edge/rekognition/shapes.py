"""Rekognition's response shapes, made from the pipeline's typed faces and the store's records.

The pipeline and the store return plain data; this is the one place that knows how Rekognition
spells it (ratios of the original image, 0-100 confidences, landmark names).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge.store.models import BoundingBox, FaceRecord
from edge.vision.image import DecodedImage
from edge.vision.pipeline import Face

# Rekognition landmark name -> FaceMesh indices averaged. "Left"/"Right" follow Rekognition:
# eyeLeft is the eye on the image's left (the subject's right eye).
MESH_LANDMARKS: dict[str, tuple[int, ...]] = {
    "eyeLeft": (33, 133, 159, 145), "eyeRight": (263, 362, 386, 374), "nose": (1,),
    "mouthLeft": (61,), "mouthRight": (291,),
    "leftEyeBrowLeft": (70,), "leftEyeBrowRight": (107,), "leftEyeBrowUp": (105,),
    "rightEyeBrowLeft": (336,), "rightEyeBrowRight": (300,), "rightEyeBrowUp": (334,),
    "leftEyeLeft": (33,), "leftEyeRight": (133,), "leftEyeUp": (159,), "leftEyeDown": (145,),
    "rightEyeLeft": (362,), "rightEyeRight": (263,), "rightEyeUp": (386,), "rightEyeDown": (374,),
    "noseLeft": (129,), "noseRight": (358,), "mouthUp": (0,), "mouthDown": (17,),
    "leftPupil": (33, 133, 159, 145), "rightPupil": (263, 362, 386, 374),
    "upperJawlineLeft": (234,), "midJawlineLeft": (172,), "chinBottom": (152,),
    "midJawlineRight": (397,), "upperJawlineRight": (454,),
}
DEFAULT_LANDMARKS = ("eyeLeft", "eyeRight", "mouthLeft", "mouthRight", "nose")


def bounding_box(image: DecodedImage, box: np.ndarray) -> dict[str, float]:
    """A working-pixel box as Rekognition's ratios of the original image."""
    w, h = image.rgb.shape[1], image.rgb.shape[0]
    return {"Width": float(box[2]) / w, "Height": float(box[3]) / h,
            "Left": float(box[0]) / w, "Top": float(box[1]) / h}


def stored_box(box: dict[str, float]) -> BoundingBox:
    """A BoundingBox shape as the store keeps it."""
    return BoundingBox(width=box["Width"], height=box["Height"], left=box["Left"], top=box["Top"])


def face_detail(image: DecodedImage, face: Face, *, all_attributes: bool = False) -> dict[str, Any]:
    """Rekognition's FaceDetail for DEFAULT (or ALL, as far as edge-face measures) attributes."""
    w, h = image.rgb.shape[1], image.rgb.shape[0]
    names = MESH_LANDMARKS if all_attributes else DEFAULT_LANDMARKS
    landmarks = []
    for name in names:
        x, y = face.mesh[list(MESH_LANDMARKS[name]), :2].mean(axis=0)
        landmarks.append({"Type": name, "X": float(x) / w, "Y": float(y) / h})
    return {
        "BoundingBox": bounding_box(image, face.detection.box),
        "Landmarks": landmarks,
        "Pose": {"Roll": face.pose.roll, "Yaw": face.pose.yaw, "Pitch": face.pose.pitch},
        "Quality": {"Brightness": face.quality.brightness, "Sharpness": face.quality.sharpness},
        "Confidence": face.confidence,
    }


def face(record: FaceRecord) -> dict[str, Any]:
    """Rekognition's Face shape for a stored face."""
    box = record.bounding_box
    shape: dict[str, Any] = {
        "FaceId": record.face_id,
        "BoundingBox": {"Width": box.width, "Height": box.height, "Left": box.left, "Top": box.top},
        "ImageId": record.image_id,
        "Confidence": record.confidence,
        "IndexFacesModelVersion": record.index_faces_model_version,
    }
    if record.external_image_id is not None:
        shape["ExternalImageId"] = record.external_image_id
    if record.user_id is not None:
        shape["UserId"] = record.user_id
    return shape

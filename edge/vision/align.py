"""Cut the face crop each embedder was trained on.

dlib's ResNet expects `dlib.get_face_chip(img, shape5, 150, 0.25)`: a similarity transform
from dlib's five points (eye corners, nose base) to its mean-face template, sampled
bilinearly, after halving the image on a Gaussian pyramid while the region is more than
twice the chip. FaceMesh points 263, 362, 33, 133 and 2 stand where dlib's 5-point
predictor puts its points, so the same template applies.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

# dlib/image_transforms/interpolation.h, get_face_chip_details(), 5-point template.
_DLIB_TEMPLATE = np.array([
    [0.8595674595992, 0.2134981538014],
    [0.6460604764104, 0.2289674387677],
    [0.1205750620789, 0.2137274526848],
    [0.3340850613712, 0.2290642403242],
    [0.4901123135679, 0.6277975316475],
])
#: FaceMesh indices standing for dlib's five: left eye outer/inner, right eye outer/inner, nose base.
MESH_DLIB5 = (263, 362, 33, 133, 2)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama, no reflection) mapping src points onto dst: 2x3."""
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1, 1] = -1
    rot = u @ d @ vt
    scale = float(np.trace(np.diag(s) @ d) / src_c.var(0).sum())
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = dst_mean - m[:, :2] @ src_mean
    return m


def dlib_chip(rgb: np.ndarray, five: np.ndarray, size: int = 150, padding: float = 0.25) -> np.ndarray:
    """dlib's face chip from five image points (dlib's 5-point order)."""
    template = (padding + _DLIB_TEMPLATE) / (2 * padding + 1) * size
    tform = similarity_transform(template, five.astype(np.float64))
    scale = math.hypot(tform[0, 0], tform[1, 0])
    angle = math.atan2(tform[1, 0], tform[0, 0])
    # dlib's chip_details keeps the scale and the image point under the chip's centre.
    centre = tform[:, :2] @ np.array([size / 2, size / 2]) + tform[:, 2]
    image = rgb
    # Halve the image while the region would still be more than the chip's area after halving.
    while (scale * size / 2) ** 2 > size * size and min(image.shape[:2]) > 2:
        image = cv2.pyrDown(image)
        scale, centre = scale / 2, centre / 2
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    chip_to_image = np.array([[cos, -sin, 0.0], [sin, cos, 0.0]])
    chip_to_image[:, 2] = centre - chip_to_image[:, :2] @ np.array([(size - 1) / 2, (size - 1) / 2])
    # OpenCV's bilinear weights are fixed-point (1/32 px): within 0.5 grey levels of dlib's
    # float sampling on average, at a twentieth of the cost of sampling in numpy.
    return cv2.warpAffine(image, chip_to_image, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT)

def box_crop(rgb: np.ndarray, box: np.ndarray, size: int = 160, margin: float = 0.2) -> np.ndarray:
    """A square crop around a face box grown by `margin` of its side on every side (MTCNN style)."""
    x, y, w, h = (float(v) for v in box)
    side = max(w, h) * (1 + 2 * margin)
    cx, cy = x + w / 2, y + h / 2
    s = side / size
    m = np.array([[s, 0.0, cx - side / 2], [0.0, s, cy - side / 2]])
    return cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_AREA | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT)

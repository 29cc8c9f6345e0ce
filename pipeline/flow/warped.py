"""Warped TV-L1: flow with the camera motion removed (TSN's "warped optical flow", after iDT).

Per frame pair: TV-L1 flow F(prev, next); point correspondences from feature matches (ORB or SIFT; SURF is
not in the PyPI wheels) plus Shi-Tomasi corners of *prev* carried by F; a RANSAC homography (1 px), kept
when it has enough inliers, identity otherwise; `next` re-projected into prev's camera (pixels that come
from outside the frame filled from prev); TV-L1 again on (prev, warped next).

Fixed against dense_flow's version: corners are detected on the previous frame (not the next), the flow
is read at (row=y, col=x) for both components, and every pair uses its own frames' features.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class HomographyConfig:
    """How the camera motion between two frames is estimated (iDT / TSN values by default)."""

    features: str = "orb"  # "orb" or "sift"
    max_features: int = 1000  # per frame
    max_match_distance: float = 25.0  # feature matches moving further than this (pixels) are dropped
    max_corners: int = 1000  # Shi-Tomasi corners of prev carried by the flow
    corner_quality: float = 0.001
    corner_min_distance: float = 3.0
    min_matches: int = 50  # fewer correspondences: identity
    ransac_threshold: float = 1.0  # pixels
    min_inliers: int = 25  # fewer RANSAC inliers: identity

    def __post_init__(self):
        if self.features not in ("orb", "sift"):
            raise ValueError(f"features must be 'orb' or 'sift', got {self.features!r}")
        if self.ransac_threshold <= 0:
            raise ValueError(f"ransac_threshold must be positive, got {self.ransac_threshold}")


@dataclass(frozen=True)
class HomographyResult:
    """The camera motion found for one pair: `matrix` maps prev pixel coordinates to next ones."""

    matrix: np.ndarray  # (3, 3) float64; identity when not found
    found: bool
    inliers: int
    matches: int  # correspondences RANSAC was given

    def as_dict(self) -> dict:
        """What a sample's metadata keeps of it."""
        return {"found": self.found, "inliers": self.inliers, "matches": self.matches}


def _feature_matches(prev: np.ndarray, nxt: np.ndarray, cfg: HomographyConfig) -> tuple[np.ndarray, np.ndarray]:
    """Matched keypoint positions (M, 2) in prev and in next, cross-checked, within max_match_distance."""
    if cfg.features == "orb":
        detector, norm = cv2.ORB_create(nfeatures=cfg.max_features), cv2.NORM_HAMMING
    else:
        detector, norm = cv2.SIFT_create(nfeatures=cfg.max_features), cv2.NORM_L2
    kp0, des0 = detector.detectAndCompute(prev, None)
    kp1, des1 = detector.detectAndCompute(nxt, None)
    if des0 is None or des1 is None or len(kp0) == 0 or len(kp1) == 0:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    matches = cv2.BFMatcher(norm, crossCheck=True).match(des0, des1)
    p0 = np.float32([kp0[m.queryIdx].pt for m in matches]).reshape(-1, 2)
    p1 = np.float32([kp1[m.trainIdx].pt for m in matches]).reshape(-1, 2)
    close = np.linalg.norm(p1 - p0, axis=1) <= cfg.max_match_distance
    return p0[close], p1[close]


def _flow_tracked_corners(prev: np.ndarray, flow: np.ndarray, cfg: HomographyConfig) -> tuple[np.ndarray, np.ndarray]:
    """Shi-Tomasi corners of prev (M, 2) and where the flow carries them in next."""
    corners = cv2.goodFeaturesToTrack(prev, cfg.max_corners, cfg.corner_quality, cfg.corner_min_distance)
    if corners is None:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    p0 = corners.reshape(-1, 2).astype(np.float32)
    h, w = prev.shape
    xi = np.clip(np.rint(p0[:, 0]).astype(int), 0, w - 1)
    yi = np.clip(np.rint(p0[:, 1]).astype(int), 0, h - 1)
    return p0, p0 + flow[yi, xi]  # flow is indexed [row = y, col = x], (dx, dy) in the last axis


def estimate_homography(
    prev: np.ndarray, nxt: np.ndarray, flow: np.ndarray, cfg: HomographyConfig = HomographyConfig()
) -> HomographyResult:
    """The camera motion from prev to next: RANSAC homography on feature matches + flow-tracked corners.

    Args:
        prev, nxt: (H, W) uint8 grayscale frames.
        flow: (H, W, 2) float32 TV-L1 flow prev -> next, (dx, dy).
    """
    f0, f1 = _feature_matches(prev, nxt, cfg)
    c0, c1 = _flow_tracked_corners(prev, flow, cfg)
    src, dst = np.concatenate([f0, c0]), np.concatenate([f1, c1])
    identity = np.eye(3)
    if len(src) <= cfg.min_matches:
        return HomographyResult(identity, False, 0, len(src))
    matrix, mask = cv2.findHomography(src, dst, cv2.RANSAC, cfg.ransac_threshold)
    inliers = int(mask.sum()) if mask is not None else 0
    if matrix is None or inliers <= cfg.min_inliers or not np.isfinite(matrix).all():
        return HomographyResult(identity, False, inliers, len(src))
    return HomographyResult(matrix, True, inliers, len(src))


def warp_to_previous_view(prev: np.ndarray, nxt: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """`nxt` re-projected into prev's camera: out(x) = nxt(H x), pixels mapped from outside taken from prev."""
    h, w = prev.shape
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpPerspective(nxt, matrix, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    inside = cv2.warpPerspective(
        np.full((h, w), 255, np.uint8), matrix, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=0
    )
    return np.where(inside == 255, warped, prev)

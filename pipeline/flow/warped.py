"""Warped TV-L1: flow with the camera motion removed (TSN's "warped optical flow", after iDT).

Per frame pair: TV-L1 flow F(prev, next); point correspondences from feature matches (ORB or SIFT; SURF is
not in the PyPI wheels) plus Shi-Tomasi corners of *prev* carried by F; a RANSAC homography (1 px), kept
when it has enough inliers, identity otherwise; `next` re-projected into prev's camera (pixels that come
from outside the frame filled from prev); TV-L1 again on (prev, warped next).

The steps are separate functions so that a video's frames each get their features once, and so that the
CPU work (features, matching, RANSAC, re-projection) can run where the CPUs are, away from a GPU's flow
worker, which then only needs to return the flow at the corners (`flow_at`).

Fixed against dense_flow's version: corners are detected on the previous frame (not the next), the flow
is read at (row=y, col=x) for both components, and every pair uses its own frames' features.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import cv2
import numpy as np

# Seconds this process has spent in the homography steps below: a process-wide tally (like torch's compile
# counters) so that a flow worker can report, measured rather than assumed, that it spends none there.
_SECONDS = {"homography": 0.0}


def homography_seconds() -> float:
    """Seconds this process has spent estimating homographies and re-projecting frames so far."""
    return _SECONDS["homography"]


def _timed(fn):
    @functools.wraps(fn)
    def call(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _SECONDS["homography"] += time.perf_counter() - start

    return call


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


@dataclass(frozen=True)
class Features:
    """One frame's keypoints for matching, computed once per frame (a frame is `next` of one pair, `prev` of the next)."""

    points: np.ndarray  # (K, 2) float32 keypoint positions (x, y)
    descriptors: np.ndarray | None  # (K, D); None when the detector found nothing


@dataclass(frozen=True)
class Corners:
    """Shi-Tomasi corners of a pair's prev frame: where the TV-L1 flow is read to carry them into next."""

    points: np.ndarray  # (M, 2) float32 (x, y)
    at: np.ndarray  # (M, 2) int64 (x, y): the pixel each is read at (rounded, inside the frame)


@_timed
def frame_features(frame: np.ndarray, cfg: HomographyConfig = HomographyConfig()) -> Features:
    """ORB or SIFT keypoints and descriptors of an (H, W) uint8 frame."""
    detector = cv2.ORB_create(nfeatures=cfg.max_features) if cfg.features == "orb" else cv2.SIFT_create(nfeatures=cfg.max_features)
    keypoints, descriptors = detector.detectAndCompute(frame, None)
    points = np.float32([k.pt for k in keypoints]).reshape(-1, 2)
    return Features(points, descriptors if len(keypoints) else None)


def match_features(f0: Features, f1: Features, cfg: HomographyConfig = HomographyConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Matched keypoint positions (M, 2) in prev and in next: each the other's nearest descriptor (brute-force
    cross-check), and moving at most max_match_distance pixels."""
    if f0.descriptors is None or f1.descriptors is None:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    norm = cv2.NORM_HAMMING if cfg.features == "orb" else cv2.NORM_L2
    matches = cv2.BFMatcher(norm, crossCheck=True).match(f0.descriptors, f1.descriptors)
    p0 = f0.points[[m.queryIdx for m in matches]].reshape(-1, 2)
    p1 = f1.points[[m.trainIdx for m in matches]].reshape(-1, 2)
    close = np.linalg.norm(p1 - p0, axis=1) <= cfg.max_match_distance
    return p0[close], p1[close]


@_timed
def prev_corners(prev: np.ndarray, cfg: HomographyConfig = HomographyConfig()) -> Corners:
    """Shi-Tomasi corners of prev and the pixels the flow is read at (row = y, column = x)."""
    corners = cv2.goodFeaturesToTrack(prev, cfg.max_corners, cfg.corner_quality, cfg.corner_min_distance)
    if corners is None:
        return Corners(np.zeros((0, 2), np.float32), np.zeros((0, 2), np.int64))
    points = corners.reshape(-1, 2).astype(np.float32)
    h, w = prev.shape
    at = np.stack([np.clip(np.rint(points[:, 0]).astype(np.int64), 0, w - 1), np.clip(np.rint(points[:, 1]).astype(np.int64), 0, h - 1)], 1)
    return Corners(points, at)


def flow_at(flow: np.ndarray, corners: Corners) -> np.ndarray:
    """The (dx, dy) flow at each corner's pixel: (M, 2) float32 from an (H, W, 2) flow."""
    return flow[corners.at[:, 1], corners.at[:, 0]]


@_timed
def fit_homography(
    f0: Features, f1: Features, corners: Corners, corner_flow: np.ndarray, cfg: HomographyConfig = HomographyConfig()
) -> HomographyResult:
    """The camera motion from prev to next: a RANSAC homography on the feature matches plus the corners carried
    by the flow (`corner_flow`: the flow at each corner, see `flow_at`); identity when too few agree."""
    f_src, f_dst = match_features(f0, f1, cfg)
    src, dst = np.concatenate([f_src, corners.points]), np.concatenate([f_dst, corners.points + corner_flow])
    identity = np.eye(3)
    if len(src) <= cfg.min_matches:
        return HomographyResult(identity, False, 0, len(src))
    matrix, mask = cv2.findHomography(src, dst, cv2.RANSAC, cfg.ransac_threshold)
    inliers = int(mask.sum()) if mask is not None else 0
    if matrix is None or inliers <= cfg.min_inliers or not np.isfinite(matrix).all():
        return HomographyResult(identity, False, inliers, len(src))
    return HomographyResult(matrix, True, inliers, len(src))


def estimate_homography(
    prev: np.ndarray, nxt: np.ndarray, flow: np.ndarray, cfg: HomographyConfig = HomographyConfig()
) -> HomographyResult:
    """`fit_homography` for one pair from its frames and flow.

    Args:
        prev, nxt: (H, W) uint8 grayscale frames.
        flow: (H, W, 2) float32 TV-L1 flow prev -> next, (dx, dy).
    """
    corners = prev_corners(prev, cfg)
    return fit_homography(frame_features(prev, cfg), frame_features(nxt, cfg), corners, flow_at(flow, corners), cfg)


@_timed
def warp_to_previous_view(prev: np.ndarray, nxt: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """`nxt` re-projected into prev's camera: out(x) = nxt(H x), pixels mapped from outside taken from prev."""
    h, w = prev.shape
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpPerspective(nxt, matrix, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    inside = cv2.warpPerspective(
        np.full((h, w), 255, np.uint8), matrix, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=0
    )
    return np.where(inside == 255, warped, prev)

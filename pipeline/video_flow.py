"""One video's flow, requested a chunk at a time from a flow worker; warped flow's CPU work done here.

Plain TV-L1 is one request per chunk. Warped TV-L1 (TSN's warped flow) is two: the plain solve also returns
the float flow at each pair's Shi-Tomasi corners; the homographies (features, matching, RANSAC) and the
re-projected next frames are computed here, in the shard task, on the CPU the task holds (each frame's
features once), and the (prev, warped next) pairs go back for the second solve. A flow worker (a GPU)
therefore only ever solves, and the CPU work of many shard tasks runs in parallel beside it.

Requests stay in flight while the next chunks decode (up to the client's `in_flight`); answers are taken in
the order they were sent, so flows and homographies come out in frame order.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import numpy as np

from .decode import VideoError
from .flow.warped import HomographyConfig, fit_homography, frame_features, prev_corners, warp_to_previous_view
from .flow_requests import FlowChunk, FlowRequest

RETRIES = 2  # a failed request is sent again (to the next worker) before its video fails: a launch can fail for
# reasons that pass (another caller's pairs, a fault of one worker); one that fails three times is this video's failure


class VideoFlow:
    """The flows of one video's frames, fed with `add(gray chunk)` and collected with `finish()`.

    Args:
        client: where flow is solved: `submit(FlowRequest)` returns a callable that waits for the FlowChunk
            (`pipeline.flow_requests.LocalFlow`, or the flow service's client); `in_flight` requests may wait.
        modalities: the flow modalities stored ("tvl1", "warp_tvl1" or both).
        homography: how warped flow finds the camera motion.
        encode: a quantized (H, W, 2) flow -> its stored members' bytes.
        timings: where the seconds go (`stage(name)` context manager: "encode", "flow_wait", "homography"; and
            `add("solve", s)`: the solver's own seconds for this video's pairs, wherever it ran).
    """

    def __init__(self, client, modalities: tuple[str, ...], homography: HomographyConfig, encode: Callable, timings):
        self.client = client
        self.modalities = modalities
        self.warp = "warp_tvl1" in modalities
        self.homography = homography
        self.encode = encode
        self.timings = timings
        self.flows: dict[str, list] = {m: [] for m in modalities}
        self.homographies: list[dict] = []
        self._waiting: collections.deque = collections.deque()  # (request, wait for its chunk, what to do with it)
        self._last = None  # the previous chunk's last frame and its features: the next chunk's first pair starts there

    def add(self, gray: np.ndarray) -> None:
        """The video's next (n, H, W) uint8 gray frames; sends their pairs (and the one joining the previous chunk)."""
        frames = gray if self._last is None else np.concatenate([self._last[0][None], gray])
        features = []
        if self.warp:
            with self.timings.stage("homography"):
                features = ([self._last[1]] if self._last is not None else []) + [frame_features(f, self.homography) for f in gray]
        self._last = (gray[-1], features[-1] if features else None)
        if len(frames) < 2:
            return
        corners = []
        if self.warp:
            with self.timings.stage("homography"):
                corners = [prev_corners(f, self.homography) for f in frames[:-1]]
        store = "tvl1" if "tvl1" in self.modalities else None
        request = FlowRequest(frames, store_as=store, points=[c.at for c in corners] if self.warp else None)
        self._send(request, lambda chunk: self._plain_solved(chunk, frames, features, corners))
        self._drain(self.client.in_flight)

    def finish(self) -> tuple[dict[str, list], list[dict]]:
        """Wait for every request: ({modality: each pair's encoded members}, each pair's homography with warp_tvl1)."""
        self._drain(0)
        return self.flows, self.homographies

    def _send(self, request: FlowRequest, then: Callable[[FlowChunk], None]) -> None:
        self._waiting.append((request, self.client.submit(request), then))

    def _drain(self, limit: int) -> None:
        """Take answers, oldest first, until at most `limit` requests wait (an answer may send a new request)."""
        while len(self._waiting) > limit:
            request, wait, then = self._waiting.popleft()
            then(self._answer(request, wait))

    def _answer(self, request: FlowRequest, wait: Callable[[], FlowChunk]) -> FlowChunk:
        """The request's chunk, sending it again (RETRIES times) when its launch failed."""
        with self.timings.stage("flow_wait"):
            for attempt in range(RETRIES + 1):
                try:
                    chunk = wait()
                except Exception as exc:  # noqa: BLE001 - any failure of the launch, reported as this video's reason
                    if attempt == RETRIES:
                        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                        raise VideoError(f"flow failed: {(lines[-1] if lines else type(exc).__name__)[:300]}") from None
                    wait = self.client.submit(request)
                    continue
                self.timings.add("solve", chunk.seconds)
                return chunk
        raise AssertionError("unreachable")

    def _plain_solved(self, chunk: FlowChunk, frames: np.ndarray, features: list, corners: list) -> None:
        """Store the plain flow; with warped flow, find each pair's camera motion and send the second solve."""
        self._store("tvl1", chunk)
        if not self.warp:
            return
        with self.timings.stage("homography"):
            found = [fit_homography(features[i], features[i + 1], c, chunk.points[i], self.homography) for i, c in enumerate(corners)]
            warped = np.stack([warp_to_previous_view(frames[i], frames[i + 1], h.matrix) for i, h in enumerate(found)])
        self.homographies += [h.as_dict() for h in found]
        self._send(FlowRequest(frames[:-1], targets=warped, store_as="warp_tvl1"), lambda answer: self._store("warp_tvl1", answer))

    def _store(self, modality: str, chunk: FlowChunk) -> None:
        if modality in chunk.flows:
            with self.timings.stage("encode"):
                self.flows[modality] += [self.encode(q) for q in chunk.flows[modality]]

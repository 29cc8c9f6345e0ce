"""Faults injected into the flow workers of a Ray job, for the tests (`ray job submit --runtime-env-json
'{"worker_process_setup_hook": "tests.flow_faults.inject"}'`: Ray calls `inject` in every worker process).

- Out of memory: any solve of more than 2 pairs raises `torch.OutOfMemoryError` from inside the solver.
- The second hand-back of each flow worker raises after giving its first request its flows (a request can
  meet that fault once per worker: with two workers, twice; the shard tasks send it again).
"""

from __future__ import annotations

MAX_PAIRS = 2


def inject() -> None:
    """Patch this process's flow worker code (a no-op for processes that never run a flow worker)."""
    import torch

    from pipeline import flow_service

    solve, hand_back = flow_service.tvl1_flow, flow_service.FlowWorker._hand_back
    hand_backs = []

    def tvl1_flow(prev, nxt, *args, **kwargs):
        if prev.shape[0] > MAX_PAIRS:
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected: more than {MAX_PAIRS} pairs)")
        return solve(prev, nxt, *args, **kwargs)

    def faulty_hand_back(self, pieces, flow):
        hand_backs.append(1)
        if len(hand_backs) == 2:
            hand_back(self, pieces[:1], flow)
            raise RuntimeError("injected fault while handing back")
        hand_back(self, pieces, flow)

    flow_service.tvl1_flow = tvl1_flow
    flow_service.FlowWorker._hand_back = faulty_hand_back

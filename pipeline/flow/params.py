"""The flow parameters a run asks for: the algorithms, TV-L1's settings and presets, and the per-run overrides.

Kept free of torch, so that the processes that only check and pass them on (the preprocessing driver, the
shard tasks that send frames to a flow service) start without importing it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .warped import HomographyConfig

ALGORITHMS = ("tvl1", "warp_tvl1")
_ALIASES = {"lambda": "lambda_"}

RUN_OPTIONS = ("compile", "check_every", "opencv_cpu_ops", "async_check")  # TVL1Config fields that change how, not what


@dataclass(frozen=True)
class TVL1Config:
    """TV-L1 parameters; the defaults are OpenCV's `DualTVL1OpticalFlow` defaults (the `opencv` preset)."""

    tau: float = 0.25  # time step of the dual ascent
    lambda_: float = 0.15  # weight of the data term (smaller = smoother flow)
    theta: float = 0.3  # coupling between the flow u and its auxiliary variable v
    nscales: int | None = 5  # pyramid levels; None = as many as `min_size` allows
    warps: int = 5  # re-linearisations of the data term per level
    epsilon: float = 0.01  # stop a pair when its RMS update per pixel falls below this
    inner_iterations: int = 30
    outer_iterations: int = 10  # a median filter runs before each outer iteration
    scale_step: float = 0.8  # size ratio between pyramid levels
    gamma: float = 0.0  # weight of an illumination-change term (0 = off)
    median_filtering: int = 5  # median filter size applied to the flow (1 = off, or 5)
    min_size: int = 16  # a pyramid level narrower or lower than this is not used (OpenCV: 16)
    # How the solver runs; these change the flow by float rounding at most (compile ~1e-3 px, the OpenCV ops ~0.01 px
    # mean; check_every not at all).
    compile: bool | None = None  # fuse each iteration into one kernel with torch.compile; None = when it pays
    # (on a GPU, or frames of at least AUTO_COMPILE_PIXELS); compiling costs ~10-60 s once per process
    check_every: int | None = None  # iterations between convergence checks (one compiled call); None = 1 on CPU, 10 on GPU
    opencv_cpu_ops: bool = True  # on the CPU, OpenCV's own remap and median filter (False: the GPU code)
    async_check: bool | None = None  # act on each convergence check one block late, so a GPU never waits for the
    # host's read; None = on a GPU (on the CPU the read costs nothing)

    def __post_init__(self):
        for name in ("tau", "lambda_", "theta", "epsilon"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TV-L1 {name} must be positive, got {getattr(self, name)}")
        if not 0 < self.scale_step < 1:
            raise ValueError(f"TV-L1 scale_step must be in (0, 1), got {self.scale_step}")
        for name in ("warps", "inner_iterations", "outer_iterations", "min_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TV-L1 {name} must be at least 1, got {getattr(self, name)}")
        if self.nscales is not None and self.nscales < 1:
            raise ValueError(f"TV-L1 nscales must be at least 1 (or None for a full pyramid), got {self.nscales}")
        if self.median_filtering not in (1, 5):
            raise ValueError(f"TV-L1 median_filtering must be 1 (off) or 5, got {self.median_filtering}")
        if self.gamma < 0:
            raise ValueError(f"TV-L1 gamma must be >= 0, got {self.gamma}")
        if self.check_every is not None and self.check_every < 1:
            raise ValueError(f"TV-L1 check_every must be at least 1, got {self.check_every}")

    def solver_parameters(self) -> dict:
        """The parameters that define the flow (what a sample records), without how the solver runs."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RUN_OPTIONS}

    def replace(self, **changes) -> TVL1Config:
        """A copy with some parameters changed; unknown names raise ValueError listing the valid ones."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown TV-L1 parameter(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, TVL1Config] = {
    # OpenCV's defaults: the flow existing two-stream and I3D models were trained on.
    "opencv": TVL1Config(),
    # A pyramid down to 16 px with finer steps (0.9) follows large motion (Middlebury Urban2: 3.57 -> 0.36
    # end-point error); the illumination term (gamma) and a stronger data term sharpen motion edges
    # (Venus 0.31 -> 0.23). Chosen by a small sweep on the Middlebury sequences (bench/flow_accuracy.py):
    # mean error 0.94 -> 0.28, at about 3x the opencv preset's time.
    "accurate": TVL1Config(nscales=None, scale_step=0.9, lambda_=0.2, gamma=0.4),
}


def resolve_params(preset: str, params: dict) -> tuple[TVL1Config, HomographyConfig]:
    """A preset plus individual overrides -> the solver and homography configurations.

    Raises:
        ValueError: an unknown preset or parameter name (the message lists the valid ones).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown flow preset {preset!r}; choose one of {', '.join(PRESETS)}")
    params = {_ALIASES.get(k, k): v for k, v in params.items()}
    tvl1_names = {f.name for f in dataclasses.fields(TVL1Config)}
    homography_names = {f.name for f in dataclasses.fields(HomographyConfig)}
    unknown = sorted(set(params) - tvl1_names - homography_names)
    if unknown:
        valid = ", ".join(sorted(tvl1_names | homography_names))
        raise ValueError(f"unknown flow parameter(s) {', '.join(unknown)}; valid: {valid}")
    params = {k: _typed(TVL1Config if k in tvl1_names else HomographyConfig, k, v) for k, v in params.items()}
    tvl1 = PRESETS[preset].replace(**{k: v for k, v in params.items() if k in tvl1_names})
    homography = HomographyConfig(**{k: v for k, v in params.items() if k in homography_names})
    return tvl1, homography


_KINDS = {"float": "a number", "int": "a whole number", "bool": "true or false", "str": "a word", "None": "none"}


def _typed(cls, name: str, value):
    """`value` as the type `cls` declares for `name` (an int where a float is declared becomes a float), or a
    ValueError naming the parameter and what it takes: warps=abc is refused here, not by a comparison deep inside."""
    declared = [t.strip() for t in str({f.name: f.type for f in dataclasses.fields(cls)}[name]).split("|")]
    if value is None and "None" in declared:
        return None
    if isinstance(value, bool):
        if "bool" in declared:
            return value
    elif isinstance(value, int) and ("int" in declared or "float" in declared):
        return value if "int" in declared else float(value)
    elif isinstance(value, float) and "float" in declared:
        return value
    elif isinstance(value, str) and "str" in declared:
        return value
    kinds = " or ".join(_KINDS.get(t, t) for t in declared)
    raise ValueError(f"flow parameter {name} takes {kinds}, got {value!r}")

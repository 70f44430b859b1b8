"""The loss-landscape metrics' options (`tfmeta.landscape` measures them)."""

import dataclasses

from tfmeta.errors import expect

METHODS = ("lanczos", "power")
HVPS = ("forward", "reverse")


@dataclasses.dataclass
class LandscapeConfig:
    """What to measure, on how many meta-test tasks, and how often.

    Attributes:
        every: measure after every k-th epoch during training; 0 turns it off.
        flatness_tasks: tasks averaged for flatness and the opt-in Hessian metrics (paper: 60).
        coherence_tasks: tasks averaged for the coherences, trajectory norm and support loss
            (paper: 500).
        method: spectral norm by "lanczos" or "power" iteration.
        tol: relative tolerance that stops the eigenvalue iteration.
        max_iters: most HVPs per spectral norm.
        hvp: "forward" (forward-over-backward) or "reverse" (backward-over-backward).
        trace_probes: Rademacher probes for the Hessian trace; 0 = off.
        top_k: the k largest Hessian eigenvalues; 0 = off.
        layer_norms: per-layer spectral norms (diagonal Hessian blocks).
        density_probes: probes of the eigenvalue density (stochastic Lanczos quadrature); 0 = off.
        density_iters: Lanczos steps per density probe.
        batch: tasks adapted per compiled call.
        seed: draws the fixed meta-test tasks (the same at every measurement of a run).
    """
    every: int = 1
    flatness_tasks: int = 60
    coherence_tasks: int = 500
    method: str = "lanczos"
    tol: float = 1e-3
    max_iters: int = 100
    hvp: str = "forward"
    trace_probes: int = 0
    top_k: int = 0
    layer_norms: bool = False
    density_probes: int = 0
    density_iters: int = 30
    batch: int = 25
    seed: int = 1

    def check(self, key: str = "landscape") -> None:
        for field in ("every", "flatness_tasks", "coherence_tasks", "trace_probes", "top_k",
                      "density_probes"):
            value = getattr(self, field)
            expect(value >= 0, f"{key}.{field}", "a non-negative integer", value)
        for field in ("max_iters", "density_iters", "batch"):
            value = getattr(self, field)
            expect(value >= 1, f"{key}.{field}", "a positive integer", value)
        expect(self.method in METHODS, f"{key}.method", " or ".join(METHODS), self.method)
        expect(self.hvp in HVPS, f"{key}.hvp", " or ".join(HVPS), self.hvp)
        expect(self.tol >= 0, f"{key}.tol", "non-negative", self.tol)

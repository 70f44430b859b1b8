"""The inner loop's options (`tfmeta.adaptation` runs it)."""

import dataclasses

from tfmeta.errors import expect


@dataclasses.dataclass
class AdaptConfig:
    """The inner loop.

    Attributes:
        steps: T, the SGD steps taken on the support set during meta-training.
        lr: alpha, the inner learning rate.
        first_order: drop the second-order terms (first-order MAML).
        test_steps: T used when evaluating on meta-test tasks; 0 means "same as steps".
        gain_lr_scale: the inner learning rate of Wormhole MAML's gains (`models.Gains`), as a
            multiple of lr. A gain's gradient <W_k, dL/d(s_k W_k)> sums over its whole tensor, so
            at the weights' own rate one step can rescale a layer many times over.
        per_step_lr: MAML++'s LSLR: a learned rate per parameter tensor and inner step, starting
            at lr (`models.InnerLoop`).
        per_step_norm: MAML++'s BNWB: per-step batch-norm weights and biases, meta-learned and not
            adapted (`models.InnerLoop`).
        recompute: keep no inner step's activations for the meta-gradient; recompute them in its
            backward pass (`tf.recompute_grad`), so memory holds the parameter trajectory and one
            step's activations whatever T. The meta-gradient is the same.
    """
    steps: int = 1
    lr: float = 0.01
    first_order: bool = False
    test_steps: int = 0
    gain_lr_scale: float = 0.1
    per_step_lr: bool = False
    per_step_norm: bool = False
    recompute: bool = False

    @property
    def eval_steps(self) -> int:
        return self.test_steps or self.steps

    def check(self, key: str = "adapt") -> None:
        """Raises ConfigError naming the first `key.field` out of range."""
        for field in ("steps", "test_steps"):
            value = getattr(self, field)
            expect(value >= 0, f"{key}.{field}", "a non-negative integer", value)
        expect(self.lr > 0, f"{key}.lr", "positive", self.lr)
        expect(self.gain_lr_scale >= 0, f"{key}.gain_lr_scale", "non-negative",
               self.gain_lr_scale)

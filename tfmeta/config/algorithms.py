"""The algorithms' names, families and options (`tfmeta.algorithms` implements them)."""

import dataclasses

from tfmeta.errors import expect

NAMES = ("maml", "anil", "meta-sgd", "maml-reg", "gradient-agreement", "wormhole", "nal",
         "finetune")
# Wormhole MAML is MAML on a model with per-tensor gains (`models.Gains`); ANIL is MAML on a model
# whose inner loop adapts the head only, Meta-SGD MAML on one with a learned rate per parameter
# element (`models.InnerLoop`). All four take MAML's meta-step and its MAML++ options
# (`tfmeta.algorithms.REGISTRY`).
MAML_FAMILY = ("maml", "anil", "meta-sgd", "wormhole")
# No inner loop at meta-training: nal trains on the support and query sets jointly, finetune on
# batches of examples.
WITHOUT_INNER_LOOP = ("nal", "finetune")
# The supervised baseline's meta-test heads: one per task, or one shared by every task.
FINETUNE_HEADS = ("per_task", "shared")


@dataclasses.dataclass
class MamlConfig:
    """MAML++'s training options for MAML and the algorithms that take its meta-step (anil,
    meta-sgd, wormhole).

    Attributes:
        multi_step_epochs: E > 0 turns on the multi-step loss for the first E epochs, its weights
            annealed towards the last step (`multi_step_weights`); 0: the last step's loss only.
        first_order_epochs: derivative-order annealing: first-order meta-gradients for the first
            this many epochs, second order after.
    """
    multi_step_epochs: int = 0
    first_order_epochs: int = 0


@dataclasses.dataclass
class MamlRegConfig:
    """Attributes:
        gamma: step size of the correction (paper: 0.5).
        constant_mean: hold u_mu constant in the meta-gradient (see `algorithms.maml_reg`).
    """
    gamma: float = 0.5
    constant_mean: bool = True

    def check(self, key: str = "algorithms.maml_reg") -> None:
        expect(self.gamma >= 0, f"{key}.gamma", "non-negative", self.gamma)


@dataclasses.dataclass
class FinetuneConfig:
    """Attributes:
        batch_size: labelled examples per training step (paper: 64 for 1-shot, 128 for 5-shot).
        head_seed: seed of the Xavier initialization of the meta-test heads.
        head: "per_task" draws each meta-test task's own head, seeded by head_seed and a
            fingerprint of the task's support set (the same task always gets the same head);
            "shared" gives every task the one head of head_seed. One head shared by all tasks
            gives their gradients a common, label-independent part (pulling the same random logits
            towards uniform), which inflates gradient and trajectory coherence.
    """
    batch_size: int = 64
    head_seed: int = 0
    head: str = "per_task"

    def check(self, key: str = "algorithms.finetune") -> None:
        expect(self.batch_size >= 1, f"{key}.batch_size", "a positive integer", self.batch_size)
        expect(self.head in FINETUNE_HEADS, f"{key}.head", " or ".join(FINETUNE_HEADS),
               self.head)


@dataclasses.dataclass
class AlgorithmConfig:
    """Options of the algorithms that have any.

    Attributes:
        maml: MAML++'s multi-step loss and derivative-order annealing, for MAML_FAMILY.
        maml_reg: the angle regularizer's gamma and its treatment of the mean direction.
        finetune: the supervised baseline's batch size and meta-test head seed.
    """
    maml: MamlConfig = dataclasses.field(default_factory=MamlConfig)
    maml_reg: MamlRegConfig = dataclasses.field(default_factory=MamlRegConfig)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)

    def check(self, algorithm: str, adapt, epochs: int, key: str = "algorithms") -> None:
        """Checks every option, and the inner-loop and MAML++ options (`adapt`, an AdaptConfig)
        against `algorithm` and the run's length in `epochs`."""
        expect(algorithm in NAMES, "algorithm", f"one of: {', '.join(NAMES)}", algorithm)
        self.maml_reg.check(f"{key}.maml_reg")
        self.finetune.check(f"{key}.finetune")
        for field in ("per_step_lr", "per_step_norm"):
            expect(not getattr(adapt, field) or algorithm not in WITHOUT_INNER_LOOP,
                   f"adapt.{field}", f"false for {algorithm}, which has no inner loop to learn "
                   "it for", True)
        expect(not adapt.per_step_lr or algorithm != "meta-sgd", "adapt.per_step_lr",
               "false for meta-sgd, which learns a rate per parameter element already", True)
        expect(not adapt.per_step_lr or algorithm != "wormhole", "adapt.per_step_lr",
               "false for wormhole, whose gains have their own rate", True)
        maml = self.maml
        for field in ("multi_step_epochs", "first_order_epochs"):
            value = getattr(maml, field)
            expect(value >= 0, f"{key}.maml.{field}", "a non-negative integer", value)
            expect(not value or algorithm in MAML_FAMILY, f"{key}.maml.{field}",
                   f"0 for {algorithm}; it applies to {', '.join(MAML_FAMILY)}", value)
            expect(value <= epochs, f"{key}.maml.{field}",
                   f"at most train.epochs ({epochs}), the run's length", value)
        expect(not maml.first_order_epochs or not adapt.first_order,
               f"{key}.maml.first_order_epochs",
               "0 when adapt.first_order is true (the whole run is first order)",
               maml.first_order_epochs)
        expect(not maml.multi_step_epochs or adapt.steps >= 1, f"{key}.maml.multi_step_epochs",
               "0 when adapt.steps is 0", maml.multi_step_epochs)

"""The outer loop's options (`tfmeta.training` runs it)."""

import dataclasses

from tfmeta.errors import expect

# How the tasks of a meta-batch are mapped onto ops (`tfmeta.meta_batch`); "auto" chooses by
# architecture.
TASK_MAPPINGS = ("loop", "map", "vectorized")
# Where the replicas run (`tfmeta.distribute`).
DISTRIBUTIONS = ("default", "mirrored", "multi-worker")


@dataclasses.dataclass
class TrainConfig:
    """The outer loop.

    Attributes:
        meta_batch: tasks per meta-iteration (n).
        meta_lr: Adam learning rate (beta).
        epochs: number of epochs.
        iterations: meta-iterations per epoch (500 in the landscape paper).
        eval_tasks: meta-test tasks evaluated after each epoch (a fixed set per run).
        eval_every: evaluate every k epochs; 0 turns per-epoch evaluation off.
        eval_at_start: also evaluate, and measure the landscape when it is on, before the first
            meta-step: a history line and TensorBoard scalars for epoch 0 (iteration 0).
        eval_batch: tasks adapted per evaluation call.
        seed: seeds the initial parameters and every episode stream.
        task_mapping: how tasks of a meta-batch are mapped onto ops: "loop", "map",
            "vectorized", or "auto" (vectorized for MLPs, loop for convolutional models).
        keep_checkpoints: checkpoints kept (one per epoch); 0 keeps every epoch's.
        intra_op_threads: threads inside one op; 0 lets TensorFlow choose. The default 1 suits
            MAML's many small per-task ops: on a few CPU cores tasks then run side by side
            instead of each op spreading over the cores.
        inter_op_threads: ops run side by side; 0 lets TensorFlow choose (one per core).
        steps_per_execution: meta-steps per compiled call (Keras' `steps_per_execution`): k
            steps draw their episodes inside one call, which spares the per-call overhead that
            dominates small models (sine); the same weights and stream as single steps.
        jit_compile: compile the meta-step with XLA. Off by default: XLA runs convolutions
            slower than graph mode on CPU.
        cosine_lr: anneal the meta learning rate from meta_lr to min_meta_lr over the epochs
            along a cosine, one value per epoch (MAML++).
        min_meta_lr: the annealed rate's floor.
        strategy: "default" (one device), "mirrored" (every local GPU, or `devices`) or
            "multi-worker" (the cluster in TF_CONFIG); see `tfmeta.distribute`.
        devices: the devices of "mirrored", e.g. ["/gpu:0", "/gpu:1"]; CPU devices beyond the
            first become logical devices. Empty: every local GPU.
    """
    meta_batch: int = 25
    meta_lr: float = 1e-3
    epochs: int = 10
    iterations: int = 500
    eval_tasks: int = 600
    eval_every: int = 1
    eval_at_start: bool = False
    eval_batch: int = 25
    seed: int = 0
    task_mapping: str = "auto"
    keep_checkpoints: int = 3
    intra_op_threads: int = 1
    inter_op_threads: int = 0
    steps_per_execution: int = 1
    jit_compile: bool = False
    cosine_lr: bool = False
    min_meta_lr: float = 1e-5
    strategy: str = "default"
    devices: list = dataclasses.field(default_factory=list)

    def check(self, key: str = "train") -> None:
        for field in ("meta_batch", "epochs", "iterations", "eval_tasks", "eval_batch",
                      "steps_per_execution"):
            value = getattr(self, field)
            expect(value >= 1, f"{key}.{field}", "a positive integer", value)
        for field in ("eval_every", "keep_checkpoints", "intra_op_threads", "inter_op_threads"):
            value = getattr(self, field)
            expect(value >= 0, f"{key}.{field}", "a non-negative integer", value)
        expect(self.meta_lr > 0, f"{key}.meta_lr", "positive", self.meta_lr)
        expect(0 <= self.min_meta_lr <= self.meta_lr, f"{key}.min_meta_lr",
               f"between 0 and {key}.meta_lr", self.min_meta_lr)
        expect(self.strategy in DISTRIBUTIONS, f"{key}.strategy", ", ".join(DISTRIBUTIONS),
               self.strategy)
        expect(all(isinstance(d, str) for d in self.devices), f"{key}.devices",
               "a list of device names such as \"/gpu:0\"", self.devices)
        mappings = ("auto",) + TASK_MAPPINGS
        expect(self.task_mapping in mappings, f"{key}.task_mapping", ", ".join(mappings),
               self.task_mapping)

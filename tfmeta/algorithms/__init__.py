"""Meta-learning algorithms: each turns a meta-batch into a meta-gradient via `adaptation.adapt`.

Every algorithm is a function

    meta_gradient(model, params, batch, adapt_config, global_batch_size, strategy)
        -> (gradients matching params, metrics)

with its own options bound by `build`. Scalar metrics are per-task means; a vector metric (such as
gradient agreement's `task_weights`) is logged as a histogram.
"""

import dataclasses
import functools
from typing import Callable, Optional

from tfmeta.algorithms import finetune, gradient_agreement, maml, maml_reg, nal
from tfmeta.algorithms.finetune import FinetuneConfig
from tfmeta.algorithms.maml import MamlConfig
from tfmeta.algorithms.maml_reg import MamlRegConfig

NAMES = ("maml", "anil", "meta-sgd", "maml-reg", "gradient-agreement", "wormhole", "nal",
         "finetune")
# Wormhole MAML is MAML on a model with per-tensor gains (`models.Gains`); ANIL is MAML on a model
# whose inner loop adapts the head only, Meta-SGD MAML on one with a learned rate per parameter
# element (`models.InnerLoop`). All four take MAML's meta-step and its MAML++ options.
WITH_GAINS = ("wormhole",)
MAML_FAMILY = ("maml", "anil", "meta-sgd", "wormhole")
# No inner loop at meta-training: nal trains on the support and query sets jointly, finetune on
# batches of examples.
WITHOUT_INNER_LOOP = ("nal", "finetune")


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


def build(name: str, config: AlgorithmConfig, epoch: Optional[Callable] = None) -> Callable:
    """The meta-gradient function of algorithm `name`, with its options bound; `epoch` () -> the
    current 0-based epoch, for options that change over the run."""
    if name == "maml-reg":
        return functools.partial(maml_reg.meta_gradient, gamma=config.maml_reg.gamma,
                                 constant_mean=config.maml_reg.constant_mean)
    if name in MAML_FAMILY:
        return functools.partial(maml.meta_gradient,
                                 multi_step_epochs=config.maml.multi_step_epochs, epoch=epoch)
    return {"gradient-agreement": gradient_agreement.meta_gradient, "nal": nal.meta_gradient,
            "finetune": finetune.meta_gradient}[name]

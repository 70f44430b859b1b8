"""Meta-learning algorithms: each turns a meta-batch into a meta-gradient via `adaptation.adapt`.

Every algorithm is a function

    meta_gradient(model, params, batch, adapt_config, global_batch_size, strategy)
        -> (gradients matching params, metrics)

with its own options bound by `build`. Scalar metrics are per-task means; a vector metric (such as
gradient agreement's `task_weights`) is logged as a histogram.
"""

import dataclasses
import functools
from typing import Callable

from tfmeta.algorithms import finetune, gradient_agreement, maml, maml_reg, nal
from tfmeta.algorithms.finetune import FinetuneConfig
from tfmeta.algorithms.maml_reg import MamlRegConfig

NAMES = ("maml", "maml-reg", "gradient-agreement", "wormhole", "nal", "finetune")
# Wormhole MAML is MAML on a model with per-tensor gains (`models.Gains`); the meta-step is MAML's.
WITH_GAINS = ("wormhole",)


@dataclasses.dataclass
class AlgorithmConfig:
    """Options of the algorithms that have any.

    Attributes:
        maml_reg: the angle regularizer's gamma and its treatment of the mean direction.
        finetune: the supervised baseline's batch size and meta-test head seed.
    """
    maml_reg: MamlRegConfig = dataclasses.field(default_factory=MamlRegConfig)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)


def build(name: str, config: AlgorithmConfig) -> Callable:
    """The meta-gradient function of algorithm `name`, with its options bound."""
    if name == "maml-reg":
        return functools.partial(maml_reg.meta_gradient, gamma=config.maml_reg.gamma,
                                 constant_mean=config.maml_reg.constant_mean)
    return {"maml": maml.meta_gradient, "wormhole": maml.meta_gradient,
            "gradient-agreement": gradient_agreement.meta_gradient, "nal": nal.meta_gradient,
            "finetune": finetune.meta_gradient}[name]

"""Meta-learning algorithms: each turns a meta-batch into a meta-gradient via `adaptation.adapt`.

Every algorithm is a function

    meta_gradient(model, params, batch, adapt_config, global_batch_size, mapping)
        -> (gradients matching params, metrics)

with its own options bound by `build`. Scalar metrics are per-task means; a vector metric (such as
gradient agreement's `task_weights`) is logged as a histogram.
"""

import functools
from typing import Callable, Optional

from tfmeta.algorithms import finetune, gradient_agreement, maml, maml_reg, nal
from tfmeta.config.algorithms import MAML_FAMILY, AlgorithmConfig


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

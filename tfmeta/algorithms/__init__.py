"""Meta-learning algorithms: each turns a meta-batch into a meta-gradient via `adaptation.adapt`.

Every algorithm is a function

    meta_gradient(model, params, batch, adapt_config, global_batch_size, mapping)
        -> (gradients matching params, metrics)

with its own options bound by its `Algorithm.meta_gradient`. Scalar metrics are per-task means; a
vector metric (such as gradient agreement's `task_weights`) is logged as a histogram.

`REGISTRY` holds one `Algorithm` per name of `config.algorithms.NAMES`: everything the rest of
tfmeta asks of an algorithm. Its options, their checks and its name live in
`tfmeta.config.algorithms`, which imports no TensorFlow. To add an algorithm: its module here,
its entry in REGISTRY, its name (and options, if any) in `tfmeta.config.algorithms`.
"""

import dataclasses
import functools
from typing import Callable

from tfmeta.adaptation import Origin
from tfmeta.algorithms import finetune, gradient_agreement, maml, maml_reg, nal
from tfmeta.config.algorithms import AlgorithmConfig

__all__ = ["Algorithm", "REGISTRY", "get", "finetune", "gradient_agreement", "maml", "maml_reg", "nal"]


def _networks(config, source, build: Callable) -> tuple:
    """The one network that meta-trains and adapts: (model, eval_model, Origin)."""
    model = build(config, source)
    return model, model, Origin(model)


def _maml_step(options: AlgorithmConfig, epoch: Callable) -> Callable:
    return functools.partial(maml.meta_gradient,
                             multi_step_epochs=options.maml.multi_step_epochs, epoch=epoch)


def _maml_hparams(config) -> dict:
    maml_options = config.algorithms.maml
    return {"maml.multi_step_epochs": maml_options.multi_step_epochs,
            "maml.first_order_epochs": maml_options.first_order_epochs}


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """What tfmeta needs of one algorithm.

    Attributes:
        meta_gradient: (options: AlgorithmConfig, epoch: () -> 0-based epoch) -> its meta-gradient
            function, options bound.
        head_only: its inner loop adapts the head only (ANIL).
        learned_lr: "element" when it meta-learns a rate per parameter element (Meta-SGD);
            "" takes adapt.per_step_lr's choice (`models.InnerLoop`).
        gains: its model has a meta-learned gain per parameter tensor (Wormhole).
        supervised: it meta-trains on labelled minibatches, not episodes (the finetune baseline).
        batch_key: the config key of the tasks (or examples) per meta-step.
        networks: (config, source, build(config, source, outputs=None)) -> (the model it trains,
            the model that adapts at meta-test, its `adaptation.Origin`).
        hparams: config -> its own TensorBoard HParams.
    """
    meta_gradient: Callable
    head_only: bool = False
    learned_lr: str = ""
    gains: bool = False
    supervised: bool = False
    batch_key: str = "train.meta_batch"
    networks: Callable = _networks
    hparams: Callable = lambda config: {}

    def batch_size(self, config) -> int:
        """The tasks (or examples) per meta-step: the value of `batch_key`."""
        value = config
        for part in self.batch_key.split("."):
            value = getattr(value, part)
        return value


REGISTRY = {
    "maml": Algorithm(_maml_step, hparams=_maml_hparams),
    "anil": Algorithm(_maml_step, head_only=True, hparams=_maml_hparams),
    "meta-sgd": Algorithm(_maml_step, learned_lr="element", hparams=_maml_hparams),
    "wormhole": Algorithm(_maml_step, gains=True, hparams=lambda config: {
        **_maml_hparams(config), "wormhole.gain_lr_scale": config.adapt.gain_lr_scale}),
    "maml-reg": Algorithm(
        lambda options, epoch: functools.partial(
            maml_reg.meta_gradient, gamma=options.maml_reg.gamma,
            constant_mean=options.maml_reg.constant_mean),
        hparams=lambda config: {"maml_reg.gamma": config.algorithms.maml_reg.gamma,
                                "maml_reg.constant_mean": config.algorithms.maml_reg.constant_mean}),
    "gradient-agreement": Algorithm(lambda options, epoch: gradient_agreement.meta_gradient),
    "nal": Algorithm(lambda options, epoch: nal.meta_gradient),
    "finetune": Algorithm(lambda options, epoch: finetune.meta_gradient, supervised=True,
                          batch_key="algorithms.finetune.batch_size", networks=finetune.networks,
                          hparams=finetune.hparams),
}


def get(name: str) -> Algorithm:
    return REGISTRY[name]

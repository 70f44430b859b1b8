"""Your own Keras model as a `MetaModel`: its layers checked for what breaks exact meta-gradients,
stock normalization made exact, and a factory named by a dotted path (`model.arch: custom`).

tfmeta adapts a network functionally (`stateless_call` on explicit parameters) and differentiates
through the adaptation, so every layer must be a pure function of its weights and inputs whose
derivatives are exact to second order. Stock Keras breaks that in two ways:

- `keras.layers.BatchNormalization` and `LayerNormalization` take their variance around
  `stop_gradient(mean)` (`tf.nn.moments`). First derivatives are exact, every second derivative
  through the variance is wrong: a second-order meta-gradient fails a finite-difference check.
  `exact_batch_norm` swaps each for tfmeta's `BatchNorm` or `LayerNorm`, with the same gamma, beta and
  epsilon. BatchNormalization's moving statistics go with it: MAML normalizes with each batch's
  statistics, at meta-test too.
- Layers that draw random numbers or keep state between calls (Dropout and its kin, GaussianNoise,
  stateful RNNs, anything else with non-trainable variables) make the inner loop a different
  function at every call. They are refused, with the reason.

The model must be a chain of layers ending in a Dense head of N linear outputs (logits for
classification): a `keras.Sequential`, or a functional model whose layers run one after another.
"""

import importlib
from typing import Callable, List, NamedTuple, Sequence

import keras
import numpy as np

from tfmeta.batch_norm import BatchNorm, LayerNorm
from tfmeta.errors import ConfigError

# What `model.norm_layers` does with stock normalization layers: convert them to the exact ones,
# refuse the model, or keep them (wrong second derivatives; for comparisons).
NORM_POLICIES = ("convert", "refuse", "keep")
_RANDOM = (keras.layers.Dropout, keras.layers.GaussianNoise, keras.layers.GaussianDropout,
           keras.layers.AlphaDropout)


class Finding(NamedTuple):
    """A layer that breaks exact adaptation: its name, class, why, and whether `exact_batch_norm`
    converts it."""
    layer: str
    kind: str
    why: str
    convertible: bool

    def line(self) -> str:
        return f"{self.layer} ({self.kind}): {self.why}"


def chain(model: keras.Model, example_shape: Sequence[int]) -> List[keras.Layer]:
    """The layers of `model` in order, checked to compose into the model (no branches or
    skips): raises ConfigError otherwise."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if not isinstance(model, keras.Sequential):
        x = np.random.default_rng(0).random((2, *example_shape)).astype(input_dtype(model))
        try:
            h = x
            for layer in layers:
                h = layer(h, training=False)
            composes = np.max(np.abs(np.asarray(model(x, training=False)) - np.asarray(h))) < 1e-4
        except (ValueError, TypeError):   # e.g. a merge layer called on one tensor
            composes = False
        if not composes:
            raise ConfigError(
                f"model {model.name}: its layers do not run one after another (a branch or a "
                "skip connection); tfmeta takes a keras.Sequential or a functional chain")
    return layers


def input_dtype(model: keras.Model) -> str:
    """The dtype of the model's input (a Sequential's own policy may differ from its layers')."""
    inputs = getattr(model, "inputs", None)
    return str(inputs[0].dtype) if inputs else model.layers[0].compute_dtype


def findings(layers: Sequence[keras.Layer]) -> List[Finding]:
    """Every layer of a chain that would make adaptation inexact or stateful."""
    out = []
    for layer in layers:
        kind = type(layer).__name__
        if isinstance(layer, keras.layers.BatchNormalization):
            why, ok = _norm_support(layer, "BatchNorm")
            out.append(Finding(layer.name, kind, "computes its variance around stop_gradient("
                               "mean), so second derivatives through it are wrong" + why, ok))
        elif isinstance(layer, keras.layers.LayerNormalization):
            why, ok = _norm_support(layer, "LayerNorm")
            out.append(Finding(layer.name, kind, "computes its variance around stop_gradient("
                               "mean), so second derivatives through it are wrong" + why, ok))
        elif isinstance(layer, _RANDOM) and getattr(layer, "rate", getattr(layer, "stddev", 1)):
            out.append(Finding(layer.name, kind, "draws new random numbers at every call (MAML "
                               "adapts in training mode), so the inner loop and its meta-gradient "
                               "change from call to call; remove it", False))
        elif getattr(layer, "stateful", False):
            out.append(Finding(layer.name, kind, "is stateful: it carries state from one call to "
                               "the next, which functional adaptation cannot; use stateful=False",
                               False))
        elif layer.non_trainable_variables and not isinstance(layer, _RANDOM):
            names = ", ".join(v.name for v in layer.non_trainable_variables)
            out.append(Finding(layer.name, kind, f"keeps non-trainable state ({names}) that "
                               "functional adaptation would freeze", False))
    return out


def _norm_support(layer: keras.Layer, exact: str) -> tuple:
    """(" ; converts to ..." or " ; cannot convert: ...", convertible) for a stock norm layer."""
    axis = layer.axis if isinstance(layer.axis, int) else (
        layer.axis[0] if len(layer.axis) == 1 else None)
    try:   # a built layer keeps its axis as a positive index
        rank = len(layer.input.shape)
    except (AttributeError, ValueError):   # never called on a symbolic input
        rank = None
    if axis is None or (axis != -1 and rank is not None and axis != rank - 1):
        return f"; cannot convert: tfmeta's {exact} normalizes the last axis, this one axis " \
               f"{layer.axis}", False
    if not (layer.center and layer.scale) or getattr(layer, "rms_scaling", False):
        return f"; cannot convert: tfmeta's {exact} has both gamma and beta (center=True, " \
               "scale=True, no rms_scaling)", False
    return f"; model.norm_layers=convert (the default) makes it tfmeta's exact {exact}, with " \
           "the same gamma, beta and epsilon", True


def exact_batch_norm(model: keras.Model, example_shape: Sequence[int] = None
                     ) -> keras.Sequential:
    """A copy of a chain `model` whose stock BatchNormalization and LayerNormalization layers are
    tfmeta's exact BatchNorm and LayerNorm, with the same gamma, beta and epsilon; every other
    layer is a fresh copy with the same weights. Its outputs equal the model's in training mode
    (batch statistics). Raises ConfigError for a norm layer it cannot convert.

    Args:
        model: a keras.Sequential or functional chain, built.
        example_shape: the shape of one input; default the model's own input shape.
    """
    example_shape = tuple(example_shape or model.input_shape[1:])
    copies, assign = copy_chain(chain(model, example_shape), "convert")
    converted = keras.Sequential([keras.Input(example_shape, dtype=input_dtype(model)),
                                  *copies], name=f"{model.name}_exact")
    assign()
    return converted


def copy_chain(layers: Sequence[keras.Layer], norm_layers: str = "convert") -> tuple:
    """Fresh, unbuilt copies of a chain's layers, its stock norm layers converted ("convert") or
    kept ("keep"), and a function that gives the copies the originals' weights once they are
    built. Raises ConfigError listing every layer that breaks exact adaptation and is neither
    converted nor kept.

    Returns:
        (copies, assign: () -> None).
    """
    refused = [f for f in findings(layers)
               if not (_is_norm(f.kind) and (norm_layers == "keep" or
                                             (norm_layers == "convert" and f.convertible)))]
    if refused:
        what = ("norm layers are refused (model.norm_layers: refuse)"
                if norm_layers == "refuse" else "these layers break exact adaptation")
        raise ConfigError(f"the model's {what}:\n  " + "\n  ".join(f.line() for f in refused))
    convert = norm_layers == "convert"
    copies = [_copy(layer, convert) for layer in layers]

    def assign():
        for layer, copy in zip(layers, copies):
            copy.set_weights(_weights_for(layer, copy, convert))

    return copies, assign


def _is_norm(kind: str) -> bool:
    return kind in ("BatchNormalization", "LayerNormalization")


def _copy(layer: keras.Layer, convert: bool) -> keras.Layer:
    """A fresh, unbuilt layer like `layer`; with `convert`, stock norm layers become tfmeta's
    exact ones."""
    if convert and isinstance(layer, keras.layers.BatchNormalization):
        return BatchNorm(epsilon=layer.epsilon, dtype=layer.dtype_policy, name=layer.name)
    if convert and isinstance(layer, keras.layers.LayerNormalization):
        return LayerNorm(epsilon=layer.epsilon, dtype=layer.dtype_policy, name=layer.name)
    return type(layer).from_config(layer.get_config())


def _weights_for(layer: keras.Layer, copy: keras.Layer, convert: bool) -> list:
    """`layer`'s weights in the order `copy` holds them (gamma and beta alone for a converted
    norm layer: the exact one keeps no moving statistics)."""
    if convert and isinstance(layer, (keras.layers.BatchNormalization,
                                      keras.layers.LayerNormalization)):
        return [np.asarray(layer.gamma), np.asarray(layer.beta)]
    return layer.get_weights()


def load_factory(path: str) -> Callable:
    """The function `package.module:function` names; ConfigError naming model.factory when it
    cannot be imported."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"model.factory must be package.module:function, got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"model.factory {path!r}: cannot import {module_name} ({error}); is "
                          "it on PYTHONPATH?") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ConfigError(f"model.factory {path!r}: {module_name} has no function {attribute}")
    return factory

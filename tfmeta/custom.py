"""Your own Keras model as a `MetaModel`: its layers checked for what breaks exact meta-gradients,
stock normalization made exact, and a factory named by a dotted path (`model.arch: custom`).

tfmeta adapts a network functionally (`stateless_call` on explicit parameters) and differentiates
through the adaptation, so every layer must be a pure function of its weights and inputs whose
derivatives are exact to second order. Stock Keras breaks that in two ways:

- `keras.layers.BatchNormalization` and `LayerNormalization` take their variance around
  `stop_gradient(mean)` (`tf.nn.moments`). First derivatives are exact, every second derivative
  through the variance is wrong: a second-order meta-gradient fails a finite-difference check.
  `exact_batch_norm` swaps each for tfmeta's `BatchNorm` or `LayerNorm`, at any depth of the graph,
  with the same gamma, beta and epsilon. BatchNormalization's moving statistics go with it: MAML
  normalizes with each batch's statistics, at meta-test too.
- Layers that draw random numbers or keep state between calls (Dropout and its kin, GaussianNoise,
  stateful RNNs, anything else with non-trainable variables) make the inner loop a different
  function at every call. They are refused, each named once with the reason.

The model is any functional Keras 3 graph or `keras.Sequential` (branches, skip connections,
nested backbones such as `keras.applications`) whose output is a Dense head of N linear outputs
(logits for classification).
"""

import importlib
from typing import Callable, List, NamedTuple, Sequence

import keras

from tfmeta.batch_norm import BatchNorm, LayerNorm
from tfmeta.errors import ConfigError

# What `model.norm_layers` does with stock normalization layers: convert them to the exact ones,
# refuse the model, or keep them (wrong second derivatives; for comparisons).
NORM_POLICIES = ("convert", "refuse", "keep")
_RANDOM = (keras.layers.Dropout, keras.layers.GaussianNoise, keras.layers.GaussianDropout,
           keras.layers.AlphaDropout, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
           keras.layers.SpatialDropout3D)
_STOCK_NORMS = (keras.layers.BatchNormalization, keras.layers.LayerNormalization)
# Layers whose non-trainable variables are constants of the model, never updated by a call.
_CONSTANT_STATE = (keras.layers.Normalization,)


class Finding(NamedTuple):
    """A layer that breaks exact adaptation: its name, class, why, and whether `exact_batch_norm`
    converts it."""
    layer: str
    kind: str
    why: str
    convertible: bool

    def line(self) -> str:
        return f"{self.layer} ({self.kind}): {self.why}"


def leaves(layer: keras.Layer) -> List[keras.Layer]:
    """The layers that compute, in order: a model's layers, and those of the models nested in it
    (a backbone inside a `Sequential`, a block built as a model), without input layers."""
    if isinstance(layer, keras.Model):
        return [leaf for sub in layer.layers for leaf in leaves(sub)]
    return [] if isinstance(layer, keras.layers.InputLayer) else [layer]


def input_dtype(model: keras.Model) -> str:
    """The dtype of the model's input (a Sequential's own policy may differ from its layers')."""
    inputs = getattr(model, "inputs", None)
    return str(inputs[0].dtype) if inputs else leaves(model)[0].compute_dtype


def findings(layers: Sequence[keras.Layer]) -> List[Finding]:
    """Every layer, among `layers` and inside the models among them, that would make adaptation
    inexact or stateful: each named once, by its own name."""
    out = []
    for layer in [leaf for layer in layers for leaf in leaves(layer)]:
        kind = type(layer).__name__
        if isinstance(layer, _STOCK_NORMS):
            exact = "BatchNorm" if isinstance(layer, keras.layers.BatchNormalization) else "LayerNorm"
            why, ok = _norm_support(layer, exact)
            out.append(Finding(layer.name, kind, "computes its variance around stop_gradient("
                               "mean), so second derivatives through it are wrong" + why, ok))
        elif isinstance(layer, _RANDOM) and getattr(layer, "rate", getattr(layer, "stddev", 1)):
            out.append(Finding(layer.name, kind, "draws new random numbers at every call (MAML "
                               "adapts in training mode), so the inner loop and its meta-gradient "
                               "change from call to call; remove it (in a keras.applications "
                               "backbone it sits in the classifier top: include_top=False drops "
                               "it)", False))
        elif getattr(layer, "stateful", False):
            out.append(Finding(layer.name, kind, "is stateful: it carries state from one call to "
                               "the next, which functional adaptation cannot; use stateful=False",
                               False))
        elif (layer.non_trainable_variables and not isinstance(layer, _RANDOM + _CONSTANT_STATE)
              and layer.trainable):
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


def check(model: keras.Model, norm_layers: str = "convert") -> None:
    """Raises ConfigError listing, one line each, every layer of `model` (at any depth) that
    breaks exact adaptation and that `norm_layers` neither converts nor keeps."""
    refused = [f for f in findings([model])
               if not (_is_norm(f.kind) and (norm_layers == "keep" or
                                             (norm_layers == "convert" and f.convertible)))]
    if refused:
        what = ("norm layers are refused (model.norm_layers: refuse)"
                if norm_layers == "refuse" else "these layers break exact adaptation")
        raise ConfigError(f"model {model.name}: {what}:\n  "
                          + "\n  ".join(f.line() for f in refused))


def exact_batch_norm(model: keras.Model, example_shape: Sequence[int] = None) -> keras.Model:
    """A copy of `model` (a Sequential or any functional graph, nested models included) whose
    stock BatchNormalization and LayerNormalization layers are tfmeta's exact BatchNorm and
    LayerNorm, with the same gamma, beta and epsilon; every other layer is a copy with the same
    weights. Its outputs equal the model's in training mode (batch statistics). Raises
    ConfigError for a layer it cannot convert, or one that breaks exact adaptation.

    Args:
        model: a built Keras model.
        example_shape: the shape of one input, to build a model that is not built yet.
    """
    if not model.built:
        model.build((None, *example_shape))
    return copy_model(model, "convert")


def copy_model(model: keras.Model, norm_layers: str = "convert") -> keras.Model:
    """A copy of `model` with the same weights, its stock norm layers converted ("convert") or
    kept ("keep"), after `check`. Names are kept, so that layers are chosen by the same names."""
    check(model, norm_layers)
    convert = norm_layers == "convert"

    def clone(layer):
        if convert and isinstance(layer, keras.layers.BatchNormalization):
            return BatchNorm(epsilon=layer.epsilon, dtype=layer.dtype_policy, name=layer.name)
        if convert and isinstance(layer, keras.layers.LayerNormalization):
            return LayerNorm(epsilon=layer.epsilon, dtype=layer.dtype_policy, name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    if isinstance(model, keras.Sequential) or _is_functional(model):
        copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    else:
        raise ConfigError(f"model {model.name} is a subclassed keras.Model "
                          f"({type(model).__name__}); tfmeta takes a keras.Sequential or a "
                          "functional model, whose layers it can see and convert")
    if not copy.built:
        copy.build(model.input_shape)
    originals, copies = leaves(model), leaves(copy)
    for layer, twin in zip(originals, copies):
        if convert and isinstance(layer, _STOCK_NORMS):
            twin.set_weights([layer.gamma.numpy(), layer.beta.numpy()])
        else:
            twin.set_weights(layer.get_weights())
        twin.trainable = layer.trainable
    return copy


def _is_functional(model: keras.Model) -> bool:
    return type(model).__name__ == "Functional" or isinstance(model, keras.src.models.Functional)


def _is_norm(kind: str) -> bool:
    return kind in ("BatchNormalization", "LayerNormalization")


def head_of(model: keras.Model) -> keras.Layer:
    """The layer that produces the model's output."""
    if isinstance(model, keras.Sequential):
        return model.layers[-1]
    outputs = model.outputs
    if len(outputs) != 1:
        raise ConfigError(f"model {model.name} has {len(outputs)} outputs; tfmeta takes one "
                          "(the head's)")
    return outputs[0]._keras_history[0]


def split(model: keras.Model) -> tuple:
    """(features, head) of a model whose output is its head's: `features` maps the model's input
    to the head's input, through the same layer objects (their weights are the model's)."""
    head = head_of(model)
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, head.input, name="features"), head


def load_weights(model: keras.Model, path: str) -> None:
    """Loads a `.weights.h5` file, or a whole `.keras` model's weights, into `model` (pretrained
    weights saved locally); ConfigError naming model.weights when they do not fit."""
    try:
        if path.endswith(".keras"):
            saved = keras.saving.load_model(path, compile=False)
            model.set_weights(saved.get_weights())
        elif path.endswith(".weights.h5"):
            model.load_weights(path)
        else:
            raise ConfigError(f"model.weights {path!r} must be a .weights.h5 or .keras file")
    except (OSError, ValueError) as error:
        raise ConfigError(f"model.weights {path!r} cannot be loaded into the factory's model "
                          f"{model.name}: {str(error).splitlines()[0]}") from None


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

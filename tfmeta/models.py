"""The meta-learned networks: conv4 (Finn et al., 2017), ResNet-12 (MetaOptNet, Lee et al. 2019),
the sine-regression MLP, and any Keras model (`from_keras`).

Every model is a `MetaModel`: a feature network h = f_feat(x) followed by a linear head. The split is
explicit because representation metrics read h, and the finetune baseline swaps the head. The
feature network is any Keras graph (a chain, residual blocks, a nested backbone). Models are
called functionally on explicit parameter lists through `apply`, never by mutating their variables.
Parameters are chosen by layer name: which the inner loop adapts and which are frozen
(`InnerLoop`).

A model's `norm` mode says how batch norm treats a task's query set (`query_outputs`):

- "transductive": the query set is normalized by its own statistics, as in Finn et al. (2017) and
  the papers tfmeta reproduces. A query's prediction depends on the other queries beside it.
- "support": the query set is normalized by the support set's statistics at the same weights
  (MetaBN, Bronskill et al. 2020, "TaskNorm"). Each query's prediction depends only on the support
  set and itself, so a server can answer one query at a time.

The support set is normalized by its own statistics in both modes, so the inner loop, the support
loss and every landscape metric are the same computation in both.
"""

import dataclasses
import fnmatch
import functools
import re
import warnings
from typing import Callable, NamedTuple, Optional, Sequence

import keras
import tensorflow as tf

from tfmeta import batch_norm, custom
from tfmeta.batch_norm import BatchNorm
from tfmeta.config.model import NORMS, ModelConfig, patterns
from tfmeta.custom import exact_batch_norm, leaves
from tfmeta.errors import ConfigError

__all__ = ["MetaModel", "InnerLoop", "InnerRates", "Gains", "Parts", "build", "conv4", "mlp",
           "resnet12", "from_keras", "custom_model", "params_of", "parts", "effective", "apply",
           "head", "features", "query_outputs", "query_features", "joint_outputs",
           "support_statistics", "outputs_given", "exact_batch_norm"]


@dataclasses.dataclass(frozen=True)
class InnerLoop:
    """What the inner loop adapts, and at which rates, where that is meta-learned with the model.

    Attributes:
        head_only: only the head adapts (ANIL, Raghu et al. 2019); the features stay at theta.
        learned_lr: "" (the config's fixed alpha), "element" (Meta-SGD, Li et al. 2017: one
            learned rate per parameter element) or "layer_step" (MAML++'s LSLR: one learned rate
            per parameter tensor and inner step). Learned rates start at `lr`.
        lr: alpha, the learned rates' initial value.
        steps: S, the inner steps with their own rates and batch-norm weights; a later step t >= S
            (evaluation may take more steps than training) uses step S - 1's.
        step_norms: per-step batch-norm weights and biases (MAML++'s BNWB). As in MAML++, they are
            meta-learned and not adapted by the inner loop.
        adapt: which layers the inner loop adapts, by name (`model.adapt_layers`): "all", "head",
            "last:N" (the last N layers with trainable weights) or comma-separated `fnmatch`
            patterns; `head_only` (ANIL) is "head".
        frozen: patterns of layers that neither adapt nor meta-train (`model.frozen_layers`).
    """
    head_only: bool = False
    learned_lr: str = ""
    lr: float = 0.01
    steps: int = 1
    step_norms: bool = False
    adapt: str = "all"
    frozen: tuple = ()


class InnerRates(keras.layers.Layer):
    """Learned inner learning rates, one variable per adapted parameter tensor: shaped like the
    tensor ("element") or [S] ("layer_step"), all starting at alpha. Each is an attribute of its
    own (rate_0, rate_1, ...), as TensorFlow checkpoints track attributes, not lists, of a Keras 3
    layer."""

    def __init__(self, shapes: Sequence[tuple], init: float, **kwargs):
        super().__init__(**kwargs)
        for i, shape in enumerate(shapes):
            setattr(self, f"rate_{i}", self.add_weight(
                shape=shape, initializer=keras.initializers.Constant(init), name=f"rate_{i}"))
        self.count = len(shapes)
        self.built = True

    @property
    def values(self) -> list:
        return [getattr(self, f"rate_{i}") for i in range(self.count)]


class MetaModel(keras.Model):
    """A feature network followed by a linear head.

    Args:
        features: a Keras model (a chain or any graph) mapping x [B, *input_shape] to h [B, D].
        head: a Dense layer mapping h [B, D] to outputs [B, outputs].
        input_shape: the shape of one example, without the batch dimension.
        loss: "cross_entropy" (outputs are logits over classes) or "mse" (outputs are predictions).
        gains: add Wormhole MAML's per-tensor gains (see `Gains`).
        norm: the query-set normalization mode, one of NORMS.
        inner: what the inner loop adapts and at which rates (`InnerLoop`).

    `trainable_variables` lists the features', the head's, the gains' (if any) and the learned
    rates' (if any), in that order; `inner_indices` are the entries the inner loop adapts.
    """

    def __init__(self, features: keras.Model, head: keras.layers.Dense,
                 input_shape: Sequence[int], loss: str, gains: bool = False,
                 norm: str = "transductive", inner: InnerLoop = InnerLoop(), **kwargs):
        # The head's dtype, so that a float64 network is not handed its inputs cast to float32.
        super().__init__(**{"dtype": head.dtype_policy, **kwargs})
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}. Received norm={norm!r}")
        self.features = features
        self.head = head
        self.example_shape = tuple(input_shape)
        self.loss_name = loss
        self.with_gains = gains
        self.norm = norm
        self.inner = inner
        self.build((None, *self.example_shape))

    def build(self, input_shape):
        if not self.features.built:
            self.features.build(input_shape)
        if not self.head.built:   # a Keras model's head comes built
            self.head.build(self.features.compute_output_shape(input_shape))
        every = leaves(self.features) + [self.head]
        for pattern in self.inner.frozen:
            matched = [layer for layer in every if fnmatch.fnmatchcase(layer.name, pattern)]
            if not matched:
                raise ConfigError(f"model {self.name}: model.frozen_layers pattern {pattern!r} "
                                  "names no layer; they are: "
                                  f"{', '.join(layer.name for layer in every)}")
            for layer in matched:
                layer.trainable = False
        self.num_gated = len(self.features.trainable_variables) + len(self.head.trainable_variables)
        self.gains = Gains(self.num_gated, dtype=self.head.dtype_policy) if self.with_gains else None
        weights = self.features.trainable_variables + self.head.trainable_variables
        adapted = {id(v) for layer in self.adapted_layers() for v in layer.trainable_variables}
        # MAML++'s per-step norm weights are meta-learned, never adapted.
        adapted -= {id(v) for layer in leaves(self.features) if isinstance(layer, BatchNorm)
                    and layer.steps for v in layer.trainable_variables}
        indices = [i for i, w in enumerate(weights) if id(w) in adapted]
        indices += [self.num_gated] if self.gains is not None and not self.inner.head_only else []
        if not indices:
            raise ConfigError(f"model {self.name}: the inner loop adapts no parameter "
                              f"(adapt {self.inner.adapt!r}, frozen {list(self.inner.frozen)}); "
                              f"layers with weights: {', '.join(self.layer_names())}")
        self.inner_indices = tuple(indices)
        self.rates = None
        if self.inner.learned_lr:
            per_step = self.inner.learned_lr == "layer_step"
            shapes = [(self.inner.steps,) if per_step else tuple(weights[i].shape)
                      for i in indices]
            self.rates = InnerRates(shapes, self.inner.lr, dtype=self.head.dtype_policy)
        self.built = True

    def layer_names(self) -> list:
        """The names of the layers with trainable weights, features then head, in order."""
        return [layer.name for layer in self._weighted()]

    def _weighted(self) -> list:
        return [layer for layer in leaves(self.features) + [self.head]
                if layer.trainable_variables]

    def adapted_layers(self) -> list:
        """The layers whose parameters the inner loop adapts (`InnerLoop.adapt`), among those
        with trainable weights; ConfigError for a pattern that names no layer."""
        weighted, spec = self._weighted(), "head" if self.inner.head_only else self.inner.adapt
        if spec == "all":
            return weighted
        if spec == "head":
            return [self.head]
        last = re.fullmatch(r"last:(\d+)", spec)
        if last:
            return weighted[-int(last.group(1)):]
        chosen = []
        for pattern in patterns(spec):
            matched = [layer for layer in weighted if fnmatch.fnmatchcase(layer.name, pattern)
                       or (pattern == "head" and layer is self.head)]
            if not matched:
                raise ConfigError(f"model {self.name}: model.adapt_layers pattern {pattern!r} "
                                  "names no layer with trainable weights; they are: "
                                  f"{', '.join(self.layer_names())}")
            chosen += [layer for layer in matched if layer not in chosen]
        return chosen

    def call(self, x, training=None, reference_rows=None, step=None, features_only=False):
        """x [B, *example_shape] -> outputs [B, outputs], or the representation h [B, D] with
        `features_only`; `reference_rows` k makes every batch norm take its statistics from the
        first k rows, and `step` t its inner step's weights (see `BatchNorm`)."""
        # The batch norms read `reference_rows` and `step` from a context, at any depth of the
        # feature graph; `training` is passed explicitly because stateless_call enters `call`
        # directly, with no call context to carry it to the inner layers.
        with batch_norm.statistics(reference_rows, step):
            h = self.features(x, training=training)
        return h if features_only else self.head(h, training=training)

    @property
    def normalizes(self) -> bool:
        """Whether the network has batch norm layers (the sine MLP has none)."""
        return any(isinstance(layer, BatchNorm) for layer in leaves(self.features))

    @property
    def query_independent(self) -> bool:
        """Whether a query's outputs depend only on the support set and the query itself."""
        return self.norm == "support" or not self.normalizes

    @property
    def num_feature_params(self) -> int:
        """How many leading entries of `trainable_variables` belong to the feature network."""
        return len(self.features.trainable_variables)

    @property
    def num_rates(self) -> int:
        """How many trailing entries of `trainable_variables` are learned inner rates."""
        return len(self.inner_indices) if self.rates is not None else 0


class Gains(keras.layers.Layer):
    """Wormhole MAML's multiplicative shortcut: one scalar gain s_k per weight tensor W_k.

    The network computes with s_k * W_k. The gains start at 1, are meta-learned, and the inner loop
    adapts them together with the weights, so one inner step can rescale a whole tensor: "an extra
    multiplicative parameter introduced in the inner-loop adaptation" (the Wormhole MAML abstract),
    read here as a per-tensor gain. The gains are one variable `scales` [count]: a single tracked
    attribute, so checkpoints hold it without an optimizer.
    """

    def __init__(self, count: int, **kwargs):
        super().__init__(**kwargs)
        self.scales = self.add_weight(shape=(count,), initializer="ones", name="scales")
        self.built = True


class Parts(NamedTuple):
    """A parameter list (in `model.trainable_variables`' order) by role.

    Attributes:
        features: the feature network's tensors.
        head: the head's kernel and bias.
        gains: Wormhole's gains [len(features) + len(head)], or None.
        rates: the learned inner rates, one per adapted tensor ([] when the rates are fixed).
    """
    features: list
    head: list
    gains: Optional[tf.Tensor]
    rates: list


def parts(model: MetaModel, params: Sequence[tf.Tensor]) -> Parts:
    """`params` (matching `model.trainable_variables`) by role; the list itself stays the one
    representation every function takes, so that a tape or an optimizer sees plain tensors."""
    params = list(params)
    first, gated = model.num_feature_params, model.num_gated
    return Parts(params[:first], params[first:gated],
                 params[gated] if model.gains is not None else None,
                 params[len(params) - model.num_rates:] if model.num_rates else [])


def effective(model: MetaModel, params: Sequence[tf.Tensor]) -> list:
    """The weights the network computes with: s_k * W_k for a model with gains, else `params`.

    The gains' vector [num_gated] is kept at the end, so the list still matches
    `model.trainable_variables` (stateless_call needs every variable's value).
    """
    params = list(params)
    if model.gains is None:
        return params
    named = parts(model, params)
    gated = named.features + named.head
    return [named.gains[i] * w for i, w in enumerate(gated)] + params[len(gated):]


def apply(model: MetaModel, params: Sequence[tf.Tensor], x: tf.Tensor,
          reference_rows: Optional[int] = None, step: Optional[int] = None) -> tf.Tensor:
    """Runs the model on explicit parameters.

    Args:
        model: the model whose architecture is used; its variables are not read.
        params: tensors matching `model.trainable_variables`.
        x: inputs [B, *model.example_shape].
        reference_rows: k, so that batch norm takes its statistics from x[:k]; None: all of x.
        step: the inner step whose per-step batch-norm weights to use (`InnerLoop.step_norms`);
            None: the last step's, as at an adapted solution.

    Returns:
        Outputs [B, outputs]: logits or regression predictions.
    """
    outputs, _ = model.stateless_call(effective(model, params), _non_trainable(model), x,
                                      training=True, reference_rows=reference_rows, step=step)
    return outputs


def head(model: MetaModel, params: Sequence[tf.Tensor], h: tf.Tensor) -> tf.Tensor:
    """The head alone on representations h [B, D] (a model without gains): outputs [B, outputs]."""
    outputs, _ = model.head.stateless_call(parts(model, params).head, [], h, training=True)
    return outputs


def query_outputs(model: MetaModel, params: Sequence[tf.Tensor], support_x: tf.Tensor,
                  query_x: tf.Tensor, step=None) -> tf.Tensor:
    """Outputs [Q, outputs] for a task's query set query_x [Q, ...] at `params`, normalized as the
    model's `norm` mode says: by the query set's own statistics ("transductive"), or by those of
    support_x [K, ...] at the same params ("support", one pass over [support; query]); `step` as in
    `apply`."""
    return _query_pass(model, lambda x, k: apply(model, params, x, k, step), support_x, query_x)


def support_statistics(model: MetaModel, params: Sequence[tf.Tensor], support_x: tf.Tensor,
                       step=None) -> list:
    """What a task's queries need of its support set x [K, ...] at `params`: the batch-norm
    statistics [(mean, variance), ...] of "support" norm, in the order the layers run (each
    [1, ..., C]); [] where a query needs none ("transductive", or no batch norm)."""
    if not (model.norm == "support" and model.normalizes):
        return []
    with batch_norm.recorded() as statistics:
        apply(model, params, support_x, reference_rows=tf.shape(support_x)[0], step=step)
    return statistics


def outputs_given(model: MetaModel, params: Sequence[tf.Tensor], statistics: list,
                  query_x: tf.Tensor, step=None) -> tf.Tensor:
    """`query_outputs` [Q, outputs] from what `support_statistics` kept of the support set, so a
    task adapted once answers its queries without its support set."""
    if not statistics:
        return apply(model, params, query_x, step=step)
    with batch_norm.replayed(statistics):
        return apply(model, params, query_x, step=step)


def query_features(model: MetaModel, params: Sequence[tf.Tensor], support_x: tf.Tensor,
                   query_x: tf.Tensor) -> tf.Tensor:
    """The representations h [Q, D] of a task's query set, normalized as `query_outputs`
    normalizes it: what the head sees at meta-test."""
    return _query_pass(model, lambda x, k: features(model, params, x, k), support_x, query_x)


def _query_pass(model: MetaModel, run: Callable, support_x: tf.Tensor,
                query_x: tf.Tensor) -> tf.Tensor:
    """run(x, reference_rows) on the query rows, with the statistics `model.norm` names."""
    if model.norm == "support" and model.normalizes:
        k = tf.shape(support_x)[0]
        return run(tf.concat([support_x, query_x], 0), k)[k:]
    return run(query_x, None)


def joint_outputs(model: MetaModel, params: Sequence[tf.Tensor], support_x: tf.Tensor,
                  query_x: tf.Tensor) -> tf.Tensor:
    """Outputs [K + Q, outputs] for support then query rows in one batch, as a multi-task loss on
    D u D' sees them: statistics of the whole batch ("transductive") or of the support rows
    ("support", so the query rows match `query_outputs`)."""
    x = tf.concat([support_x, query_x], 0)
    if model.norm == "support" and model.normalizes:
        return apply(model, params, x, reference_rows=tf.shape(support_x)[0])
    return apply(model, params, x)


def features(model: MetaModel, params: Sequence[tf.Tensor], x: tf.Tensor,
             reference_rows=None) -> tf.Tensor:
    """Returns the representation h = f_feat(x) [B, D] under explicit parameters (batch
    statistics of x, or of x[:reference_rows])."""
    h, _ = model.stateless_call(effective(model, params), _non_trainable(model), x,
                                training=True, reference_rows=reference_rows, features_only=True)
    return h


def _non_trainable(layer: keras.Layer) -> list:
    # tfmeta's own layers have none. A layer that keeps statistics (stock Keras BatchNormalization)
    # gets its current values; the updated values stateless_call returns are dropped, so adaptation
    # never mutates the model.
    return [tf.convert_to_tensor(v) for v in layer.non_trainable_variables]


def params_of(model: MetaModel) -> list:
    """The model's current parameters as a list of tensors (a snapshot, not the variables)."""
    return [tf.convert_to_tensor(v) for v in model.trainable_variables]


def conv4(outputs: int, image_shape: Sequence[int] = (28, 28, 1), filters: int = 64,
          pool: str = "max", dtype: str = "float32",
          norm_layer: Optional[Callable[..., keras.Layer]] = None, gains: bool = False,
          norm: str = "transductive", inner: InnerLoop = InnerLoop()) -> MetaModel:
    """The conv4 of Finn et al.: 4 x [3x3 conv, batch norm, downsample, ReLU], flatten, dense;
    its layers are named convI, normI, poolI, reluI (I = 1..4), flatten and head.

    Args:
        outputs: classes of the head (N ways).
        image_shape: [H, W, C] of one image.
        filters: channels of each conv (64 for Omniglot, 32 or 48 for MiniImagenet).
        pool: "max" downsamples with a 2x2 max-pool after a 'same' conv; "stride" uses a stride-2
            conv instead, as Finn et al. do for Omniglot.
        dtype: "float32", or "float64" for finite-difference checks.
        norm_layer: the normalization layer class, called as norm_layer(dtype=dtype, name=name);
            default `BatchNorm`, with per-step weights when `inner.step_norms`.
        gains: add a meta-learned gain per weight tensor (Wormhole MAML; see `Gains`).
        norm: how a query set is normalized, one of NORMS (see the module docstring).
        inner: what the inner loop adapts and at which rates (`InnerLoop`).
    """
    if norm_layer is None:
        norm_layer = functools.partial(BatchNorm, steps=inner.steps if inner.step_norms else 0)
    if pool not in ("max", "stride"):
        raise ValueError(f"pool must be 'max' or 'stride'. Received pool={pool!r}")
    layers = []
    for i in range(1, 5):
        strides = 2 if pool == "stride" else 1
        # No conv bias: the batch norm after it subtracts the batch mean, which cancels any bias,
        # so its gradient is identically zero and it would only cost time.
        layers += [keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                                       dtype=dtype, name=f"conv{i}"),
                   norm_layer(dtype=dtype, name=f"norm{i}")]
        # ReLU after the max-pool: ReLU is monotone, so max-pool then ReLU gives the values and
        # derivatives of ReLU then max-pool, on a 4x smaller tensor.
        if pool == "max":
            layers.append(keras.layers.MaxPooling2D(2, dtype=dtype, name=f"pool{i}"))
        layers.append(keras.layers.ReLU(dtype=dtype, name=f"relu{i}"))
    layers.append(keras.layers.Flatten(dtype=dtype, name="flatten"))
    return MetaModel(keras.Sequential(layers, name="features"),
                     keras.layers.Dense(outputs, dtype=dtype, name="head"),
                     image_shape, loss="cross_entropy", gains=gains, norm=norm, inner=inner,
                     name="conv4")


def mlp(hidden: Sequence[int] = (40, 40), inputs: int = 1, outputs: int = 1,
        activation: str = "relu", dtype: str = "float32", gains: bool = False,
        norm: str = "transductive", inner: InnerLoop = InnerLoop()) -> MetaModel:
    """An MLP regressor, inputs-hidden...-outputs (1-40-40-1 with ReLU for sine, as in MAML), its
    layers named hidden1, hidden2, ... and head;
    `gains` adds Wormhole MAML's per-tensor gains. It has no batch norm, so `norm` (recorded for
    the run) changes nothing."""
    layers = [keras.layers.Dense(width, activation=activation, dtype=dtype, name=f"hidden{i}")
              for i, width in enumerate(hidden, 1)]
    # With no hidden layer the model is linear, y = x^T w + b: identity features, the head alone.
    layers = layers or [keras.layers.Identity(dtype=dtype)]
    return MetaModel(keras.Sequential(layers, name="features"),
                     keras.layers.Dense(outputs, dtype=dtype, name="head"),
                     (inputs,), loss="mse", gains=gains, norm=norm, inner=inner, name="mlp")


def resnet12(outputs: int, image_shape: Sequence[int] = (84, 84, 3),
             widths: Sequence[int] = (64, 160, 320, 640), dtype: str = "float32",
             gains: bool = False, norm: str = "transductive",
             inner: InnerLoop = InnerLoop()) -> MetaModel:
    """ResNet-12 as in MetaOptNet (Lee et al., 2019) and learn2learn, without DropBlock: 4
    residual blocks, each 3 x [3x3 conv, batch norm, LeakyReLU 0.1] with the third LeakyReLU
    after the residual add, a 1x1 conv and batch norm as the shortcut, then a 2x2 max-pool; global
    average pooling and the head. 12.4 M parameters at the default widths and 5 ways.

    Args:
        outputs: classes of the head (N ways).
        image_shape: [H, W, C] of one image (84 x 84 x 3 for MiniImagenet).
        widths: channels of the four blocks.
        dtype: as for `conv4`.
        gains: as for `conv4`.
        norm: as for `conv4`.
        inner: as for `conv4`.

    Layers are named blockB_convJ, blockB_bnJ, blockB_shortcut, blockB_shortcut_bn, blockB_pool
    (B = 1..4, J = 1..3), pool and head, for `model.adapt_layers` and `model.frozen_layers`.
    """
    norm_layer = functools.partial(BatchNorm, steps=inner.steps if inner.step_norms else 0,
                                   dtype=dtype)
    # learn2learn's initialization: He normal on the fan-out.
    init = keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")
    conv = functools.partial(keras.layers.Conv2D, use_bias=False, kernel_initializer=init,
                             dtype=dtype)
    x = inputs = keras.Input(tuple(image_shape), dtype=dtype)
    for b, width in enumerate(widths, 1):
        shortcut = norm_layer(name=f"block{b}_shortcut_bn")(conv(width, 1, name=f"block{b}_shortcut")(x))
        h = x
        for j in (1, 2, 3):
            h = norm_layer(name=f"block{b}_bn{j}")(
                conv(width, 3, padding="same", name=f"block{b}_conv{j}")(h))
            if j < 3:
                h = keras.layers.LeakyReLU(0.1, dtype=dtype, name=f"block{b}_relu{j}")(h)
        h = keras.layers.Add(dtype=dtype, name=f"block{b}_add")([h, shortcut])
        h = keras.layers.LeakyReLU(0.1, dtype=dtype, name=f"block{b}_relu3")(h)
        x = keras.layers.MaxPooling2D(2, dtype=dtype, name=f"block{b}_pool")(h)
    x = keras.layers.GlobalAveragePooling2D(dtype=dtype, name="pool")(x)
    return MetaModel(keras.Model(inputs, x, name="features"),
                     keras.layers.Dense(outputs, dtype=dtype, name="head"),
                     image_shape, loss="cross_entropy", gains=gains, norm=norm, inner=inner,
                     name="resnet12")


def from_keras(model: keras.Model, example_shape: Sequence[int], outputs: int, loss: str,
               norm_layers: str = "convert", gains: bool = False, norm: str = "transductive",
               inner: InnerLoop = InnerLoop()) -> MetaModel:
    """Your Keras model as a MetaModel: a keras.Sequential or any functional graph (branches,
    skip connections, nested models such as a keras.applications backbone), whose output is a
    Dense of `outputs` linear units, the head; everything before it is the features. Weights are
    copied. Stock BatchNormalization and LayerNormalization layers, at any depth, are converted
    to the exact ones (`norm_layers="convert"`, with a warning that names them), refused
    ("refuse") or kept ("keep": wrong second derivatives); layers that make adaptation stateful
    are refused, each named on its own line (`tfmeta.custom`).

    Args:
        model: a Keras model from x [B, *example_shape] to [B, outputs].
        loss: "cross_entropy" (the outputs are logits) or "mse".
        inner: what the inner loop adapts, and what is frozen, by layer name.
    """
    if not model.built:
        model.build((None, *example_shape))
    last = custom.head_of(model)
    if not (isinstance(last, keras.layers.Dense) and last.units == outputs
            and last.get_config()["activation"] == "linear"):
        raise ConfigError(f"model {model.name}: its output layer must be Dense({outputs}) with no "
                          f"activation (the head, {'logits' if loss == 'cross_entropy' else 'predictions'}"
                          f"), got {type(last).__name__}"
                          + (f"({last.units}, activation={last.get_config()['activation']})"
                             if isinstance(last, keras.layers.Dense) else ""))
    converted = [f"{f.layer} ({f.kind})" for f in custom.findings([model])
                 if norm_layers == "convert" and f.convertible]
    features, head = custom.split(custom.copy_model(model, norm_layers))
    if converted:
        shown = ", ".join(converted[:6]) + (f" and {len(converted) - 6} more"
                                            if len(converted) > 6 else "")
        layers = "layer" if len(converted) == 1 else "layers"
        warnings.warn(f"model {model.name}: converted {len(converted)} stock normalization "
                      f"{layers} to tfmeta's exact ones ({shown}): their second derivatives "
                      "would be wrong", stacklevel=2)
    return MetaModel(features, head, example_shape, loss=loss, gains=gains, norm=norm,
                     inner=inner, name=model.name)


def custom_model(config: ModelConfig, example_shape: Sequence[int], outputs: int, loss: str,
                 gains: bool = False, inner: InnerLoop = InnerLoop()) -> MetaModel:
    """`model.factory`'s model (called as factory(example_shape, outputs)), with `model.weights`
    loaded into it when given, through `from_keras`."""
    factory = custom.load_factory(config.factory)
    model = factory(tuple(example_shape), outputs)
    if not isinstance(model, keras.Model):
        raise ConfigError(f"model.factory {config.factory!r} returned "
                          f"{type(model).__name__}, not a keras.Model")
    if not model.built:
        model.build((None, *example_shape))
    if config.weights:
        custom.load_weights(model, config.weights)
    return from_keras(model, example_shape, outputs, loss, config.norm_layers, gains,
                      config.norm, inner)


def build(config: ModelConfig, example_shape: Sequence[int], outputs: int,
          gains: bool = False, inner: InnerLoop = InnerLoop(),
          loss: str = "cross_entropy") -> MetaModel:
    """The model `config` describes, for examples of `example_shape` and a head of `outputs`;
    `gains` adds Wormhole MAML's per-tensor gains, `inner` what the inner loop adapts, `loss` the
    task's loss (a custom model's; conv4 is a classifier and the MLP a regressor)."""
    arch = config.arch
    if arch == "auto":
        arch = "mlp" if len(example_shape) == 1 else "conv4"
    if arch == "custom":
        return custom_model(config, example_shape, outputs, loss, gains, inner)
    if arch == "resnet12":
        return resnet12(outputs, example_shape, config.widths, config.dtype, gains=gains,
                        norm=config.norm, inner=inner)
    if arch == "mlp":
        return mlp(config.hidden, example_shape[0], outputs, dtype=config.dtype, gains=gains,
                   norm=config.norm, inner=inner)
    return conv4(outputs, example_shape, config.filters, config.pool, dtype=config.dtype,
                 gains=gains, norm=config.norm, inner=inner)

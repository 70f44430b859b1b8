"""The network's options (`tfmeta.models` builds it)."""

import dataclasses
import re

from tfmeta.errors import expect

ARCHS = ("auto", "conv4", "mlp", "resnet12", "custom")
# What the inner loop adapts, besides comma-separated layer-name patterns (`fnmatch`).
ADAPT_SPECS = ("all", "head", "last:N")
# What a custom model's stock BatchNormalization and LayerNormalization layers become.
NORM_LAYERS = ("convert", "refuse", "keep")
POOLS = ("max", "stride")
DTYPES = ("float32", "float64")
# How batch norm normalizes a query set (`tfmeta.models`).
NORMS = ("transductive", "support")


@dataclasses.dataclass
class ModelConfig:
    """The network.

    Attributes:
        arch: "conv4", "mlp", "resnet12", "auto" (mlp for sine, conv4 for image datasets), or
            "custom" (your Keras model, from `factory`).
        filters: conv4 channels per layer.
        widths: ResNet-12's channels per residual block (64, 160, 320, 640 in MetaOptNet).
        pool: conv4 downsampling, "max" (2x2 max-pool) or "stride" (stride-2 convs).
        hidden: MLP hidden widths.
        dtype: "float32", or "float64" for exactness checks.
        norm: how batch norm normalizes a query set: "transductive" (by its own statistics) or
            "support" (by the support set's; queries independent of each other). See NORMS.
        factory: for arch custom, "package.module:function": function(input_shape, outputs)
            returns a Keras model from [B, *input_shape] to [B, outputs] (`models.from_keras`).
        norm_layers: what a custom model's stock BatchNormalization and LayerNormalization
            layers become: "convert" (to tfmeta's exact layers), "refuse", or "keep" (their
            second derivatives are wrong; for comparisons only).
        weights: for arch custom, a `.weights.h5` or `.keras` file whose weights are loaded into
            the factory's model before anything else (pretrained weights saved locally).
        adapt_layers: what the inner loop adapts, by layer name: "all", "head" (ANIL for any
            model), "last:N" (the last N layers with weights, the head among them), or
            comma-separated `fnmatch` patterns of layer names ("head,block4_*").
        frozen_layers: comma-separated patterns of layers that neither adapt nor meta-train (a
            pretrained backbone); "" for none.
    """
    arch: str = "auto"
    filters: int = 64
    pool: str = "max"
    hidden: list = dataclasses.field(default_factory=lambda: [40, 40])
    dtype: str = "float32"
    norm: str = "transductive"
    factory: str = ""
    norm_layers: str = "convert"
    widths: list = dataclasses.field(default_factory=lambda: [64, 160, 320, 640])
    weights: str = ""
    adapt_layers: str = "all"
    frozen_layers: str = ""

    def check(self, key: str = "model") -> None:
        """Raises ConfigError naming the first `key.field` out of range."""
        expect(self.arch in ARCHS, f"{key}.arch", ", ".join(ARCHS), self.arch)
        expect(self.filters >= 1, f"{key}.filters", "a positive integer", self.filters)
        expect(self.pool in POOLS, f"{key}.pool", " or ".join(POOLS), self.pool)
        expect(all(isinstance(h, int) and h >= 1 for h in self.hidden), f"{key}.hidden",
               "a list of positive integers", self.hidden)
        expect(self.dtype in DTYPES, f"{key}.dtype", " or ".join(DTYPES), self.dtype)
        expect(self.norm in NORMS, f"{key}.norm", " or ".join(NORMS), self.norm)
        expect(self.norm_layers in NORM_LAYERS, f"{key}.norm_layers", ", ".join(NORM_LAYERS),
               self.norm_layers)
        expect(self.arch != "custom" or ":" in self.factory, f"{key}.factory",
               "package.module:function for model.arch custom", self.factory)
        expect(all(isinstance(w, int) and w >= 1 for w in self.widths) and self.widths,
               f"{key}.widths", "a list of positive integers", self.widths)
        expect(not self.weights or self.arch == "custom", f"{key}.weights",
               "empty unless model.arch is custom (the file's weights go into your model)",
               self.weights)
        spec = self.adapt_layers
        expect(spec in ("all", "head") or re.fullmatch(r"last:[1-9]\d*", spec)
               or (not spec.startswith("last:") and patterns(spec)), f"{key}.adapt_layers",
               "all, head, last:N (N >= 1) or comma-separated layer-name patterns", spec)
        expect(not self.frozen_layers or patterns(self.frozen_layers), f"{key}.frozen_layers",
               "comma-separated layer-name patterns, or empty", self.frozen_layers)


def patterns(text: str) -> tuple:
    """"head, block4_*" -> ("head", "block4_*"); () when any is empty."""
    parts = tuple(part.strip() for part in text.split(","))
    return parts if all(parts) else ()

"""tfmeta: gradient-based meta-learning in TensorFlow/Keras.

The one idea: adaptation is a pure function, `tfmeta.adaptation.adapt`, on explicit parameter
tensors; every algorithm, metric, evaluation and export calls it.

The public API is the modules of `__all__` (and `tfmeta_serving.client`), each with an `__all__` of
its own: the API reference renders exactly these. The other modules are tfmeta's internals (the
run directory, the training loop, the CLI's pieces) and may change without notice.
"""

__all__ = ["adaptation", "algorithms", "models", "tasks", "landscape", "hessian", "keras", "export"]

__version__ = "0.1.0"

"""tfmeta: gradient-based meta-learning in TensorFlow/Keras.

The one idea: adaptation is a pure function, `tfmeta.adaptation.adapt`, on explicit parameter
tensors; every algorithm, metric, evaluation and export calls it.
"""

__version__ = "0.1.0"

"""The keys of an epoch's record (history.jsonl, TensorBoard tags, Keras logs), spelled once.

A record holds "meta_train/<metric>" (the epoch's training means), "meta_test/<metric>" with
"meta_test/<metric>_ci95" (the per-epoch evaluation and its 95% half-width),
"landscape/<metric>" and "system/<name>". No TensorFlow here: reports read records without it.
"""

META_TRAIN = "meta_train/"
META_TEST = "meta_test/"
LANDSCAPE = "landscape/"
SYSTEM = "system/"
CI95 = "_ci95"
ACCURACY = META_TEST + "accuracy"
MSE = META_TEST + "mse"


def prefixed(prefix: str, values: dict) -> dict:
    """{prefix + name: value} for each of `values`."""
    return {prefix + name: value for name, value in values.items()}


def target(loss: str) -> str:
    """The meta-test score the landscape is set beside: accuracy for a classifier, else MSE."""
    return ACCURACY if loss == "cross_entropy" else MSE

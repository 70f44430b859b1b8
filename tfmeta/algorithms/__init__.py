"""Meta-learning algorithms: each turns a meta-batch into a meta-gradient via `adaptation.adapt`."""

from tfmeta.algorithms import maml

ALGORITHMS = {"maml": maml.meta_gradient}


def get(name: str):
    """Returns the meta-gradient function registered as `name`."""
    return ALGORITHMS[name]

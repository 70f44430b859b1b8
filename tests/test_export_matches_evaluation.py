"""Every algorithm's export answers each held-out task exactly as in-process evaluation scores
it, through `tf.saved_model.load` and TensorFlow Serving's session loader."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from helpers import SessionModel, train_tiny
from tfmeta import export, models, rundir
from tfmeta.adaptation import adapt
from tfmeta.run import Run

pytestmark = [pytest.mark.trains, pytest.mark.slow]

# The preset's own norm (transductive) for every algorithm; support norm too for MAML (the
# statistics a task keeps) and MAML++ (its per-step rows), the two ways a query's normalization
# differs between algorithms.
CASES = [("omniglot_5w1s-cpu", (None, "support")), ("omniglot_5w1s_anil-cpu", (None,)),
         ("omniglot_5w1s_meta_sgd-cpu", (None,)), ("omniglot_5w1s_mamlpp-cpu", (None, "support")),
         ("omniglot_5w1s_wormhole-cpu", (None,)),
         ("omniglot_5w1s_gradient_agreement-cpu", (None,)),
         ("omniglot_20w1s_maml_reg-cpu", (None,)), ("omniglot_5w1s_finetune-cpu", (None,))]


@pytest.mark.parametrize("preset,norms", CASES, ids=[preset for preset, _ in CASES])
def test_every_algorithms_export_answers_each_task_as_evaluation_scores_it(preset, norms,
                                                                         omniglot_dir, tmp_path):
    """A short run of each CPU preset, exported with each of `norms`: every held-out task's logits
    match in-process adaptation from where evaluation starts it (the finetune baseline's head drawn
    from the support set), through both loaders."""
    run_dir = train_tiny(tmp_path / "run", preset, f"data.omniglot.data_dir={omniglot_dir}",
                         "model.filters=8", "train.iterations=4", "train.eval_tasks=2",
                         "algorithms.maml.multi_step_epochs=0",
                         "algorithms.maml.first_order_epochs=0",
                         "algorithms.finetune.batch_size=8")
    for norm in norms:
        version = export.export_run(run_dir, tmp_path / f"models-{norm}", norm=norm,
                                    log=lambda _: None)
        run = Run.open(run_dir, config=export_config(run_dir, norm))
        run.restore(log=lambda _: None)
        steps = run.config.adapt.eval_steps
        loaded, session = tf.saved_model.load(str(version)), SessionModel(version)
        try:
            for episode in run.source.episodes("test", seed=4, meta_batch=1).unbatch().take(2):
                start = run.origin.task(run.origin.params(), episode.support)
                adapted, _ = adapt(run.eval_model, start, episode.support, run.config.adapt,
                                   steps=steps)
                expected = models.query_outputs(run.eval_model, adapted, episode.support_x,
                                                episode.query_x, steps - 1).numpy()
                inputs = {"support_x": episode.support_x, "support_y": episode.support_y,
                          "query_x": episode.query_x}
                got = loaded.signatures["adapt_predict"](**inputs)["logits"].numpy()
                np.testing.assert_allclose(got, expected, atol=5e-4, err_msg=f"{preset} {norm}")
                arrays = {k: v.numpy() for k, v in inputs.items()}
                served = session.run("adapt_predict", arrays)
                np.testing.assert_allclose(served["logits"], expected, atol=5e-4,
                                           err_msg=f"{preset} {norm}")
                task = session.run("adapt", {k: arrays[k] for k in ("support_x", "support_y")})
                kept = session.run("predict_task", {"task_bytes": task["task_bytes"],
                                                    "query_x": arrays["query_x"]})
                np.testing.assert_allclose(kept["logits"], expected, atol=5e-4,
                                           err_msg=f"{preset} {norm}, kept task")
        finally:
            session.close()


def export_config(run_dir, norm):
    """The run's config as its export served it: with `norm` in place of the trained one."""
    saved = rundir.read_config(run_dir)
    return dataclasses.replace(saved, model=dataclasses.replace(
        saved.model, norm=norm or saved.model.norm))

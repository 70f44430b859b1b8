"""The exported SavedModel against in-process adaptation, in a fresh process and in TensorFlow's
session-based loader (TF Serving's mechanism); query independence, image files, M-way requests and
the request checks."""

import dataclasses
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from bombs import jpeg_bomb, png_bomb
from helpers import SessionModel, graph_sentence, session_run, train_tiny
from tfmeta import config as config_lib, export, models
from tfmeta.adaptation import adapt
from tfmeta.errors import ConfigError
from tfmeta.models import query_outputs
from tfmeta.run import Run
from tfmeta.tasks.image_format import omniglot_format
from tfmeta.tasks.omniglot_files import character_files, file_tasks

# Every test here trains a model or starts a process: the `trains` tier.
pytestmark = pytest.mark.trains


@pytest.fixture(scope="module")
def support_run(omniglot_dir, tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("support") / "run", "omniglot_5w1s-cpu",
                      f"data.omniglot.data_dir={omniglot_dir}", "model.filters=8",
                      "train.meta_batch=2", "model.norm=support")


@pytest.fixture(scope="module")
def omniglot_version(tiny_omniglot_run, tmp_path_factory) -> Path:
    return export.export_run(tiny_omniglot_run, tmp_path_factory.mktemp("models") / "o")


@pytest.fixture(scope="module")
def support_version(support_run, tmp_path_factory) -> Path:
    return export.export_run(support_run, tmp_path_factory.mktemp("models") / "s")


@pytest.fixture(scope="module")
def omniglot_export(omniglot_version):
    return tf.saved_model.load(str(omniglot_version))


@pytest.fixture(scope="module")
def omniglot_session(omniglot_version):
    model = SessionModel(omniglot_version)
    yield model
    model.close()


def episode_of(run_dir: Path):
    run = Run(config_lib.load(str(run_dir / "config.yaml")), run_dir)
    run.restore()
    episode = next(iter(run.source.episodes("test", 7, 1).unbatch()))
    return run, episode


def in_process(run, episode, steps):
    config = run.config.adapt
    adapted, _ = adapt(run.eval_model, [tf.convert_to_tensor(v) for v in
                                        run.eval_model.trainable_variables],
                       episode.support, config, steps=steps)
    return query_outputs(run.eval_model, adapted, episode.support_x, episode.query_x).numpy()


def assert_session_loader_agrees(version: Path, signature: str, inputs: dict, outputs: dict):
    """TF Serving's loader (restore through the saver, run by tensor names) gives the outputs
    that tf.saved_model.load gave."""
    served = session_run(version, signature, inputs)
    assert set(served) == set(outputs)
    for key, value in outputs.items():
        np.testing.assert_allclose(served[key], value, atol=1e-5, err_msg=f"{signature}/{key}")


FRESH = """
import sys, numpy as np, tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
inputs = dict(np.load(sys.argv[2]))
adapt = model.signatures["adapt_predict"]
out = {k: v.numpy() for k, v in adapt(**{k: tf.constant(v) for k, v in inputs.items()}).items()}
default = model.signatures["serving_default"](**{k: tf.constant(v) for k, v in inputs.items()})
out.update({"default_" + k: v.numpy() for k, v in default.items()})
out.update({"plain_" + k: v.numpy() for k, v in
            model.signatures["predict"](x=tf.constant(inputs["query_x"])).items()})
np.savez(sys.argv[3], **out)
"""


def run_fresh(version_dir: Path, inputs: dict, tmp_path: Path) -> dict:
    np.savez(tmp_path / "inputs.npz", **inputs)
    subprocess.run([sys.executable, "-c", FRESH, str(version_dir), str(tmp_path / "inputs.npz"),
                    str(tmp_path / "outputs.npz")], check=True,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return dict(np.load(tmp_path / "outputs.npz"))


def inputs_of(episode) -> dict:
    return {"support_x": episode.support_x.numpy(), "support_y": episode.support_y.numpy(),
            "query_x": episode.query_x.numpy()}


def test_omniglot_export_matches_in_process_adaptation_in_a_fresh_process(tiny_omniglot_run,
                                                                          tmp_path):
    version = export.export_run(tiny_omniglot_run, tmp_path / "models" / "omniglot", steps=4)
    assert version == tmp_path / "models" / "omniglot" / "1"
    assert (version / "saved_model.pb").is_file() and (version / "variables").is_dir()
    metadata = export.read_metadata(version)
    assert (metadata["ways"], metadata["example_shape"], metadata["steps"]) == (5, [28, 28, 1], 4)
    run, episode = episode_of(tiny_omniglot_run)
    out = run_fresh(version, inputs_of(episode), tmp_path)
    expected = in_process(run, episode, 4)
    np.testing.assert_allclose(out["logits"], expected, atol=1e-5)
    np.testing.assert_allclose(out["probabilities"], tf.nn.softmax(expected).numpy(), atol=1e-5)
    np.testing.assert_array_equal(out["default_logits"], out["logits"])
    np.testing.assert_allclose(out["plain_logits"], in_process(run, episode, 0), atol=1e-5)
    assert (metadata["norm"], metadata["trained_norm"], metadata["query_independent"]) == (
        "transductive", "transductive", False)
    assert set(metadata["signatures"]) == {"adapt_predict", "adapt_predict_images", "predict",
                                           "adapt", "adapt_images", "predict_task",
                                           "predict_task_images"}
    query = metadata["signatures"]["adapt_predict"]["inputs"]["query_x"]
    assert query["range"] == [0.0, 1.0] and query["shape"] == ["Q", 28, 28, 1]
    assert query["polarity"].startswith("strokes bright")
    assert "depends on the other queries" in metadata["signatures"]["adapt_predict"]["queries"]
    assert metadata["image_format"] == {"height": 28, "width": 28, "channels": 1, "invert": True}
    inputs = inputs_of(episode)
    assert_session_loader_agrees(version, "adapt_predict", inputs,
                                 {k: out[k] for k in ("logits", "probabilities")})
    assert_session_loader_agrees(version, "predict", {"x": inputs["query_x"]},
                                 {k: out["plain_" + k] for k in ("logits", "probabilities")})
    # Real gradients inside the graph: relabelling the support set changes the answer.
    relabelled = inputs_of(episode)
    relabelled["support_y"] = (relabelled["support_y"] + 1) % 5
    again = run_fresh(version, relabelled, tmp_path)
    assert np.abs(again["logits"] - out["logits"]).max() > 1e-3
    np.testing.assert_array_equal(again["plain_logits"], out["plain_logits"])


def test_sine_export_any_sizes_and_next_version(tiny_sine_run, tmp_path):
    models = tmp_path / "models" / "sine"
    first = export.export_run(tiny_sine_run, models)
    second = export.export_run(tiny_sine_run, models, steps=2)
    assert (first.name, second.name) == ("1", "2")
    # No staging folder stays; the one hidden file is the exports' lock.
    assert [p.name for p in models.iterdir() if p.name.startswith(".")] == [export.EXPORT_LOCK]
    with pytest.raises(ConfigError, match="exists"):
        export.export_run(tiny_sine_run, models, version=2)
    run, episode = episode_of(tiny_sine_run)
    loaded = tf.saved_model.load(str(second))
    for k, q in ((3, 7), (10, 1), (25, 40)):
        x = tf.random.stateless_uniform([k, 1], [k, q], -5, 5)
        y = tf.sin(x)
        query = tf.random.stateless_uniform([q, 1], [q, k], -5, 5)
        got = loaded.signatures["adapt_predict"](support_x=x, support_y=y, query_x=query)
        support = type(episode)(x, y, query, tf.sin(query))
        np.testing.assert_allclose(got["predictions"].numpy(), in_process(run, support, 2),
                                   atol=1e-5)
        assert_session_loader_agrees(second, "adapt_predict",
                                     {"support_x": x.numpy(), "support_y": y.numpy(),
                                      "query_x": query.numpy()},
                                     {"predictions": got["predictions"].numpy()})
    assert json.loads(loaded.metadata_json.numpy())["task"] == "regression"


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(support_y=np.array([0, 1, 2, 3, 5], np.int32)),
     "support_y holds 5 at index 4; labels must lie in [0, 5)"),
    (lambda r: r.update(support_y=np.array([0, -1, 2, 3, 4], np.int32)),
     "support_y holds -1 at index 1; labels must lie in [0, 5)"),
    (lambda r: r["query_x"].__setitem__((2, 0, 0, 0), np.nan),
     "query_x holds NaN or Inf in example 2"),
    (lambda r: r["support_x"].__setitem__((1, 3, 3, 0), np.inf),
     "support_x holds NaN or Inf in example 1"),
    (lambda r: r.update(support_x=r["support_x"][:0], support_y=r["support_y"][:0]),
     "support_x is empty; send at least one example"),
    (lambda r: r.update(query_x=r["query_x"][:0]), "query_x is empty; send at least one example"),
    (lambda r: r.update(support_y=r["support_y"][:4]),
     "support_x holds 5 examples but support_y holds 4 labels; send one label per support "
     "example"),
    (lambda r: r.update(support_y=np.array([0, 0, 2, 2, 3], np.int32)),
     "support_y has no example of class 1 although its largest label is 3; labels must be the "
     "classes 0..M-1 with a support example of each"),
    (lambda r: r.update(support_y=np.zeros(5, np.int32)),
     "support_y holds one class only (label 0 on all 5 support examples); a task needs at "
     "least two classes"),
    (lambda r: r.update(support_y=np.full(5, 3, np.int32)),
     "support_y holds one class only (label 3 on all 5 support examples); a task needs at "
     "least two classes"),
])
def test_bad_requests_fail_in_the_graph_with_one_sentence(tiny_omniglot_run, omniglot_export,
                                                         omniglot_session, change, message):
    """The exact sentence, through `tf.saved_model.load` and through the session loader that
    TensorFlow Serving uses (`tensorflow_model_server` shows the graph's own message)."""
    loaded = omniglot_export
    _, episode = episode_of(tiny_omniglot_run)
    request = inputs_of(episode)
    change(request)
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        loaded.signatures["adapt_predict"](**{k: tf.constant(v) for k, v in request.items()})
    assert graph_sentence(caught.value) == message
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        omniglot_session.run("adapt_predict", request)
    assert graph_sentence(caught.value) == message


def test_saved_model_cli_runs_the_export(tiny_omniglot_run, omniglot_version, tmp_path):
    """The command a TF Serving user checks an export with, as the issue ran it."""
    version = omniglot_version
    _, episode = episode_of(tiny_omniglot_run)
    for key, value in inputs_of(episode).items():
        np.save(tmp_path / f"{key}.npy", value)
    subprocess.run(["saved_model_cli", "run", "--dir", str(version), "--tag_set", "serve",
                    "--signature_def", "adapt_predict", "--inputs",
                    ";".join(f"{k}={tmp_path / k}.npy" for k in ("support_x", "support_y",
                                                                  "query_x")),
                    "--outdir", str(tmp_path / "out")],
                   check=True, capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
                                                         "PATH": f"{Path(sys.executable).parent}"
                                                                 f"{os.pathsep}{os.environ['PATH']}"})
    expected = tf.saved_model.load(str(version)).signatures["adapt_predict"](
        **{k: tf.constant(v) for k, v in inputs_of(episode).items()})["logits"].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "out" / "logits.npy"), expected, atol=1e-5)


def one_at_a_time(signature, inputs: dict) -> np.ndarray:
    return np.concatenate([
        signature(support_x=tf.constant(inputs["support_x"]),
                  support_y=tf.constant(inputs["support_y"]),
                  query_x=tf.constant(inputs["query_x"][i:i + 1]))["logits"].numpy()
        for i in range(len(inputs["query_x"]))])


@pytest.mark.parametrize("trained, served", [("support", None), ("transductive", "support")])
def test_support_norm_answers_a_query_alone_as_among_75(tiny_omniglot_run, support_run,
                                                      support_version, tmp_path, trained, served):
    run_dir = support_run if trained == "support" else tiny_omniglot_run
    version = (support_version if trained == "support" else
               export.export_run(run_dir, tmp_path / "models" / "o", norm=served))
    metadata = export.read_metadata(version)
    assert (metadata["norm"], metadata["trained_norm"]) == ("support", trained)
    assert metadata["query_independent"] and metadata["signatures"]["adapt_predict"][
        "query_independent"]
    run = Run.open(run_dir, ["model.norm=support"])
    run.restore()
    episode = next(iter(run.source.episodes("test", 7, 1).unbatch()))
    inputs = inputs_of(episode)
    assert len(inputs["query_x"]) == 75
    signature = tf.saved_model.load(str(version)).signatures["adapt_predict"]
    together = signature(**{k: tf.constant(v) for k, v in inputs.items()})["logits"].numpy()
    np.testing.assert_allclose(one_at_a_time(signature, inputs), together, rtol=0, atol=1e-6)
    np.testing.assert_allclose(together, in_process(run, episode, run.config.adapt.eval_steps),
                               atol=1e-5)
    # The same in TF Serving's loader, which rounds a little differently (within 1e-5).
    session = SessionModel(version)
    served = session.run("adapt_predict", inputs)["logits"]
    np.testing.assert_allclose(served, together, atol=1e-5)
    for i in (0, 37, 74):
        alone = session.run("adapt_predict", {**inputs, "query_x": inputs["query_x"][i:i + 1]})
        np.testing.assert_allclose(alone["logits"], served[i:i + 1], rtol=0, atol=1e-6)
    session.close()


def test_transductive_export_depends_on_the_other_queries(omniglot_export, tiny_omniglot_run):
    _, episode = episode_of(tiny_omniglot_run)
    inputs = inputs_of(episode)
    signature = omniglot_export.signatures["adapt_predict"]
    together = signature(**{k: tf.constant(v) for k, v in inputs.items()})["logits"].numpy()
    assert np.abs(one_at_a_time(signature, inputs)[:5] - together[:5]).max() > 1e-2


def float_images(files) -> np.ndarray:
    """tfmeta's own preprocessing of the files, as training stores them, in [0, 1]."""
    from PIL import Image
    import io
    image_format = omniglot_format(28)
    return np.stack([image_format.from_pil(Image.open(io.BytesIO(f))) for f in files]
                    ).astype(np.float32) / 255.0


def test_png_files_of_held_out_alphabets_give_the_float_paths_answers(support_run,
                                                                     support_version):
    version = support_version
    loaded = tf.saved_model.load(str(version))
    config = config_lib.load(str(support_run / "config.yaml"))
    tasks = file_tasks(config.data.omniglot, 5, 1, 15, count=20, seed=3)
    agree, total = 0, 0
    for task in tasks:
        files = loaded.signatures["adapt_predict_images"](
            support_images=tf.constant(task.support_png), support_y=tf.constant(task.support_y),
            query_images=tf.constant(task.query_png))["logits"].numpy()
        floats = loaded.signatures["adapt_predict"](
            support_x=tf.constant(float_images(task.support_png)),
            support_y=tf.constant(task.support_y),
            query_x=tf.constant(float_images(task.query_png)))["logits"].numpy()
        # The decoder is PIL's arithmetic bit for bit, so only float rounding separates the two.
        np.testing.assert_allclose(files, floats, atol=1e-4)
        agree += int(np.sum(files.argmax(1) == floats.argmax(1)))
        total += len(files)
    assert total == 1500 and agree / total >= 0.99
    task = tasks[0]
    served = session_run(version, "adapt_predict_images", {
        "support_images": np.array(task.support_png, object), "support_y": task.support_y,
        "query_images": np.array(task.query_png, object)})
    np.testing.assert_allclose(served["logits"], loaded.signatures["adapt_predict_images"](
        support_images=tf.constant(task.support_png), support_y=tf.constant(task.support_y),
        query_images=tf.constant(task.query_png))["logits"].numpy(), atol=1e-6)


def test_within_alphabet_png_tasks_one_query_per_request_score_as_evaluation(support_run,
                                                                           support_version):
    """Lake's protocol as a client sends it: each task's characters from one held-out alphabet,
    the support PNGs and one query PNG per request, in TF Serving's loader; the answers are those
    of the in-process adaptation evaluation runs on tfmeta's own preprocessing, all queries at
    once."""
    run = Run.open(support_run)
    run.restore()
    omniglot = dataclasses.replace(run.config.data.omniglot, episodes="within_alphabet")
    tasks = file_tasks(omniglot, 5, 1, 3, count=4, seed=11)
    alphabet_of = {}
    for (alphabet, _), (path, names) in character_files(omniglot).items():
        with zipfile.ZipFile(path) as archive:
            alphabet_of.update({archive.read(name): alphabet for name in names})
    session = SessionModel(support_version)
    for task in tasks:
        assert len({alphabet_of[png] for png in task.support_png + task.query_png}) == 1
        support_x = tf.constant(float_images(task.support_png))
        adapted, _ = adapt(run.eval_model, [tf.convert_to_tensor(v) for v in
                                            run.eval_model.trainable_variables],
                           (support_x, tf.constant(task.support_y)), run.config.adapt,
                           steps=run.config.adapt.eval_steps)
        evaluated = query_outputs(run.eval_model, adapted, support_x,
                                  tf.constant(float_images(task.query_png))).numpy()
        for i, query in enumerate(task.query_png):
            served = session.run("adapt_predict_images", {
                "support_images": np.array(task.support_png, object),
                "support_y": task.support_y, "query_images": np.array([query], object)})
            np.testing.assert_allclose(served["logits"], evaluated[i:i + 1], atol=1e-4)
    session.close()


@pytest.mark.parametrize("ways", [2, 3])
def test_fewer_classes_adapt_and_predict_as_an_m_way_head(support_run, support_version, ways):
    """Independent truth: the same network with its head cut to the first M rows, adapted at
    alpha M / N (each support example weighs what it weighed in N-way meta-training)."""
    version = support_version
    run = Run.open(support_run)
    run.restore()
    episode = next(iter(run.source.episodes("test", 11, 1).unbatch()))
    keep = episode.support_y.numpy() < ways
    support_x, support_y = episode.support_x.numpy()[keep], episode.support_y.numpy()[keep]
    out = tf.saved_model.load(str(version)).signatures["adapt_predict"](
        support_x=tf.constant(support_x), support_y=tf.constant(support_y),
        query_x=episode.query_x)
    logits, probabilities = out["logits"].numpy(), out["probabilities"].numpy()
    narrow = models.build(run.config.model, run.source.example_shape, ways)
    params = [tf.convert_to_tensor(v) for v in run.eval_model.trainable_variables]
    params[-2:] = [params[-2][:, :ways], params[-1][:ways]]
    scaled = dataclasses.replace(run.config.adapt, lr=run.config.adapt.lr * ways / 5)
    adapted, _ = adapt(narrow, params, (tf.constant(support_x), tf.constant(support_y)),
                       scaled, steps=run.config.adapt.eval_steps)
    truth = query_outputs(narrow, adapted, tf.constant(support_x), episode.query_x).numpy()
    np.testing.assert_allclose(logits[:, :ways], truth, atol=1e-5)
    np.testing.assert_allclose(probabilities[:, :ways], tf.nn.softmax(truth).numpy(), atol=1e-6)
    assert np.all(probabilities[:, ways:] == 0)
    assert np.all(logits[:, ways:] == np.finfo(np.float32).min)
    assert_session_loader_agrees(version, "adapt_predict", {
        "support_x": support_x, "support_y": support_y, "query_x": episode.query_x.numpy()},
        {"logits": logits, "probabilities": probabilities})


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(support_images=r["support_images"][:-1] + [b""]),
     "support_images holds an empty string at index 4"),
    (lambda r: r.update(query_images=[b"not an image"] + r["query_images"][1:]),
     "query_images holds bytes that are not a PNG or JPEG file at index 0"),
    (lambda r: r.update(support_y=np.array([0, 1, 3, 4, 5], np.int32)),
     "support_y holds 5 at index 4; labels must lie in [0, 5)"),
    (lambda r: r.update(support_images=[], support_y=np.zeros([0], np.int32)),
     "support_images is empty; send at least one example"),
    (lambda r: r.update(support_y=r["support_y"][:3]),
     "support_images holds 5 examples but support_y holds 3 labels; send one label per support "
     "example"),
    (lambda r: r.update(support_images=r["support_images"][:-1] + [png_bomb()]),
     "support_images holds an image of 20000x20000 pixels (width x height) at index 4, over "
     "the limit of 2048 pixels per side set at export (tfmeta export --max-image-side); send "
     "it resized"),
    (lambda r: r.update(query_images=[png_bomb(30000, 30000, 0)]),
     "query_images holds an image of 30000x30000 pixels (width x height) at index 0, over the "
     "limit of 2048 pixels per side set at export (tfmeta export --max-image-side); send it "
     "resized"),
    (lambda r: r.update(query_images=r["query_images"][:1] + [jpeg_bomb(60000, 50000)]),
     "query_images holds an image of 60000x50000 pixels (width x height) at index 1, over the "
     "limit of 2048 pixels per side set at export (tfmeta export --max-image-side); send it "
     "resized"),
    (lambda r: r.update(query_images=[png_bomb(2049, 1, 0)]),
     "query_images holds an image of 2049x1 pixels (width x height) at index 0, over the limit "
     "of 2048 pixels per side set at export (tfmeta export --max-image-side); send it resized"),
    (lambda r: r.update(query_images=[r["query_images"][0][:12] + b"tEXt" + r["query_images"][0][16:]]),
     "query_images holds a PNG file whose first chunk is not IHDR (a damaged file) at index 0"),
])
def test_bad_image_requests_fail_in_the_graph_with_a_named_input(omniglot_export, tiny_omniglot_run,
                                                                 omniglot_session, change,
                                                                 message):
    config = config_lib.load(str(tiny_omniglot_run / "config.yaml"))
    task = file_tasks(config.data.omniglot, 5, 1, 2, count=1)[0]
    request = {"support_images": list(task.support_png), "support_y": task.support_y,
               "query_images": list(task.query_png)}
    change(request)
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        omniglot_export.signatures["adapt_predict_images"](
            support_images=tf.constant(request["support_images"], tf.string),
            support_y=tf.constant(request["support_y"]),
            query_images=tf.constant(request["query_images"], tf.string))
    assert graph_sentence(caught.value) == message
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        omniglot_session.run("adapt_predict_images", {
            "support_images": np.array(request["support_images"], object).reshape(-1),
            "support_y": request["support_y"],
            "query_images": np.array(request["query_images"], object).reshape(-1)})
    assert graph_sentence(caught.value) == message


def test_bombs_are_refused_before_decoding_in_both_loaders(omniglot_export, omniglot_session,
                                                          tiny_omniglot_run):
    """A 1.6 MB PNG that declares 20000 x 20000 RGBA would decode to 1.6 GB: refused from its
    header in TensorFlow's allocator peak of a few MB, and in the session loader within seconds
    and without the resident set growing by the decoded size."""
    import resource
    import time
    config = config_lib.load(str(tiny_omniglot_run / "config.yaml"))
    task = file_tasks(config.data.omniglot, 5, 1, 2, count=1)[0]
    request = {"support_images": np.array(task.support_png, object), "support_y": task.support_y,
               "query_images": np.array([png_bomb(), jpeg_bomb()], object)}
    signature = omniglot_export.signatures["adapt_predict_images"]
    # Over what the allocator holds already (other tests' tensors alive in this worker count in
    # its peak too).
    tf.config.experimental.reset_memory_stats("CPU:0")
    held = tf.config.experimental.get_memory_info("CPU:0")["current"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="20000x20000 pixels"):
        signature(**{k: tf.constant(v) for k, v in request.items()})
    assert tf.config.experimental.get_memory_info("CPU:0")["peak"] - held < 64 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(tf.errors.InvalidArgumentError, match="20000x20000 pixels"):
        omniglot_session.run("adapt_predict_images", request)
    assert time.perf_counter() - start < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 << 10  # kB


def test_max_image_side_is_recorded_and_enforced(tiny_omniglot_run, tiny_sine_run, tmp_path):
    version = export.export_run(tiny_omniglot_run, tmp_path / "models" / "o", max_image_side=104)
    metadata = export.read_metadata(version)
    assert metadata["max_image_side"] == 104
    for name in ("support_images", "query_images"):
        assert metadata["signatures"]["adapt_predict_images"]["inputs"][name]["max_side"] == 104
    config = config_lib.load(str(tiny_omniglot_run / "config.yaml"))
    task = file_tasks(config.data.omniglot, 5, 1, 1, count=1)[0]  # Omniglot's files: 105 x 105
    request = {"support_images": np.array(task.support_png, object), "support_y": task.support_y,
               "query_images": np.array(task.query_png, object)}
    model = SessionModel(version)
    try:
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=r"support_images holds an image of 105x105 pixels \(width x "
                                 r"height\) at index 0, over the limit of 104 pixels per side"):
            model.run("adapt_predict_images", request)
    finally:
        model.close()
    assert export.read_metadata(export.export_run(tiny_omniglot_run, tmp_path / "models" / "d"))[
        "max_image_side"] == 2048
    with pytest.raises(ConfigError, match="positive number of pixels, got 0"):
        export.export_run(tiny_omniglot_run, tmp_path / "models" / "z", max_image_side=0)
    with pytest.raises(ConfigError, match="--max-image-side is for models of image files"):
        export.export_run(tiny_sine_run, tmp_path / "models" / "s", max_image_side=64)

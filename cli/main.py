"""`tfmeta`: train and evaluate meta-learners. Thin: parse, load the config, call the library."""

import contextlib
import dataclasses
import functools
import os
import traceback
import warnings
from pathlib import Path

import click

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) hides the output that matters.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The config modules import no TensorFlow, so `--help` and a config error return at once.
from tfmeta.config.algorithms import NAMES as ALGORITHMS  # noqa: E402
from tfmeta.config.data import (COLORS, EPISODES, data_dir_help,  # noqa: E402
                                dataset_names)
from tfmeta.config.model import NORMS  # noqa: E402
from tfmeta.config.train import DISTRIBUTIONS  # noqa: E402
from tfmeta.errors import TfmetaError  # noqa: E402

# Shortcut flags and the config keys they set; any other key goes through --set key=value.
SHORTCUTS = {
    "dataset": "data.dataset", "ways": "data.ways",
    "shots": "data.shots", "queries": "data.queries", "meta_batch": "train.meta_batch",
    "meta_lr": "train.meta_lr", "steps": "adapt.steps", "inner_lr": "adapt.lr",
    "epochs": "train.epochs", "iterations": "train.iterations", "seed": "train.seed",
    "run_dir": "run_dir", "name": "name", "landscape_every": "landscape.every",
    "keep_checkpoints": "train.keep_checkpoints", "algorithm": "algorithm", "norm": "model.norm",
    "strategy": "train.strategy",
}

def user_errors(fn):
    """Turns a TfmetaError, or a disk or permission fault (`faults.describe`), into one `error:`
    line on stderr and its exit status (2; 138 for a lost worker), with the traceback only under
    --verbose."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TfmetaError as e:
            from tfmeta import quiet
            if quiet.verbose():
                traceback.print_exc()
            click.echo(f"error: {e}", err=True)
            raise SystemExit(e.exit_status)
        except Exception as e:   # a full disk, a read-only folder: one line too
            from tfmeta import faults, quiet
            line = faults.describe(e)
            if line is None:
                raise
            if quiet.verbose():
                traceback.print_exc()
            click.echo(f"error: {line}", err=True)
            raise SystemExit(2)
    return wrapper


def warn(line: str) -> None:
    """A warning line, on stderr beside the `error:` lines."""
    click.echo(line, err=True)


def start_tensorflow() -> None:
    """Starts TensorFlow, quietly (`quiet.start`), once a command knows that it needs it: `--help`
    and a config error return without it."""
    from tfmeta import quiet
    quiet.start()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="tfmeta")
@click.option("--verbose", is_flag=True,
              help="TensorFlow's full start-up logging (also: TFMETA_VERBOSE=1)")
def cli(verbose):
    """Gradient-based meta-learning (MAML) in TensorFlow/Keras."""
    from tfmeta import quiet
    if verbose:
        os.environ[quiet.VERBOSE] = "1"
    command = click.get_current_context().invoked_subcommand
    if command == "serve":
        from tfmeta_serving import memory
        memory.configure_allocators()  # before TensorFlow starts, which reads it once
    # A library warning (e.g. alphabets too small for within-alphabet episodes) as one line.
    warnings.showwarning = lambda message, category, *_: click.echo(f"warning: {message}",
                                                                    err=True)


@cli.command()
@click.option("--config", "config_path", metavar="PATH|PRESET",
              help="YAML config file or preset name (see configs/). Default: the preset of "
                   "--dataset (sine, omniglot_5w1s, miniimagenet_5w1s, folder), or the sine "
                   "defaults.")
@click.option("--algorithm", type=click.Choice(ALGORITHMS),
              help="the meta-learning algorithm (default maml)")
@click.option("--dataset", metavar="|".join(dataset_names().split(", ")),
              help="data.dataset: a built-in dataset, your folder of class folders, or a "
                   "TensorFlow Datasets image classification dataset")
@click.option("--norm", type=click.Choice(NORMS),
              help="model.norm: query sets normalized by their own statistics (transductive, "
                   "the papers') or by the support set's (support: serves one query at a time)")
@click.option("--data-dir", type=click.Path(),
              help=f"data.<dataset>.data_dir: {data_dir_help()}")
@click.option("--strategy", type=click.Choice(DISTRIBUTIONS),
              help="train.strategy: one device, every local GPU (or --devices), or the cluster "
                   "in TF_CONFIG")
@click.option("--devices", metavar="D,...",
              help="train.devices for --strategy mirrored, e.g. /gpu:0,/gpu:1 (or /cpu:0,/cpu:1)")
@click.option("--ways", type=int, help="data.ways (N)")
@click.option("--shots", type=int, help="data.shots (K)")
@click.option("--queries", type=int, help="data.queries (query examples per class)")
@click.option("--meta-batch", type=int, help="train.meta_batch (tasks per meta-iteration)")
@click.option("--meta-lr", type=float, help="train.meta_lr (Adam)")
@click.option("--steps", type=int, help="adapt.steps (inner SGD steps, T)")
@click.option("--inner-lr", type=float, help="adapt.lr (alpha)")
@click.option("--epochs", type=int, help="train.epochs")
@click.option("--iterations", type=int, help="train.iterations (meta-iterations per epoch)")
@click.option("--seed", type=int, help="train.seed")
@click.option("--first-order", is_flag=True, default=None, help="adapt.first_order=true")
@click.option("--landscape-every", type=int,
              help="landscape.every: measure the landscape every K epochs (0 = off)")
@click.option("--keep-checkpoints", type=int,
              help="train.keep_checkpoints (0 keeps every epoch's, for tfmeta analyze)")
@click.option("--run-dir", type=click.Path(), help="run directory (default runs/<name>)")
@click.option("--name", help="run name")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="override any config field, e.g. --set train.eval_tasks=100 (repeatable)")
@click.option("--resume", "resume_dir", type=click.Path(), metavar="RUN_DIR",
              help="continue RUN_DIR from its last checkpoint, with its saved config")
@click.option("--auto-resume", is_flag=True,
              help="continue --run-dir if it holds a run, else start it: the one command for a "
                   "job that a cluster restarts")
@click.option("--no-progress", is_flag=True, help="no progress bar")
@click.option("--other-data", is_flag=True,
              help="with --resume: go on although the data differ from what the run saw")
@user_errors
def train(config_path, sets, resume_dir, auto_resume, no_progress, first_order, data_dir,
          devices, other_data, **shortcuts):
    """Meta-train a model; writes checkpoints, TensorBoard logs and the resolved config."""
    from tfmeta import rundir

    values = {SHORTCUTS[k]: v for k, v in shortcuts.items() if v is not None}
    if first_order:
        values["adapt.first_order"] = True
    if devices:
        values["train.devices"] = [d.strip() for d in devices.split(",")]
    config, resume = rundir.training_config(config_path, sets, values, data_dir or "",
                                            resume_dir, auto_resume)
    start_tensorflow()
    from tfmeta import quiet, training
    from tfmeta.errors import LostWorkerError
    with (quiet.held(quiet.COLLECTIVE_ABORT, LostWorkerError)
          if config.train.strategy == "multi-worker" else contextlib.nullcontext()):
        run_dir = training.train(config, resume=resume, progress=not no_progress, log=click.echo,
                                 other_data=other_data)
    click.echo(f"run: {run_dir}  (tensorboard --logdir {run_dir})")


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--steps", type=int, default=None,
              help="adaptation steps (default: max(10, the run's test steps))")
@click.option("--tasks", type=int, default=600, show_default=True, help="meta-test tasks")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test",
              show_default=True, help="val exists for miniimagenet only")
@click.option("--checkpoint", help="checkpoint path (default: the run's latest)")
@click.option("--inner-lr", type=float,
              help="adaptation learning rate (default: the run's adapt.lr)")
@click.option("--norm", type=click.Choice(NORMS),
              help="query normalization at test (default: the run's model.norm)")
@click.option("--episodes", type=click.Choice(EPISODES),
              help="Omniglot: draw each task's classes from the whole split (any) or from one "
                   "alphabet (within_alphabet, Lake et al.'s protocol); default: the run's "
                   "data.omniglot.episodes")
@click.option("--other-data", is_flag=True,
              help="evaluate although the data differ from what the run was trained on")
@user_errors
def evaluate(run_dir, steps, tasks, split, checkpoint, inner_lr, norm, episodes, other_data):
    """Adapt a trained run to held-out tasks; print query metrics after 0, 1, 5, 10, ... steps."""
    if tasks < 1 or (steps is not None and steps < 0) or (inner_lr is not None and inner_lr <= 0):
        raise click.BadParameter("--tasks must be >= 1, --steps >= 0 and --inner-lr > 0")
    start_tensorflow()
    from tfmeta import run as run_lib, rundir

    with rundir.lock(run_dir, "evaluated"):
        result = run_lib.evaluate_run(Path(run_dir), steps, tasks, split, checkpoint, inner_lr,
                                      norm, episodes, other_data, log=warn)
        click.echo(format_table(result))
        click.echo(f"written to {rundir.write_evaluation(run_dir, result)}")


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--out", "out_dir", required=True, type=click.Path(), metavar="MODELS/NAME",
              help="model directory; the export goes to MODELS/NAME/<version>")
@click.option("--version", type=int, help="version number (default: the next free one)")
@click.option("--steps", type=int,
              help="adaptation steps per request (default: the run's test steps)")
@click.option("--checkpoint", help="checkpoint path (default: the run's latest)")
@click.option("--norm", type=click.Choice(NORMS),
              help="query normalization to serve with (default: the run's model.norm); support "
                   "lets a transductive model answer one query at a time")
@click.option("--max-image-side", type=int, metavar="PIXELS",
              help="image datasets: the image signature refuses a file whose header declares a "
                   "larger width or height, before decoding it (default 2048)")
@click.option("--max-examples", type=int, default=1000, show_default=True, metavar="N",
              help="the most examples (support and query together) one request may carry; "
                   "checked in the graph before any decoding or adaptation")
@user_errors
def export(run_dir, out_dir, version, steps, checkpoint, norm, max_image_side, max_examples):
    """Export RUN_DIR as a SavedModel that adapts to each request's support set, in TensorFlow
    Serving's layout (signatures adapt_predict, the default, adapt_predict_images for image
    datasets, and predict)."""
    start_tensorflow()
    from tfmeta import export as export_lib

    path = export_lib.export_run(Path(run_dir), Path(out_dir), version, steps, checkpoint, norm,
                                 max_image_side, max_examples, log=warn)
    meta = export_lib.read_metadata(path)
    click.echo(f"exported {run_dir} to {path}: {meta['task']}, ways {meta['ways']}, example "
               f"shape {meta['example_shape']}, {meta['steps']} steps at lr {meta['lr']}, "
               f"norm {meta['norm']}, at most {meta['max_examples']} examples a request"
               + (f", images up to {meta['max_image_side']} pixels a side"
                  if meta.get("max_image_side") else ""))
    click.echo(f"signatures: {', '.join(meta['signatures'])}; "
               f"{meta['signatures']['adapt_predict']['queries']}")


@cli.command()
@click.option("--model-base-path", required=True, type=click.Path(), metavar="MODELS/NAME",
              help="directory of integer version subdirectories; the newest is served")
@click.option("--model-name", help="the NAME in /v1/models/NAME (default: the directory's name)")
@click.option("--host", default="0.0.0.0", show_default=True,
              help="address to listen on (embedded server; 127.0.0.1 for this machine only)")
@click.option("--port", type=int, default=8501, show_default=True, help="REST port")
@click.option("--grpc-port", type=int, default=8500, show_default=True, help="gRPC port")
@click.option("--max-body-mb", type=float, default=16, show_default=True,
              help="largest request body (embedded server)")
@click.option("--poll-seconds", type=float, default=2, show_default=True,
              help="how often to look for a new version (embedded server)")
@click.option("--rest_api_timeout_in_ms", "--rest-api-timeout-in-ms", "rest_timeout_ms", type=int,
              default=30000, show_default=True,
              help="deadline of a REST predict request, TF Serving's flag (0: none); gRPC "
                   "requests get the client's deadline")
@click.option("--max-concurrent-predictions", "concurrent", type=int,
              help="predictions run at once (embedded server; default 2)")
@click.option("--max-queued-predictions", "queued", type=int,
              help="requests that may wait for a prediction slot; beyond them a request gets "
                   "503 / UNAVAILABLE at once (embedded server; default 8)")
@click.option("--max-receiving-bodies", "receiving", type=int,
              help="REST bodies read at once, apart from the predictions; beyond them a request "
                   "gets 503 at once (embedded server; default 64)")
@click.option("--body-grace-ms", type=int,
              help="how long a REST body may take before --min-body-rate-kb applies; a slower "
                   "sender gets 408 (embedded server; default 5000)")
@click.option("--min-body-rate-kb", type=float,
              help="kB per second a REST body must keep up after the grace (embedded server; "
                   "default 64)")
@click.option("--task-cache-mb", type=float,
              help="keep the adapted tasks of repeated support sets, within this many MB, so "
                   "that adapt_predict skips their adaptation (embedded server; default 0: off)")
@click.option("--embedded", is_flag=True,
              help="use the embedded server even when tensorflow_model_server is on PATH")
@user_errors
def serve(model_base_path, model_name, host, port, grpc_port, max_body_mb, poll_seconds,
          rest_timeout_ms, concurrent, queued, receiving, body_grace_ms, min_body_rate_kb,
          task_cache_mb, embedded):
    """Serve an export over TensorFlow Serving's REST and gRPC APIs: tensorflow_model_server
    when it is on PATH, else the embedded server with the same contract."""
    from tfmeta_serving import admission, server

    if poll_seconds <= 0:
        raise click.BadParameter("--poll-seconds must be positive")
    given = {"max_body_bytes": int(max_body_mb * (1 << 20)), "rest_timeout_ms": rest_timeout_ms,
             "concurrent": concurrent, "queued": queued, "receiving": receiving,
             "body_grace_ms": body_grace_ms,
             "min_body_rate": None if min_body_rate_kb is None else int(min_body_rate_kb * 1024),
             "task_cache_bytes": None if task_cache_mb is None else int(task_cache_mb * (1 << 20))}
    limits = admission.limits_of(given)
    embedded_only = [admission.FLAGS[k][0] for k in admission.EMBEDDED_ONLY if given[k] is not None]
    start_tensorflow()
    server.start(Path(model_base_path), model_name, port, grpc_port, poll_seconds, host, limits,
                 tuple(embedded_only), embedded, log=click.echo)


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="override a config field for the analysis, e.g. --set landscape.trace_probes=10")
@click.option("--no-progress", is_flag=True, help="no progress bars")
@click.option("--other-data", is_flag=True,
              help="analyze although the data differ from what the run was trained on")
@user_errors
def analyze(run_dir, sets, no_progress, other_data):
    """Landscape metrics and meta-test accuracy for every saved checkpoint of RUN_DIR.

    Writes RUN_DIR/landscape.csv and TensorBoard scalars under RUN_DIR/logs/analyze.
    """
    start_tensorflow()
    from tfmeta import analysis

    out = analysis.analyze(Path(run_dir), sets, progress=not no_progress, log=click.echo,
                           other_data=other_data)
    click.echo(f"written to {out}")


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(), metavar="RUN_DIR...")
@click.option("--out", "out_dir", type=click.Path(),
              help="output directory (default: RUN_DIR/report for one run, ./report for several)")
@click.option("--no-tensorboard", is_flag=True, help="skip the TensorBoard copy of the figures")
@user_errors
def report(run_dirs, out_dir, no_tensorboard):
    """Plot each landscape metric against meta-test accuracy (or MSE) across epochs, and
    correlate them (Pearson, Spearman; per run and pooled)."""
    from tfmeta import report as report_lib, rundir

    if not no_tensorboard:
        start_tensorflow()
    if out_dir is None:
        out_dir = rundir.report_dir(run_dirs[0]) if len(run_dirs) == 1 else Path("report")
    result = report_lib.write_report(list(run_dirs), out_dir, tensorboard=not no_tensorboard,
                                     log=warn)
    click.echo(Path(result["table"]).read_text())
    for path in result["figures"]:
        click.echo(f"figure  {path}")
    click.echo(f"table   {result['table']}\ncsv     {result['csv']}")
    if not no_tensorboard:
        click.echo(f"images  tensorboard --logdir {Path(out_dir) / 'logs'}")


def _floats(ctx, param, value):
    """Click callback: "1,2,4" -> [1.0, 2.0, 4.0]; an option not given stays None."""
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}")


@cli.group()
def data():
    """Prepare datasets for fast reading."""


@data.command("prepare")
@click.argument("dataset", type=click.Choice(["miniimagenet", "folder"]))
@click.option("--source", required=True, type=click.Path(),
              help="the copy you have: a csv or pickle layout folder (miniimagenet), or a folder "
                   "of class folders (folder)")
@click.option("--out", "out_dir", type=click.Path(),
              help="cache folder to write (required for miniimagenet; for folder, "
                   "data.folder.cache_dir, default SOURCE/.tfmeta-cache)")
@click.option("--image-size", metavar="H,W", help="folder: data.folder.image_size")
@click.option("--color", type=click.Choice(COLORS), help="folder: data.folder.color (rgb)")
@click.option("--no-progress", is_flag=True, help="no progress bar")
@user_errors
def prepare(dataset, source, out_dir, image_size, color, no_progress):
    """Convert a dataset once into tfmeta's memory-mapped cache; point --data-dir at the cache.

    MiniImagenet: images/ with train.csv, val.csv and test.csv (filename,label), or
    mini-imagenet-cache-{train,val,test}.pkl. Checks every file and the class and image counts.

    folder: DIR/<class>/<image>.png or .jpg (or DIR/{train,val,test}/<class>/...): decodes every
    image once into the cache that `tfmeta train --dataset folder --data-dir DIR` with the same
    --image-size and --color reads."""
    if dataset == "folder":
        return _prepare_folder(source, out_dir, image_size, color, no_progress)
    if not out_dir:
        raise click.UsageError("miniimagenet needs --out, the cache folder to write")
    from tfmeta.tasks import miniimagenet

    manifest = miniimagenet.prepare(Path(source), Path(out_dir), progress=not no_progress,
                                    log=click.echo)
    for split, entry in manifest["splits"].items():
        click.echo(f"{split:>5}: {len(entry['classes'])} classes, {sum(entry['counts'])} images")
    click.echo(f"{dataset} is ready in {manifest['cache']}; train with --data-dir "
               f"{manifest['cache']}")


def _prepare_folder(source, out_dir, image_size, color, no_progress) -> None:
    from tfmeta.config.data import FolderConfig
    from tfmeta.errors import expect
    size = [int(v) for v in image_size.split(",")] if image_size else []
    expect(len(size) in (0, 2), "--image-size", "H,W, e.g. 84,84", image_size)
    config = FolderConfig(data_dir=source, image_size=size, color=color or "rgb",
                          cache_dir=out_dir or "")
    config.check()
    start_tensorflow()
    from tfmeta.tasks import folder

    cache = folder.prepare(config, progress=not no_progress, log=click.echo)
    summary = folder.summary(cache)
    click.echo(f"{summary}; cached in {cache}. Train with --dataset folder --data-dir {source}"
               + (f" --set data.folder.image_size=[{image_size}]" if image_size else "")
               + (f" --set data.folder.color={color}" if color else "")
               + (f" --set data.folder.cache_dir={out_dir}" if out_dir else ""))


@cli.group()
def experiment():
    """Reproduce a paper's experiment: closed forms, meta-training, tables and a figure."""


@experiment.command("task-landscape")
@click.option("--ratios", callback=_floats, metavar="R,...",
              help="grid: hardness discrepancies rho_easy/rho_hard (default 1,2,4,8,16)")
@click.option("--spreads", callback=_floats, metavar="NU,...",
              help="grid: spreads nu_hard of the hard tasks' optima (default 0,0.25,0.5,1,2)")
@click.option("--distances", callback=_floats, metavar="D,...",
              help="centre distances ||c_hard - c_easy|| of the distance sweep (default 0,0.5,1,2,4)")
@click.option("--dim", type=int, help="input dimension d (default 4)")
@click.option("--hard-fraction", type=float, help="probability that a task is hard (default 0.5)")
@click.option("--rho-easy", type=float, help="easy tasks' input variance (default 1)")
@click.option("--rho-hard", type=float,
              help="base point: hard tasks' input variance (default 0.25)")
@click.option("--distance", "centre_distance", type=float,
              help="base point: ||c_hard - c_easy|| (default 2)")
@click.option("--spread-easy", type=float, help="nu_easy (default 0.5)")
@click.option("--spread-hard", type=float, help="base point: nu_hard (default 0.5)")
@click.option("--noise", type=float, help="label noise sigma (default 0.1)")
@click.option("--alpha", type=float, help="inner step on 1/2 E(x'w - y)^2 (default 0.8)")
@click.option("--check-ratios", callback=_floats, metavar="R,...",
              help="rho_easy/rho_hard values checked by meta-training (default 1,4,8)")
@click.option("--shots", type=int, help="meta-training check: K support points (default 200)")
@click.option("--queries", type=int, help="meta-training check: Q query points (default 200)")
@click.option("--meta-batch", type=int, help="meta-training check: tasks per step (default 100)")
@click.option("--iterations", type=int, help="meta-training check: Adam steps (default 3000)")
@click.option("--seed", type=int, help="meta-training check: seed (default 0)")
@click.option("--out", "out_dir", type=click.Path(), default="runs/task-landscape",
              show_default=True, help="output directory")
@click.option("--quick", is_flag=True,
              help="check only the base point with 600 steps and 2,000 held-out tasks (~30 s)")
@user_errors
def task_landscape(out_dir, quick, ratios, spreads, distances, alpha, check_ratios, shots,
                   queries, meta_batch, iterations, seed, **task_fields):
    """MAML against NAL on easy and hard linear-regression tasks (Collins, Mokhtari &
    Shakkottai): closed-form gains over the hardness discrepancy, the hard tasks' spread and the
    centre distance, checked by meta-training. Writes table.md, table.csv, trained.csv and
    task_landscape.png to --out."""

    start_tensorflow()
    from tfmeta.config.data import LinearTasksConfig
    from tfmeta.experiments import task_landscape as tl

    def given(fields):
        return {k: v for k, v in fields.items() if v is not None}

    check = dataclasses.replace(tl.CheckConfig(), **given(dict(
        ratios=check_ratios, shots=shots, queries=queries, meta_batch=meta_batch,
        iterations=iterations, seed=seed)))
    config = dataclasses.replace(
        tl.TaskLandscapeConfig(tasks=LinearTasksConfig(**given(task_fields)), check=check),
        **given(dict(ratios=ratios, spreads=spreads, distances=distances, alpha=alpha)))
    result = tl.run(config, out_dir, quick=quick, log=click.echo)
    click.echo(Path(result["table"]).read_text())
    for key in ("table", "csv", "trained_csv", "figure"):
        if key in result:
            click.echo(f"{key:<12} {result[key]}")


@experiment.command("landscape-claims")
@click.option("--out", "out_dir", type=click.Path(), default="runs/landscape-claims",
              show_default=True, help="output directory; an unfinished one is continued")
@click.option("--quick", is_flag=True,
              help="every part at toy scale, 2 seeds (a few minutes; for tests)")
@click.option("--pilot", is_flag=True,
              help="only the pilot: one seed per pool and algorithm, accuracy only, to choose "
                   "the meta-training pool (the same as --only pilot)")
@click.option("--only", "only", metavar="PART,...",
              help="run these parts: pilot, main, pools, sine, regularizer (default: all; main "
                   "and pools need the pilot, which runs first)")
@click.option("--seeds", type=int,
              help="seeds per main setting and per k (default 8); more seeds on an existing "
                   "--out add runs")
@click.option("--jobs", type=int, help="runs trained side by side (default 2)")
@click.option("--data-dir", type=click.Path(),
              help="the Omniglot zips (default $TFMETA_OMNIGLOT_DIR, else ../shared/data/omniglot)")
@user_errors
def landscape_claims(out_dir, quick, pilot, only, seeds, jobs, data_dir):
    """Test the claims of Guiroy et al. (2019) and their regularizer: a pilot chooses a
    meta-overfitting regime, the settings are trained with the landscape at every epoch, and
    claims.md gives a verdict per claim (hours on 2 CPU cores: the pilot alone takes about
    2; an interrupted run continues where it stopped)."""
    if pilot and only:
        raise click.UsageError("--pilot is --only pilot; pass one of them")
    start_tensorflow()
    from tfmeta.experiments import landscape_claims as lc
    from tfmeta.experiments.landscape_claims import plan

    parts = plan.parse_parts("pilot" if pilot else only) if (pilot or only) else plan.PARTS
    given = {k: v for k, v in dict(seeds=seeds, jobs=jobs).items() if v is not None}
    config = dataclasses.replace(lc.ClaimsConfig(data_dir=data_dir or plan.default_data_dir()),
                                 **given)
    result = lc.run(config, out_dir, quick_run=quick, parts=parts, log=click.echo)
    click.echo(f"claims: {result['table']}")
    for figure in result["figures"]:
        click.echo(f"figure  {figure}")


def format_table(result: dict) -> str:
    """A plain-text table: one row per step count, mean ± 95% CI per metric."""
    rows = result["steps"]
    metrics = list(next(iter(rows.values())))
    header = f"{'steps':>5}  " + "  ".join(f"{m:>22}" for m in metrics)
    episodes = f"{result['episodes']} episodes, " if result.get("episodes") else ""
    lines = [f"{result['split']} split, {episodes}{result['tasks']} tasks, {result['norm']} norm, "
             f"{result['checkpoint']}", header]
    for t, values in rows.items():
        cells = [f"{values[m]['mean']:.4f} ± {values[m]['ci95']:.4f}"
                 + (f" ({values[m]['diverged']} diverged)" if values[m]["diverged"] else "")
                 for m in metrics]
        lines.append(f"{t:>5}  " + "  ".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)


if __name__ == "__main__":
    cli()

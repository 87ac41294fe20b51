"""Command line: python -m prodcat {folds,train,stack,predict,serve,submit,scores,report,all} [--data DIR]
[--config FILE]."""
from __future__ import annotations

import functools
import sys
import time
import warnings
from pathlib import Path

import click

from prodcat.errors import DataError, UsageError
from prodcat.models.bag import DEFAULT_USE, USES
from prodcat.settings import ServeSettings, defaults_of

SERVE = defaults_of(ServeSettings)  # the defaults of `serve`'s flags


def user_path(ctx, param, value):
    """A path from the command line, relative to the caller's directory (run.sh changes into the
    repository, and records where the user was in PRODCAT_CALLER_DIR)."""
    import os

    if value is None:
        return None
    path = Path(value).expanduser()
    caller = os.environ.get("PRODCAT_CALLER_DIR")
    return Path(caller) / path if caller and not path.is_absolute() else path


def check_rule_flags(threshold, min_precision) -> None:
    """--threshold / --min-precision as a ReviewRule (its one check), a bad one as bad usage (exit code 2)."""
    from prodcat.review_rule import ReviewRule

    try:
        ReviewRule(threshold, min_precision, ("--threshold", "--min-precision"))
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None


def run_options(fn):
    """--data, --config and --workdir for every command; opens the Run and reports bad input cleanly."""

    @click.option("--data", "data", type=click.Path(), default=None, callback=user_path,
                  help="Dataset folder in the task's layout (default: the config's `data`).")
    @click.option("--config", "config", type=click.Path(), default=None, callback=user_path,
                  help="YAML config (default: configs/default.yaml).")
    @click.option("--workdir", type=click.Path(), default=None, callback=user_path,
                  help="Where folds/, oof/, models/, submissions/ and cache/ go (default: the config's, '.').")
    @click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                  help="Override a setting, e.g. --set models.fasttext.epoch=10 (repeatable).")
    @click.option("--extra", type=click.Path(), default=None, callback=user_path,
                  help="More labelled products (train.parquet's layout, e.g. `review export`) added to the "
                       "training rows; a product already there takes the extra row's label.")
    @functools.wraps(fn)
    def wrapper(data, config, workdir, sets, extra, **kwargs):
        from prodcat.settings import parse_sets
        from prodcat.training.run import Run

        with warnings.catch_warnings():
            warnings.simplefilter("always")
            try:
                run = Run.open(data, config, workdir, parse_sets(sets) if sets else None, extra)
            except DataError as exc:
                raise click.ClickException(str(exc)) from None
        if fn.__name__ in WRITERS:
            check_writable(run.paths.workdir)
        if fn.__name__ in ("train", "refit", "all_", "stack") and run.settings is not None:
            click.echo(f"[settings] {run.settings.note} (./run.sh config shows every setting)")
            if run.cfg["relabel"] is not None:
                click.echo(f"[data] relabel {run.cfg['relabel']}: {run.ds.relabelled:,} labelled products moved to "
                           "their new leaf (the models they change retrain; the others are reused)")
        return fn(run, **kwargs)

    return wrapper


WRITERS = ("folds", "train", "refit", "stack", "submit", "all_", "report")  # commands that write under the workdir


def check_writable(workdir: Path) -> None:
    """Fail before any work when the workdir cannot be written (a read-only mount, a path under a file)."""
    import tempfile

    target = Path(workdir).resolve()
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target, prefix=".prodcat-write-test-"):
            pass
    except OSError as exc:
        raise DataError(f"{target}: the workdir cannot be written ({exc.strerror or exc}); "
                        "choose another with --workdir") from None


class Main(click.Group):
    """The command group: every failure ends in one message and exit code 1 (bad usage: 2); a traceback
    only with --debug (accepted anywhere on the command line)."""

    def parse_args(self, ctx, args):
        if "--debug" in args:
            args = [a for a in args if a != "--debug"]
            ctx.meta["debug"] = True
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except UsageError as exc:  # an argument the saved models cannot serve: bad usage, exit code 2
            if ctx.meta.get("debug"):
                raise
            raise click.UsageError(str(exc)) from None
        except DataError as exc:
            if ctx.meta.get("debug"):
                raise
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            if ctx.meta.get("debug"):
                raise
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            raise click.ClickException(f"{where}{exc.strerror or exc} (check the path, its permissions and "
                                       "free disk space; --debug shows the traceback)") from None
        except Exception as exc:  # noqa: BLE001 - the last resort: one line, never a traceback
            if ctx.meta.get("debug"):
                raise
            raise click.ClickException(f"unexpected failure: {type(exc).__name__}: {exc} "
                                       "(rerun with --debug for the traceback)") from None


@click.group(cls=Main)
def main():
    """prodcat: k-fold base models and a submission for product category prediction (--debug anywhere:
    show tracebacks)."""
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"


@main.command()
@run_options
@click.option("--force", is_flag=True, help="Make new folds even if saved ones match.")
def folds(run, force):
    """Make (or reuse) the stratified folds of the dataset."""
    from prodcat.data.folds import load_or_make_folds

    table = load_or_make_folds(run.ds, run.paths.folds, run.k, run.seed, force=force)
    sizes = table["fold"].value_counts().sort_index()
    click.echo(f"{run.paths.folds}: {len(table)} products in {run.k} folds, sizes {sizes.tolist()}")


@main.command()
@click.argument("model")
@run_options
@click.option("--fold", "fold", type=int, default=None, help="Train only this fold (0-based).")
@click.option("--force", is_flag=True, help="Retrain folds that are already finished.")
def train(run, model, fold, force):
    """Train MODEL on one fold or all folds: saves each fold model and its held-out (OOF) probabilities."""
    from prodcat.distributed import is_main_process
    from prodcat.training.runner import train_model

    check_models(run, [model])
    if fold is not None and not 0 <= fold < run.k:
        raise click.BadParameter(f"--fold must be between 0 and {run.k - 1} (got {fold})", param_hint="--fold")
    start = time.time()
    done = train_model(run, model, None if fold is None else [fold], force=force, echo=click.echo)
    if done is None or not is_main_process():
        return  # skipped (the reason was printed), or an extra DDP process: rank 0 reports
    state = "all folds finished" if done else "not all folds finished yet"
    click.echo(f"[{model}] {state} ({time.time() - start:.0f}s) -> {run.paths.oof(model)}")


def check_models(run, names) -> None:
    """Every name a registered model or a variant of the config (else exit 2, naming the known ones)."""
    from prodcat.training.runner import known_models

    for model in names:
        if model not in known_models(run):
            raise click.BadParameter(f"unknown model '{model}' (known: {', '.join(known_models(run))})",
                                     param_hint="MODEL")


@main.command()
@click.argument("models", nargs=-1)
@run_options
@click.option("--force", is_flag=True, help="Retrain full models that are already finished.")
def refit(run, models, force):
    """Train each MODEL (default: the pipeline's) once on every training product with the settings of its
    folds -> models/<dataset>/<model>/full/ (fast predictions: predict/submit --use full)."""
    from prodcat.training.runner import refit_model

    check_models(run, models)
    for model in models or run.cfg["pipeline"]:
        start = time.time()
        if refit_model(run, model, force=force, echo=click.echo):
            click.echo(f"[{model}] full model ready ({time.time() - start:.0f}s) -> {run.paths.models(model) / 'full'}")


def use_option(fn):
    return click.option("--use", type=click.Choice(USES), default=DEFAULT_USE, show_default=True,
                        help="Each base model's full model (trained on every product: ./run.sh refit) or the "
                             "average of its fold models.")(fn)


@main.command()
@run_options
@click.option("--model", default=None,
              help="stack, average or a base model (default: the stacker when saved, else the best base model).")
@click.option("--name", default=None, help="Bare file name under submissions/<dataset>/ (default: the model's).")
@use_option
def submit(run, model, name, use):
    """Predict test.parquet with the saved models; write and validate submissions/<dataset>/<name>.parquet."""
    from prodcat.training.submission import write_submission

    path, used = write_submission(run, model, name, use)
    click.echo(f"submission from {used}: {path}")


@main.command()
@click.option("--input", "input_path", type=click.Path(path_type=Path), callback=user_path, required=True,
              help="Products to categorise: a parquet in the training layout without category_id.")
@click.option("--out", "out_path", type=click.Path(path_type=Path), callback=user_path, required=True,
              help="Output parquet.")
@click.option("--images", type=click.Path(path_type=Path), callback=user_path, default=None,
              help="Photo folder (<id>.jpg, or split subfolders; default: images/ beside the input).")
@click.option("--models", "models_dir", type=click.Path(path_type=Path), callback=user_path, default=None,
              help="Saved models (default: <workdir>/models/<dataset>/ of --data / the config).")
@click.option("--model", default=None, help="stack, average or a base model (default: stack when saved).")
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True,
              help="Alternatives per product in the output (at most the models' stored top_k, 20 by default).")
@click.option("--threshold", type=float, default=None,
              help="Flag needs_review below this confidence (0 to 1).")
@click.option("--min-precision", type=float, default=None,
              help="Pick the threshold whose auto-accepted products reach this precision (from OOF; "
                   "between 0 and 1, both excluded).")
@click.option("--data", "data", type=click.Path(), default=None, callback=user_path,
              help="Training dataset folder (for its name).")
@click.option("--config", "config", type=click.Path(), default=None, callback=user_path, help="YAML config.")
@click.option("--workdir", type=click.Path(), default=None, callback=user_path,
              help="Where models/ is (default: the config's).")
@click.option("--tree", "tree_file", type=click.Path(path_type=Path), callback=user_path, default=None,
              help="A newer category tree to read the predictions under: leaves matched by id, a prediction into "
                   "a removed leaf or a node that is no longer a leaf flagged and named (./run.sh tree diff).")
@use_option
def predict(input_path, out_path, images, models_dir, model, top, threshold, min_precision, data, config,
            workdir, use, tree_file):
    """Categorise any file of products with the saved models (no training data needed)."""
    from prodcat.predict import predict_file
    from prodcat.training.run import settings_and_paths

    check_rule_flags(threshold, min_precision)
    cfg, paths = settings_and_paths(data, config, workdir)
    predict_file(models_dir or paths.models_root, input_path, out_path, images, model, top, threshold, min_precision,
                 use, echo=click.echo, tree_file=tree_file, zero_shot=cfg["review"]["zero_shot"])


@main.command()
@click.option("--models", "models_dir", type=click.Path(path_type=Path), callback=user_path, default=None,
              help="Saved models (default: <workdir>/models/<dataset>/ of --data / the config).")
@click.option("--host", default=None, help=f"Address to bind (default: the serve.host setting, {SERVE['host']}).")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help=f"TCP port (default: the serve.port setting, {SERVE['port']}).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help=f"Worker processes, each with its own copy of the models (default: the serve.workers "
                   f"setting, {SERVE['workers']}).")
@click.option("--use", type=click.Choice(USES), default=None,
              help=f"Each base model's full model or the average of its fold models (default: the serve.use "
                   f"setting, {SERVE['use']}).")
@click.option("--data", "data", type=click.Path(), default=None, callback=user_path,
              help="Training dataset folder (for its name).")
@click.option("--config", "config", type=click.Path(), default=None, callback=user_path, help="YAML config.")
@click.option("--workdir", type=click.Path(), default=None, callback=user_path,
              help="Where models/ is (default: the config's).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a setting, e.g. --set serve.max_batch_items=500 (repeatable).")
@click.option("--tree", "tree_file", type=click.Path(path_type=Path), callback=user_path, default=None,
              help="A newer category tree to answer under, read again at every reload (default: the serve.tree "
                   "setting): leaves matched by id, a prediction into a removed leaf or a node that is no longer "
                   "a leaf flagged and named, its new leaves suggested and in the review picker.")
def serve(models_dir, host, port, workers, use, data, config, workdir, sets, tree_file):
    """Serve the saved models over HTTP: POST /v1/predict, GET /v1/info, /v1/categories, /health/live,
    /health/ready, /metrics (docs/serving.md). The serve.* settings hold the defaults of these flags."""
    from prodcat.predict import Predictor, check_models_folder
    from prodcat.serve.desk import read_reviewers
    from prodcat.serve.security import configured_key
    from prodcat.serve.server import run_server
    from prodcat.settings import parse_sets
    from prodcat.training.run import settings_and_paths

    sets = parse_sets(sets) if sets else None
    flags = {"host": host, "port": port, "workers": workers, "use": use}
    cfg, paths = settings_and_paths(data, config, workdir, sets)
    settings = cfg["serve"] | {k: v for k, v in flags.items() if v is not None}
    if tree_file is not None:
        settings["tree"] = str(tree_file)
    if settings.get("tree"):  # a bad tree file stops now, in one line (workers and reloads read it again)
        from prodcat.serve.loading import read_newer_tree

        settings["tree"] = str(Path(settings["tree"]).resolve())
        read_newer_tree(settings["tree"])
    models_dir = check_models_folder(models_dir or paths.models_root)
    # models that cannot answer (no full models for --use full, a model that is not saved) stop now, with
    # what to run first, instead of a service that answers 503 forever
    Predictor.load(models_dir, settings["model"], preload=False, use=settings["use"])
    configured_key(settings)  # a missing key file stops now, not in every worker
    read_reviewers(cfg["review"]["reviewers_file"])  # so does a bad reviewers file
    run_server(models_dir, settings, echo=click.echo, review=cfg["review"])


@main.command()
@run_options
@click.option("--top-levels", type=click.IntRange(min=0), default=15, show_default=True,
              help="Rows of the per-top-level hF1 table (0: none).")
def scores(run, top_levels):
    """OOF hF1 / weighted F1 / accuracy of every base model, their plain average and the stacker."""
    echo_scores(run, top_levels)


def echo_scores(run, top_levels: int = 15) -> None:
    from prodcat.training.scores import comparison_predictions, comparison_table, format_table, top_level_table

    preds = comparison_predictions(run)
    table = comparison_table(run, preds)
    folds = "/".join(str(k) for k in sorted(set(table["folds"].dropna().astype(int)))) or "no"
    click.echo(f"OOF scores on {run.ds.name} ({len(run.ds.train)} products, {folds} folds)")
    click.echo(format_table(table))
    if preds:
        from prodcat.evaluation.review import review_table

        click.echo("\nReview: top-k accuracy, calibration (ECE) and the share auto-accepted at a target precision")
        click.echo(review_table(run, preds).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if preds and top_levels:
        table = top_level_table(run, preds)
        more = len(table) - top_levels
        table["title"] = table["title"].str.slice(0, 28)
        click.echo(f"\nOOF hF1 per top-level category (largest {min(top_levels, len(table))} of {len(table)})")
        click.echo(table.head(top_levels).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        if more > 0:
            click.echo(f"... {more} more (./run.sh report writes them all)")


@main.command()
@run_options
@click.option("--into", "into", multiple=True, type=click.Path(path_type=Path),
              help="Write the table between the results markers of this markdown file (repeatable; e.g. "
                   "README.md, docs/results/<dataset>.md).")
def results(run, into):
    """The OOF results table of the run's finished models, stamped with the commit and the command that made
    them (docs/results/index.md); printed, and written --into markdown files."""
    from prodcat.training.results import results_block, write_into

    block = results_block(run)
    click.echo(block)
    for path in into:
        path = user_path(None, None, path)
        write_into(path, block)
        click.echo(f"[results] written into {path}")


@main.command()
@run_options
@click.option("--models", default=None, help="Comma-separated base models to stack (default: every finished one).")
@click.option("--force", is_flag=True, help="Recompute even if the settings and inputs are unchanged.")
def stack(run, models, force):
    """LightGBM ranking stacker over the base models' OOF probabilities -> oof/<dataset>/stack/."""
    from prodcat.training.stack import run_stack

    run_stack(run, models.split(",") if models else None, echo=click.echo, force=force)


@main.command()
@run_options
def report(run):
    """PNG plots under reports/<dataset>/: scores per model, hF1 per top-level category, calibration."""
    from prodcat.training.report import write_report

    for path in write_report(run):
        click.echo(str(path))


@main.command()
@run_options
@click.option("--model", default="stack", show_default=True, help="Any finished model (scores lists them).")
def errors(run, model):
    """Where a model's OOF mistakes are: sibling / other branch / other top level, by class size, catch-all
    leaves, how often the predicted path is right down to each depth, and which other models get them right
    (CSVs under reports/<dataset>/)."""
    from prodcat.storage import write_csv
    from prodcat.training.error_analysis import error_report, others_right
    from prodcat.training.scores import comparison_predictions

    preds = comparison_predictions(run)
    if model not in preds:
        raise DataError(f"model '{model}' has no finished OOF probabilities (finished: {', '.join(preds) or 'none'})")
    oof = preds[model]
    y = run.ds.train["category_id"].to_numpy()
    have = ~oof.missing
    y, pred = y[have], oof.top1()[have]
    tables = error_report(y, pred, run.ds.tree)
    tables["others"] = others_right(y, pred, {m: p.top1()[have] for m, p in preds.items() if m != model})
    titles = {"mistakes": "Wrong leaves, by where they are in the tree",
              "class_size": "By the class's number of training products",
              "catch_all": "Catch-all leaves (titled like their parent)",
              "depth": "Predicted path right down to each depth",
              "others": "The other models on its mistakes (a different view gets them right)"}
    click.echo(f"OOF error analysis of {model} on {run.ds.name} ({int(have.sum())} products, "
               f"accuracy {float((pred == y).mean()):.4f})")
    for name, table in tables.items():
        click.echo(f"\n{titles[name]}")
        click.echo(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        write_csv(table, run.paths.reports / f"errors_{model}_{name}.csv")


@main.command()
@run_options
def notebook(run):
    """Run notebooks/compare_oof.ipynb on this run; writes it, executed, as HTML under reports/<dataset>/."""
    import os

    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    from prodcat.storage import atomic_path

    os.environ |= {"PRODCAT_DATA": str(run.ds.root.resolve()), "PRODCAT_WORKDIR": str(run.paths.workdir.resolve()),
                   "PRODCAT_CONFIG": str(run.config_file or "")}
    repo = Path(__file__).resolve().parents[2]
    nb = nbformat.read(repo / "notebooks" / "compare_oof.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(repo)}}).execute()
    out = run.paths.reports / "compare_oof.html"
    with atomic_path(out) as tmp:
        tmp.write_text(HTMLExporter().from_notebook_node(nb)[0], encoding="utf-8")
    click.echo(f"{out.resolve()}  (open it in a browser)")


@main.command()
@run_options
def config(run):
    """Every setting, resolved: its value and where it came from (default, size rule, a file, --set)."""
    rows = run.settings.table()
    width = max(len(k) for k, _, _ in rows)
    click.echo(f"# {run.settings.note}")
    for key, value, source in rows:
        click.echo(f"{key:<{width}}  {value!r:<40}  # {source}")


@main.group()
def tree():
    """Changes of the category tree: what changed between two versions, and how many training products each
    change touches."""


@tree.command(name="diff")
@click.argument("old", type=click.Path(path_type=Path), callback=user_path)
@click.argument("new", type=click.Path(path_type=Path), callback=user_path)
@click.option("--data", "data", type=click.Path(), default=None, callback=user_path,
              help="Training dataset whose products each change touches (default: the config's).")
@click.option("--config", "config", type=click.Path(), default=None, callback=user_path, help="YAML config.")
@click.option("--out", "out_path", type=click.Path(path_type=Path), callback=user_path, default=None,
              help="Also write the changes as CSV.")
def tree_diff_command(old, new, data, config, out_path):
    """Nodes added, removed, moved (another parent) and renamed between the trees OLD and NEW (matched by id),
    each with the training products at or under it in OLD."""
    import pandas as pd

    from prodcat.data.dataset import TRAIN_COLUMNS, read_products
    from prodcat.data.tree import CategoryTree
    from prodcat.data.tree_change import tree_diff
    from prodcat.settings import resolve_config
    from prodcat.storage import write_csv

    before, after = CategoryTree.from_csv(old), CategoryTree.from_csv(new)
    train = Path(data or resolve_config(config).values["data"]) / "train.parquet"
    labels = read_products(train, TRAIN_COLUMNS)["category_id"].to_numpy() if train.is_file() else None
    changes = tree_diff(before, after, labels)
    counts = changes["change"].value_counts()
    click.echo(f"{old} -> {new}: " + (", ".join(f"{counts.get(c, 0)} {c}" for c in ("added", "removed", "moved",
                                                                                    "renamed"))))
    if labels is None:
        click.echo(f"(no {train}: training products not counted)")
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_colwidth", 60):
        if len(changes):
            click.echo(changes.to_string(index=False))
    if out_path is not None:
        write_csv(changes, out_path)
        click.echo(f"-> {out_path}")


@main.group()
def review():
    """The review queue: products for a person to decide (flagged ones and an audit sample of the accepted
    ones), the decisions kept in the review store (review.url: SQLite under the workdir by default), and
    the decisions as training rows."""


def store_options(fn):
    """--data, --config, --workdir and --set of the review commands: they name the dataset and the store
    (the training data is not read)."""
    for option in reversed((
            click.option("--data", "data", type=click.Path(), default=None, callback=user_path,
                         help="Dataset folder (for its name: the store of that dataset)."),
            click.option("--config", "config", type=click.Path(), default=None, callback=user_path,
                         help="YAML config."),
            click.option("--workdir", type=click.Path(), default=None, callback=user_path,
                         help="Where models/ and review/ are (default: the config's)."),
            click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                         help="Override a setting, e.g. --set review.url=postgresql+psycopg://u:p@host/db."))):
        fn = option(fn)
    return fn


def review_setup(data, config, workdir, sets):
    """(settings, Paths) of the review commands' options."""
    from prodcat.settings import parse_sets
    from prodcat.training.run import settings_and_paths

    return settings_and_paths(data, config, workdir, parse_sets(sets) if sets else None)


@review.command(name="add")
@click.option("--input", "input_path", type=click.Path(path_type=Path), callback=user_path, required=True,
              help="Products (predicted on the way in) or a `predict` output (then --products too).")
@click.option("--products", "products_path", type=click.Path(path_type=Path), callback=user_path, default=None,
              help="The products' own file, when --input is a `predict` output.")
@click.option("--images", type=click.Path(path_type=Path), callback=user_path, default=None,
              help="Photo folder (default: images/ beside the products file).")
@click.option("--models", "models_dir", type=click.Path(path_type=Path), callback=user_path, default=None,
              help="Saved models (default: <workdir>/models/<dataset>/).")
@click.option("--model", default=None, help="stack, average or a base model (default: stack when saved).")
@click.option("--min-precision", type=float, default=None,
              help="Precision the accepted products must reach (default: the setting review.min_precision).")
@use_option
@store_options
def review_add(input_path, products_path, images, models_dir, model, min_precision, use, data, config, workdir,
               sets):
    """Queue the products that need review (and the audit sample of the accepted ones) from a file."""
    from prodcat.predict import Predictor
    from prodcat.review.queue import open_store, queue_predictions, read_review_input, teach

    check_rule_flags(None, min_precision)  # before any photo is read
    cfg, paths = review_setup(data, config, workdir, sets)
    predictor = Predictor.load(models_dir or paths.models_root, model, preload=False, use=use,
                               zero_shot=cfg["review"]["zero_shot"])
    store = open_store(cfg, paths, predictor.tree)
    teach(predictor, store)  # what people decided so far: the models' memory before these are predicted
    settings = cfg["review"]
    precision = settings["min_precision"] if min_precision is None else min_precision
    table, products = read_review_input(input_path, products_path, images, predictor, precision,
                                        settings["suggestions"], echo=click.echo)
    counts = queue_predictions(store, table, products, settings["audit_share"], predictor.version, settings)
    skipped = counts["flagged"] + counts["audit"] - counts["added"]
    click.echo(f"[review] {len(table)} products: {counts['flagged']} need review, {counts['audit']} accepted ones "
               f"in the audit sample ({settings['audit_share']:.1%}); {counts['added']} added to the queue "
               f"({skipped} already queued or decided) -> {store}")
    if counts["grouped"]:
        click.echo(f"[review] {counts['grouped']} of them join a similar product's group: decided with it "
                   f"(review.group_similarity {settings['group_similarity']})")


@review.command(name="suspects")
@run_options
@click.option("--model", default=None, help="Whose OOF predictions (default: stack when finished).")
@click.option("--out", "out_path", type=click.Path(path_type=Path), callback=user_path, default=None,
              help="Also write them: id, current leaf, suggested leaf, its probability, the label's confidence.")
@click.option("--no-queue", is_flag=True, help="Only list them: do not queue them for review.")
def review_suspects(run, model, out_path, no_queue):
    """Queue training products whose label the out-of-fold predictions contradict confidently (Cleanlab's
    confident learning) as catalogue checks: the suggested leaf and the current label are the options; a
    correction replaces the training label at the next `learn`."""
    from prodcat.review.queue import open_store, queue_suspects
    from prodcat.storage import write_csv
    from prodcat.training.suspects import find_suspects

    suspects = find_suspects(run, model)
    click.echo(f"[review] {len(suspects)} of {len(run.ds.train)} training labels look wrong "
               f"({len(suspects) / max(len(run.ds.train), 1):.1%}; confident learning on the OOF predictions)")
    if suspects.attrs.get("small_classes"):
        click.echo(f"[review] {suspects.attrs['small_classes']} leaves have too few training products for every "
                   "wrong label among them to be found")
    if out_path is not None:
        write_csv(suspects, out_path)
        click.echo(f"[review] -> {out_path}")
    if not no_queue and len(suspects):
        store = open_store(run.cfg, run.paths)
        added = queue_suspects(store, suspects, run.ds.train, f"suspects of {run.ds.name}")
        click.echo(f"[review] {added} added to the queue as catalogue checks -> {store}")


@review.command(name="status")
@store_options
def review_status(data, config, workdir, sets):
    """The queue's counters: done, left, suggestion 1 accepted, audit precision so far."""
    from prodcat.review.queue import open_store

    store = open_store(*review_setup(data, config, workdir, sets))
    c = store.counters()
    share = "" if c["suggestion1_share"] is None else f" ({c['suggestion1_share']:.1%})"
    audit = "none decided yet" if c["audit_precision"] is None else \
        f"{c['audit_precision']:.1%} of {c['audit_decided']} audit products decided in the model's leaf"
    click.echo(f"{store}\ndone {c['done']}, left {c['left']} ({c['skipped']} skipped), suggestion 1 accepted "
               f"{c['suggestion1_accepted']}{share}\naudit precision: {audit}")


@review.command(name="export")
@click.option("--out", "out_path", type=click.Path(path_type=Path), callback=user_path, required=True,
              help="Output parquet in the task's train.parquet layout.")
@store_options
def review_export(out_path, data, config, workdir, sets):
    """Write the decisions as training rows (the latest standing decision per product; skips and undone
    decisions left out)."""
    from prodcat.review.queue import open_store
    from prodcat.storage import write_parquet

    store = open_store(*review_setup(data, config, workdir, sets))
    rows = store.export_training_rows()
    write_parquet(rows, out_path)
    click.echo(f"{len(rows)} decided products from {store} -> {out_path}")


@main.command()
@store_options
@click.option("--force", is_flag=True, help="Retrain finished folds.")
@click.option("--refit", is_flag=True, help="Also the full models (what a service with serve.use=full answers with).")
@click.pass_context
def learn(ctx, data, config, workdir, sets, force, refit):
    """Train with the reviewers' decisions: they are exported to <workdir>/review/<dataset>/decisions.parquet
    and `all --extra` that file runs (a decision about a training product replaces its label; what did not
    change is reused). A running service then takes the new models: POST /v1/reload or SIGHUP."""
    from prodcat.review.queue import open_store
    from prodcat.storage import write_parquet

    cfg, paths = review_setup(data, config, workdir, sets)
    rows = open_store(cfg, paths).export_training_rows()
    rows = without_test_products(rows, Path(data or cfg["data"]))
    if not len(rows):
        raise DataError(f"no decisions to learn from in the review store of {paths.dataset} yet (review products "
                        "first: the service's /review page)")
    extra = paths.review_db.parent / "decisions.parquet"
    write_parquet(rows, extra)
    click.echo(f"[learn] {len(rows)} decided products -> {extra}")
    ctx.invoke(all_, data=data, config=config, workdir=workdir, sets=sets, extra=extra, force=force, refit=refit)
    click.echo("[learn] done: reload a running service to answer with the new models (POST /v1/reload with the "
               "API key, or SIGHUP)")


def without_test_products(rows, data: Path):
    """The decided products that are not test.parquet's: a reviewer's label of a test product would be the
    submission's own answer (the one rule: no training row is a test product), so `learn` leaves them out
    and says how many (they stay in the store and in `review export`)."""
    import pandas as pd

    from prodcat.data.dataset import seen_rows

    test_file = data / "test.parquet"
    if not test_file.is_file():
        return rows
    test = seen_rows(rows["id"].to_numpy(), pd.read_parquet(test_file, columns=["id"])["id"].to_numpy())
    if len(test):
        click.echo(f"[learn] {len(test)} decided products are test.parquet products "
                   f"(e.g. {rows['id'].iloc[test[:5]].tolist()}): left out of the training rows, so the "
                   "submission stays the models' own prediction of them")
    return rows.drop(index=rows.index[test]).reset_index(drop=True)


@main.command(name="all")
@run_options
@click.option("--force", is_flag=True, help="Retrain finished folds.")
@click.option("--refit", is_flag=True, help="Also train every base model once on all products (full models) "
                                            "and submit with them.")
def all_(run, force, refit):
    """Folds, every base model of the pipeline its data supports (fold models saved), the stacker, then
    the saved models predict test.parquet into the validated submission; the score table. --refit: the
    full models too, and the submission from them."""
    from prodcat.distributed import is_main_process
    from prodcat.outputs import STACK
    from prodcat.training.oof import base_models
    from prodcat.training.runner import refit_model, train_model
    from prodcat.training.stack import run_stack
    from prodcat.training.submission import write_submission

    start = time.time()
    run.folds  # noqa: B018 - made once, reused by every model
    for model in run.cfg["pipeline"]:
        train_model(run, model, force=force, echo=click.echo)
    if not is_main_process():
        return  # an extra DDP process: it shared the training; rank 0 stacks and submits
    pipeline = [m for m in run.cfg["pipeline"] if m in base_models(run)]
    if not pipeline:
        raise click.ClickException("no base model finished: nothing to stack or submit")
    run_stack(run, pipeline, echo=click.echo, force=force)
    for model in pipeline if refit else []:
        refit_model(run, model, force=force, echo=click.echo)
    path, used = write_submission(run, STACK, use="full" if refit else DEFAULT_USE)
    click.echo("")
    echo_scores(run)
    click.echo(f"\nsubmission ({used}, predicted by the saved models): {path}  [{time.time() - start:.0f}s]")


if __name__ == "__main__":
    sys.exit(main())

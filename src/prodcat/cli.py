"""Command line: python -m prodcat {folds,train,stack,submit,scores,report,all} [--data DIR] [--config FILE]."""
from __future__ import annotations

import functools
import sys
import time
import warnings

import click

from prodcat.errors import DataError

DEFAULT_PIPELINE = ("fasttext", "tfidf")


def run_options(fn):
    """--data, --config and --workdir for every command; opens the Run and reports bad input cleanly."""

    @click.option("--data", "data", type=click.Path(), default=None,
                  help="Dataset folder in the task's layout (default: the config's `data`).")
    @click.option("--config", "config", type=click.Path(), default=None,
                  help="YAML config (default: configs/default.yaml).")
    @click.option("--workdir", type=click.Path(), default=None,
                  help="Where folds/, oof/, models/, submissions/ and cache/ go (default: the config's, '.').")
    @functools.wraps(fn)
    def wrapper(data, config, workdir, **kwargs):
        from prodcat.run import Run

        with warnings.catch_warnings():
            warnings.simplefilter("always")
            try:
                run = Run.open(data, config, workdir)
            except DataError as exc:
                raise click.ClickException(str(exc)) from None
        try:
            return fn(run, **kwargs)
        except DataError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


@click.group()
def main():
    """prodcat: k-fold base models and a submission for product category prediction."""
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"


@main.command()
@run_options
@click.option("--force", is_flag=True, help="Make new folds even if saved ones match.")
def folds(run, force):
    """Make (or reuse) the stratified folds of the dataset."""
    from prodcat.folds import load_or_make_folds

    table = load_or_make_folds(run.ds, run.paths.folds, run.k, run.seed, force=force)
    sizes = table["fold"].value_counts().sort_index()
    click.echo(f"{run.paths.folds}: {len(table)} products in {run.k} folds, sizes {sizes.tolist()}")


@main.command()
@click.argument("model")
@run_options
@click.option("--fold", "fold", type=int, default=None, help="Train only this fold (0-based).")
@click.option("--force", is_flag=True, help="Retrain folds that are already finished.")
def train(run, model, fold, force):
    """Train MODEL on one fold or all folds; writes OOF and test probabilities."""
    from prodcat.cv import known_models, train_model

    if model not in known_models(run):
        raise click.BadParameter(f"unknown model '{model}' (known: {', '.join(known_models(run))})",
                                 param_hint="MODEL")
    start = time.time()
    done = train_model(run, model, None if fold is None else [fold], force=force, echo=click.echo)
    state = "all folds finished" if done else "not all folds finished yet"
    click.echo(f"[{model}] {state} ({time.time() - start:.0f}s) -> {run.paths.oof(model)}")


@main.command()
@run_options
@click.option("--model", default=None, help="Model whose test probabilities to submit (default: best OOF hF1).")
@click.option("--name", default=None, help="File name under submissions/<dataset>/ (default: the model's).")
def submit(run, model, name):
    """Write and validate submissions/<dataset>/<name>.parquet."""
    from prodcat.submit import write_submission

    path, used = write_submission(run, model, name)
    fallback = f" (products it could not predict: from {', '.join(used[1:])})" if len(used) > 1 else ""
    click.echo(f"submission from {used[0]}{fallback}: {path}")


@main.command()
@run_options
@click.option("--top-levels", default=15, show_default=True, help="Rows of the per-top-level hF1 table (0: none).")
def scores(run, top_levels):
    """OOF hF1 / weighted F1 / accuracy of every base model, their plain average and the stacker."""
    echo_scores(run, top_levels)


def echo_scores(run, top_levels: int = 15) -> None:
    from prodcat.scores import comparison_predictions, comparison_table, format_table, top_level_table

    preds = comparison_predictions(run)
    click.echo(f"OOF scores on {run.ds.name} ({len(run.ds.train)} products, {run.k} folds)")
    click.echo(format_table(comparison_table(run, preds)))
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
@click.option("--models", default=None, help="Comma-separated base models to stack (default: every finished one).")
@click.option("--force", is_flag=True, help="Recompute even if the settings and inputs are unchanged.")
def stack(run, models, force):
    """LightGBM ranking stacker over the base models' OOF probabilities -> oof/<dataset>/stack/."""
    from prodcat.stack import run_stack

    run_stack(run, models.split(",") if models else None, echo=click.echo, force=force)


@main.command()
@run_options
def report(run):
    """PNG plots under reports/<dataset>/: scores per model, hF1 per top-level category, calibration."""
    from prodcat.report import write_report

    for path in write_report(run):
        click.echo(str(path))


@main.command(name="all")
@run_options
@click.option("--force", is_flag=True, help="Retrain finished folds.")
def all_(run, force):
    """Folds, every base model of the pipeline its data supports, the stacker, the stacked submission and
    the score table."""
    from prodcat.cv import train_model
    from prodcat.stack import STACK, base_models, run_stack
    from prodcat.submit import write_submission

    start = time.time()
    run.folds  # noqa: B018 - made once, reused by every model
    for model in run.cfg.get("pipeline", DEFAULT_PIPELINE):
        train_model(run, model, force=force, echo=click.echo)
    pipeline = [m for m in run.cfg.get("pipeline", DEFAULT_PIPELINE) if m in base_models(run)]
    if not pipeline:
        raise click.ClickException("no base model finished: nothing to stack or submit")
    run_stack(run, pipeline, echo=click.echo, force=force)
    path, used = write_submission(run, STACK)
    click.echo("")
    echo_scores(run)
    click.echo(f"\nsubmission ({used[0]}): {path}  [{time.time() - start:.0f}s]")


if __name__ == "__main__":
    sys.exit(main())

"""`mmva tune`: a thin layer over :func:`mmva.train.tune.tune` (Optuna hyperparameter search)."""

from __future__ import annotations

from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from mmva.cli import app, console


@app.command("tune")
def tune_cmd(
    data: str = typer.Option(..., "--data", help="Corpus: MELD folder, manifest folder or manifest file."),
    config: str = typer.Option("reference", "--config", "-c", help="Preset name (reference, tiny, ...) or YAML file."),
    trials: int = typer.Option(20, "--trials", "-n", help="Finished (completed or pruned) trials the study should have."),
    out: str = typer.Option(..., "--out", "-o", help="Study folder: study.db, trials/, best.yaml, best.json."),
    overrides: List[str] = typer.Option([], "--set", help="Fixed config value for every trial: section.key=value."),
    space: Optional[str] = typer.Option(None, "--space", help="Search space YAML (train.lr: {low, high, log}, "
                                                              "data.batch_size: {choices: [...]}, ...)."),
    storage: Optional[str] = typer.Option(None, "--storage", envvar="MMVA_TUNE_STORAGE",
                                          help="Optuna storage URL shared by several processes or machines "
                                               "(default: sqlite:///OUT/study.db)."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name (default: mmva-<config name>)."),
    seed: int = typer.Option(0, help="Sampler seed."),
    prune_startup: int = typer.Option(2, help="Trials that finish before any is pruned."),
    prune_warmup: int = typer.Option(1, help="Epochs a trial runs before it can be pruned."),
    mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow",
                                help="Log each trial to MLflow when it is installed (MLFLOW_TRACKING_URI, else OUT/mlruns)."),
    progress: bool = typer.Option(False, "--progress/--no-progress", help="Show each trial's progress bar."),
) -> None:
    """Search hyperparameters with Optuna (TPE, median pruning on dev emotion weighted-F1); resumable."""
    from mmva.config import load_config
    from mmva.train.tune import load_space, tune

    try:
        params = load_space(space, load_config(config, overrides))
        result = tune(config, data, out, trials=trials, overrides=overrides, space=params, storage=storage,
                      study_name=study, seed=seed, prune_startup=prune_startup, prune_warmup=prune_warmup,
                      mlflow=mlflow, progress=progress)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    table = Table("trial", "state", "dev emotion wF1", "hyperparameters", title=f"study {escape(result.study_name)}")
    for t in result.trials:
        value = f"{t['value']:.4f}" if t["value"] is not None else ""
        table.add_row(str(t["number"]), t["state"], value,
                      escape(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in t["params"].items())))
    console.print(table)
    console.print(f"{result.count('complete')} complete, {result.count('pruned')} pruned, "
                  f"{result.count('fail')} failed")
    if result.best_config is None:
        console.print("[yellow]no trial has completed yet[/]")
        return
    console.print(escape(f"best trial {result.best_trial}: {result.best_value:.4f}; "
                         f"reproduce with: mmva train --data {data} --config {result.best_config} --out runs/best"))

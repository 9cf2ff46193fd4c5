"""Hyper-parameter sweeps over any training arguments, on Optuna.

A sweep is a YAML file:

    study_name: resnet20-cpu-example
    recipe: zoo_configs/cpu/resnet20_frelu_cifar10.yaml   # train -c defaults (optional, relative to the file)
    args: {dataset: shared/cifar10-lossless, epochs: 2}    # fixed overrides
    params:                                                # searched
      model: {type: categorical, choices: [resnet20_frelu.cifar10, resnet20_relu.cifar10]}
      lr: {type: float, low: 0.01, high: 0.3, log: true}
      batch_size: {type: int, low: 32, high: 128, step: 32}
    objective: {metric: eval_top1, direction: maximize}    # a summary.csv column, last epoch
    sampler: tpe            # tpe (default), random or grid
    pruner: median          # median (default), hyperband, successive_halving or none
    pruner_args: {n_warmup_steps: 5}   # keyword arguments of the Optuna pruner (optional)
    n_trials: 8             # the study's budget of finished trials

Each trial trains in-process with the training command's own code and writes a normal run
folder ``<output>/<study>/trial-<n>/`` (args.yaml, summary.csv, checkpoints). Trials report
their metric every epoch, so bad ones are pruned early.

Storage: by default an SQLite file beside the trials, so a killed sweep started again continues
and keeps every finished trial. With ``--storage postgresql://...`` (Optuna's RDB backend),
workers on several machines share one study; each stops when the study has ``n_trials``.
"""
import argparse
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import optuna
import yaml
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from .fileio import write_text_atomic
from .train import train, training_args

_logger = logging.getLogger('sweep')
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class SweepError(ValueError):
    pass


def load_sweep(path: Path) -> Dict[str, Any]:
    spec = yaml.safe_load(Path(path).read_text()) or {}
    for key in ('study_name', 'params', 'objective'):
        if key not in spec:
            raise SweepError(f'{path} has no {key!r}; see `timm_frelu.sweep` for the sweep file format.')
    if spec.get('recipe'):
        spec['recipe'] = str((Path(path).parent / spec['recipe']).resolve())
    if spec['objective'].get('direction', 'maximize') not in ('maximize', 'minimize'):
        raise SweepError(f"objective.direction must be maximize or minimize, not {spec['objective']['direction']!r}.")
    for name, p in spec['params'].items():
        if p.get('type') not in ('categorical', 'int', 'float'):
            raise SweepError(f'Parameter {name!r} needs type categorical, int or float.')
    return spec


def suggest(trial: optuna.Trial, params: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    values = {}
    for name, p in params.items():
        if p['type'] == 'categorical':
            values[name] = trial.suggest_categorical(name, p['choices'])
        elif p['type'] == 'int':
            values[name] = trial.suggest_int(name, p['low'], p['high'], step=p.get('step', 1), log=p.get('log', False))
        else:
            values[name] = trial.suggest_float(name, p['low'], p['high'], step=p.get('step'), log=p.get('log', False))
    return values


def _sampler(spec: Dict[str, Any], seed: Optional[int]) -> optuna.samplers.BaseSampler:
    kind = spec.get('sampler', 'tpe')
    if kind == 'tpe':
        return optuna.samplers.TPESampler(seed=seed)
    if kind == 'random':
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == 'grid':
        grid = {name: p['choices'] for name, p in spec['params'].items() if p['type'] == 'categorical'}
        if len(grid) != len(spec['params']):
            raise SweepError('The grid sampler takes categorical parameters only.')
        return optuna.samplers.GridSampler(grid, seed=seed)
    raise SweepError(f'Unknown sampler {kind!r}: use tpe, random or grid.')


def _pruner(spec: Dict[str, Any]) -> optuna.pruners.BasePruner:
    kind = spec.get('pruner', 'median')
    pruners = {
        'median': optuna.pruners.MedianPruner,
        'hyperband': optuna.pruners.HyperbandPruner,
        'successive_halving': optuna.pruners.SuccessiveHalvingPruner,
        'none': optuna.pruners.NopPruner,
    }
    if kind not in pruners:
        raise SweepError(f'Unknown pruner {kind!r}: use one of {sorted(pruners)}.')
    pruner_args = dict(n_startup_trials=2, n_warmup_steps=1) if kind == 'median' else {}
    pruner_args.update(spec.get('pruner_args') or {})
    try:
        return pruners[kind](**pruner_args)
    except TypeError as err:
        raise SweepError(f'pruner_args {pruner_args} do not fit the {kind} pruner: {err}') from None


def trial_args(spec: Dict[str, Any], values: Dict[str, Any], output: Path, trial_number: int) -> argparse.Namespace:
    try:
        return training_args(spec.get('recipe'), **{**spec.get('args', {}), **values}, output=str(output),
                             experiment=f'trial-{trial_number}')
    except ValueError as err:
        raise SweepError(str(err)) from None


def make_objective(spec: Dict[str, Any], output: Path) -> Callable[[optuna.Trial], float]:
    metric = spec['objective']['metric']

    def objective(trial: optuna.Trial) -> float:
        args = trial_args(spec, suggest(trial, spec['params']), output, trial.number)
        trial.set_user_attr('run_dir', str(output / args.experiment))
        trial.set_user_attr('worker', f'{socket.gethostname()}:{os.getpid()}')
        last: Dict[str, float] = {}

        def report(epoch: int, metrics: Dict[str, float]) -> None:
            if metric not in metrics:
                raise SweepError(f'The objective metric {metric!r} is not among {sorted(metrics)}.')
            last['value'] = metrics[metric]
            trial.report(metrics[metric], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f'pruned after epoch {epoch} at {metric}={metrics[metric]:.4f}')

        train(args, epoch_callback=report)
        return last['value']

    return objective


def run_sweep(spec: Dict[str, Any], output: Path, storage: Optional[str] = None, n_trials: Optional[int] = None,
              seed: Optional[int] = None) -> optuna.Study:
    """Run (or continue) the sweep until its study holds ``n_trials`` finished trials."""
    output = Path(output) / spec['study_name']
    output.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(output / 'study.db').resolve()}"
    budget = n_trials or spec.get('n_trials', 10)
    study = optuna.create_study(
        study_name=spec['study_name'], storage=storage, load_if_exists=True,
        direction=spec['objective'].get('direction', 'maximize'), sampler=_sampler(spec, seed), pruner=_pruner(spec))
    # Only finished trials count: one left RUNNING by a killed process is redone, not lost budget.
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    if finished < budget:
        study.optimize(make_objective(spec, output), n_trials=budget - finished,
                       callbacks=[MaxTrialsCallback(budget, states=FINISHED)], catch=())
    return study


def write_report(study: optuna.Study, spec: Dict[str, Any], output: Path, top: int = 5) -> Dict[str, Path]:
    """Best trials (markdown), parameter importance and history figures, and the best config YAML."""
    import warnings

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots
    warnings.filterwarnings('ignore', category=optuna.exceptions.ExperimentalWarning)

    output = Path(output) / spec['study_name']
    metric = spec['objective']['metric']
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise SweepError('No trial has completed yet; nothing to report.')
    reverse = spec['objective'].get('direction', 'maximize') == 'maximize'
    ranked = sorted(complete, key=lambda t: t.value, reverse=reverse)
    names = list(spec['params'])
    counts = {state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,))) for state in TrialState}
    lines = [f"# Sweep {spec['study_name']}", '',
             f"Objective: {metric} ({'max' if reverse else 'min'}imize), last epoch of each trial. Trials: "
             + ', '.join(f'{n} {k}' for k, n in counts.items() if n) + '.', '',
             f'| rank | trial | {metric} | ' + ' | '.join(names) + ' | run folder |',
             '| --- | --- | --- | ' + ' | '.join('---' for _ in names) + ' | --- |']
    for rank, t in enumerate(ranked[:top], start=1):
        lines.append(f'| {rank} | {t.number} | {t.value:.4f} | ' + ' | '.join(str(t.params.get(n)) for n in names)
                     + f" | `{t.user_attrs.get('run_dir', '')}` |")
    paths = {}
    if len(complete) >= 2 and len(names) >= 1:
        importance = optuna.importance.get_param_importances(study)
        lines += ['', 'Parameter importance (fANOVA): ' + ', '.join(f'{k} {v:.2f}' for k, v in importance.items())]
        plt.figure()
        optuna_plots.plot_param_importances(study)
        plt.tight_layout()
        paths['importance'] = output / 'param_importances.png'
        plt.savefig(paths['importance'], dpi=110)
        plt.close('all')
    optuna_plots.plot_optimization_history(study)
    plt.tight_layout()
    paths['history'] = output / 'optimization_history.png'
    plt.savefig(paths['history'], dpi=110)
    plt.close('all')

    best = ranked[0]
    best_config = dict(yaml.safe_load(Path(spec['recipe']).read_text()) if spec.get('recipe') else {})
    best_config.update(spec.get('args', {}))
    best_config.update(best.params)
    paths['best'] = output / 'best.yaml'
    write_text_atomic(paths['best'], f"# Best of sweep {spec['study_name']}: trial {best.number}, {metric} = {best.value:.4f}\n"
                      + yaml.safe_dump(best_config, sort_keys=False))
    lines += ['', f"Best configuration: `{paths['best']}` (use with `python -m timm_frelu.train -c`)."]
    paths['report'] = output / 'report.md'
    write_text_atomic(paths['report'], '\n'.join(lines) + '\n')
    return paths


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='timm-frelu sweep', description='Run an Optuna sweep of training arguments (see timm_frelu.sweep).')
    parser.add_argument('sweep', help='sweep YAML file')
    parser.add_argument('--output', default='output/sweeps', help='parent folder of the study folder')
    parser.add_argument('--storage', default=None, help='Optuna storage URL (default: SQLite in the study folder)')
    parser.add_argument('--n-trials', type=int, default=None, help="the study's trial budget (default: the file's)")
    parser.add_argument('--seed', type=int, default=None, help='sampler seed')
    parser.add_argument('--report-only', action='store_true', help='write the report of the trials so far')
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_sweep(Path(args.sweep))
    if args.report_only:
        storage = args.storage or f"sqlite:///{(Path(args.output) / spec['study_name'] / 'study.db').resolve()}"
        study = optuna.load_study(study_name=spec['study_name'], storage=storage)
    else:
        study = run_sweep(spec, Path(args.output), storage=args.storage, n_trials=args.n_trials, seed=args.seed)
    paths = write_report(study, spec, Path(args.output))
    print(paths['report'].read_text())
    for kind, path in paths.items():
        print(f'{kind}: {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

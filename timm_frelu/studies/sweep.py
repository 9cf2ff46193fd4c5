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
    aliases: {weight_decay_exclude: {norm_bias_funnel: norm_bias}}   # optional, see below

Each trial trains in-process with the training command's own code and writes a normal run
folder ``<output>/<study>/trial-<n>/`` (args.yaml, summary.csv, checkpoints). Trials report
their metric every epoch, so bad ones are pruned early.

Storage: by default an SQLite file beside the trials, so a killed sweep started again continues
and keeps every finished trial. With ``--storage postgresql://...`` (Optuna's RDB backend),
workers on several machines share one study; each stops when the study has ``n_trials``.

Two studies of one search (the same recipe on two models, say) can try each other's best:
``--enqueue-best-of OTHER.yaml --top 3`` queues the other study's best configurations as the
next trials of this one (``aliases`` maps the other study's values that mean something else
here), and ``--report-only --joint OTHER.yaml`` ranks the configurations both studies ran by
the mean of their two objectives.
"""
import argparse
import logging
import os
import socket
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import yaml

from ..errors import TimmFreluError, require_optuna

optuna = require_optuna()
from optuna.study import MaxTrialsCallback  # noqa: E402  (after the check that names the extra)
from optuna.trial import TrialState  # noqa: E402

from ..fileio import read_yaml_mapping, write_text_atomic
from ..publishing.provenance import reproduce_command
from ..training.run_folder import ARGS_FILE
from ..training.train import NonFiniteLossError, train, training_args
from .figures import pyplot

_logger = logging.getLogger('sweep')
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class SweepError(TimmFreluError, ValueError):
    pass


def load_sweep(path: Path) -> Dict[str, Any]:
    spec = read_yaml_mapping(path, 'sweep file')
    for key in ('study_name', 'params', 'objective'):
        if key not in spec:
            raise SweepError(f'{path} has no {key!r}; see `timm_frelu.studies.sweep` for the sweep file format.')
    if spec.get('recipe'):
        spec['recipe'] = str((Path(path).parent / spec['recipe']).resolve())
    if direction(spec) not in ('maximize', 'minimize'):
        raise SweepError(f'objective.direction must be maximize or minimize, not {direction(spec)!r}.')
    for name, p in spec['params'].items():
        if p.get('type') not in ('categorical', 'int', 'float'):
            raise SweepError(f'Parameter {name!r} needs type categorical, int or float.')
    return spec


def direction(spec: Dict[str, Any]) -> str:
    return spec['objective'].get('direction', 'maximize')


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
            # After the last epoch there is nothing left to save: the trial is complete, and ranked.
            if epoch < args.epochs - 1 and trial.should_prune():
                raise optuna.TrialPruned(f'pruned after epoch {epoch} at {metric}={metrics[metric]:.4f}')

        try:
            train(args, epoch_callback=report)
        except NonFiniteLossError as err:
            # A configuration that diverges is a finding of the search, not a crash of the sweep:
            # the trial stops as a pruned one does, and says why.
            trial.set_user_attr('diverged', str(err).split(' Training stopped')[0])
            raise optuna.TrialPruned(str(err)) from None
        return last['value']

    return objective


def run_sweep(spec: Dict[str, Any], output: Path, storage: Optional[str] = None, n_trials: Optional[int] = None,
              seed: Optional[int] = None) -> optuna.Study:
    """Run (or continue) the sweep until its study holds ``n_trials`` finished trials, and has run
    every queued one."""
    budget = n_trials or spec.get('n_trials', 10)
    study = open_study(spec, output, storage, pruner=_pruner(spec))
    output = Path(output) / spec['study_name']
    # A sampler seeded alike at every start would replay its first picks on a resumed study (the
    # trials it ran before, again): the seed goes on from the number of trials already there.
    study.sampler = _sampler(spec, None if seed is None else seed + len(study.get_trials(deepcopy=False)))
    # Only finished trials count: one left RUNNING by a killed process is redone, not lost budget.
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    # Queued trials (--enqueue-best-of) run even when the budget is already spent.
    budget = max(budget, finished + len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))))
    if finished < budget:
        study.optimize(make_objective(spec, output), n_trials=budget - finished,
                       callbacks=[MaxTrialsCallback(budget, states=FINISHED)], catch=())
    return study


def default_storage(spec: Dict[str, Any], output: Path) -> str:
    return f"sqlite:///{(Path(output) / spec['study_name'] / 'study.db').resolve()}"


def open_study(spec: Dict[str, Any], output: Path, storage: Optional[str] = None,
               pruner: Optional[optuna.pruners.BasePruner] = None) -> optuna.Study:
    """The sweep's study, created on first use: in ``storage``, else SQLite in its folder."""
    (Path(output) / spec['study_name']).mkdir(parents=True, exist_ok=True)
    return optuna.create_study(study_name=spec['study_name'], storage=storage or default_storage(spec, output),
                               load_if_exists=True, direction=direction(spec), pruner=pruner)


def outcome(trial: optuna.trial.FrozenTrial) -> str:
    """A finished trial's result in words: its objective, or where it stopped and why."""
    if trial.state == TrialState.COMPLETE:
        return f'{trial.value:.4f}'
    if trial.user_attrs.get('diverged'):
        return trial.user_attrs['diverged']
    if trial.state == TrialState.PRUNED and trial.last_step is not None:
        return f'{trial.intermediate_values[trial.last_step]:.4f}, pruned after {trial.last_step + 1} epochs'
    return trial.state.name.lower()


def _stopped(study: optuna.Study, spec: Dict[str, Any]) -> List[optuna.trial.FrozenTrial]:
    """Pruned trials by their last value (diverged ones last), then failed ones."""
    worst = float('-inf') if direction(spec) == 'maximize' else float('inf')
    pruned = sorted(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)),
                    key=lambda t: t.intermediate_values.get(t.last_step, worst), reverse=direction(spec) == 'maximize')
    return pruned + study.get_trials(deepcopy=False, states=(TrialState.FAIL,))


def _ranked(study: optuna.Study, spec: Dict[str, Any]) -> List[optuna.trial.FrozenTrial]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(complete, key=lambda t: t.value, reverse=direction(spec) == 'maximize')


def translate_params(params: Dict[str, Any], spec: Dict[str, Any]) -> Dict[str, Any]:
    """Another study's parameter values as this spec's: aliased, and checked against its space."""
    aliases = spec.get('aliases') or {}
    translated = {}
    for name, p in spec['params'].items():
        if name not in params:
            raise SweepError(f'The other study has no parameter {name!r}; the two searches must share their parameters.')
        value = aliases.get(name, {}).get(params[name], params[name])
        inside = value in p['choices'] if p['type'] == 'categorical' else p['low'] <= value <= p['high']
        if not inside:
            raise SweepError(f"{name}={value!r} is outside {spec['study_name']}'s search space; "
                             f"map it with the sweep file's aliases: {{{name}: {{{value!r}: ...}}}}.")
        translated[name] = value
    return translated


def _config_key(params: Dict[str, Any], spec: Dict[str, Any]) -> tuple:
    """A configuration as this spec names it, hashable: the same key in either study means the same run."""
    return tuple(sorted(translate_params(params, spec).items()))


def enqueue_best_of(study: optuna.Study, spec: Dict[str, Any], other: optuna.Study, other_spec: Dict[str, Any],
                    top: int) -> List[Dict[str, Any]]:
    """Queue the other study's ``top`` best configurations as this study's next trials (those it
    has not run or queued already); returns what was queued."""
    queued = []
    for trial in _ranked(other, other_spec)[:top]:
        params = translate_params(trial.params, spec)
        if any(t.params == params for t in study.get_trials(deepcopy=False)):
            continue
        study.enqueue_trial(params, user_attrs={'enqueued_from': f'{other.study_name} trial {trial.number}'})
        queued.append(params)
    return queued


def joint_ranking(study: optuna.Study, spec: Dict[str, Any], other: optuna.Study,
                  other_spec: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The configurations both studies completed, best mean objective first."""
    mine = {tuple(sorted(t.params.items())): t for t in _ranked(study, spec)}
    rows, seen = [], set()
    for trial in _ranked(other, other_spec):
        try:
            key = _config_key(trial.params, spec)
        except SweepError:
            continue
        if key in mine and key not in seen:
            seen.add(key)
            rows.append(dict(params=dict(key), trials=(mine[key].number, trial.number),
                             values=(mine[key].value, trial.value), mean=(mine[key].value + trial.value) / 2))
    return sorted(rows, key=lambda r: r['mean'], reverse=direction(spec) == 'maximize')


def joint_unfinished(study: optuna.Study, spec: Dict[str, Any], other: optuna.Study,
                     other_spec: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The configurations both studies tried that one of them did not complete (pruned, diverged or
    failed there), with how each trial ended."""
    def tried(s: optuna.Study, s_spec: Dict[str, Any]) -> Dict[tuple, optuna.trial.FrozenTrial]:
        trials = {}
        for t in _ranked(s, s_spec) + _stopped(s, s_spec):
            try:
                trials.setdefault(_config_key(t.params, spec), t)
            except SweepError:
                continue
        return trials

    mine, theirs = tried(study, spec), tried(other, other_spec)
    return [dict(params=dict(key), trials=(mine[key].number, theirs[key].number),
                 outcomes=(outcome(mine[key]), outcome(theirs[key])))
            for key in mine if key in theirs and not mine[key].state == theirs[key].state == TrialState.COMPLETE]


def write_joint_report(rows: List[Dict[str, Any]], unfinished: List[Dict[str, Any]], spec: Dict[str, Any],
                       other_spec: Dict[str, Any], output: Path) -> Path:
    names = list(spec['params'])
    a, b = spec['study_name'], other_spec['study_name']
    metric = spec['objective']['metric']
    lines = [f'# Configurations run by both {a} and {b}', '',
             f'{metric}, last epoch, of each study and their mean (parameter values as {a} names them).', '',
             f'| rank | mean | {a} (trial) | {b} (trial) | ' + ' | '.join(names) + ' |',
             '| --- | --- | --- | --- | ' + ' | '.join('---' for _ in names) + ' |']
    for rank, r in enumerate(rows, start=1):
        lines.append(f"| {rank} | {r['mean']:.4f} | {r['values'][0]:.4f} ({r['trials'][0]}) | "
                     f"{r['values'][1]:.4f} ({r['trials'][1]}) | " + ' | '.join(str(r['params'][n]) for n in names) + ' |')
    if not rows:
        lines.append('\nNo configuration was run by both yet: run each sweep with `--enqueue-best-of` the other.')
    if unfinished:
        lines += ['', 'Tried by both, not completed by both (so not ranked):', '',
                  f'| {a} (trial) | {b} (trial) | ' + ' | '.join(names) + ' |',
                  '| --- | --- | ' + ' | '.join('---' for _ in names) + ' |']
        lines += [f"| {r['outcomes'][0]} ({r['trials'][0]}) | {r['outcomes'][1]} ({r['trials'][1]}) | "
                  + ' | '.join(str(r['params'][n]) for n in names) + ' |' for r in unfinished]
    path = Path(output) / spec['study_name'] / f'joint-{b}.md'
    write_text_atomic(path, '\n'.join(lines) + '\n')
    return path


def write_report(study: optuna.Study, spec: Dict[str, Any], output: Path) -> Dict[str, Path]:
    """Every finished trial (markdown; the completed ones ranked, then the stopped ones: pruned,
    diverged or failed; with the command that repeats each), parameter importance and figures, and
    the best config YAML."""
    import warnings
    from optuna.visualization import matplotlib as optuna_plots
    warnings.filterwarnings('ignore', category=optuna.exceptions.ExperimentalWarning)
    plt = pyplot()

    output = Path(output) / spec['study_name']
    metric = spec['objective']['metric']
    ranked = _ranked(study, spec)
    if not ranked:
        raise SweepError('No trial has completed yet; nothing to report.')
    names = list(spec['params'])
    # Storage can't tell a trial training now from one whose worker was killed: both are RUNNING.
    labels = {TrialState.RUNNING: 'unfinished (training now, or cut off by a stopped worker and not counted)'}
    counts = {labels.get(state, state.name.lower()): len(study.get_trials(deepcopy=False, states=(state,)))
              for state in TrialState}
    lines = [f"# Sweep {spec['study_name']}", '',
             f"Objective: {metric} ({direction(spec)}), last epoch of each trial. Trials: "
             + ', '.join(f'{n} {k}' for k, n in counts.items() if n) + '.', '',
             f'| rank | trial | {metric} | ' + ' | '.join(names) + ' | run folder |',
             '| --- | --- | --- | ' + ' | '.join('---' for _ in names) + ' | --- |']
    stopped = _stopped(study, spec)
    for rank, t in enumerate(ranked + stopped, start=1):
        lines.append(f"| {rank if t.state == TrialState.COMPLETE else '-'} | {t.number} | {outcome(t)} | "
                     + ' | '.join(str(t.params.get(n)) for n in names) + f" | `{t.user_attrs.get('run_dir', '')}` |")
    # A trial without a run folder (none recorded) must not read an args.yaml from the cwd.
    arg_files = [(t.number, Path(t.user_attrs['run_dir']) / ARGS_FILE) for t in ranked + stopped if t.user_attrs.get('run_dir')]
    commands = [(number, reproduce_command(yaml.safe_load(path.read_text()))) for number, path in arg_files if path.is_file()]
    if commands:
        lines += ['', 'Each trial again, from its `args.yaml` (the command of a stopped trial trains all its epochs):', '']
        lines += [f'- trial {number}: `{command}`' for number, command in commands]
    paths = {}
    if len(ranked) >= 2 and len(names) >= 1:
        importance = optuna.importance.get_param_importances(study)
        lines += ['', 'Parameter importance (fANOVA): ' + ', '.join(f'{k} {v:.2f}' for k, v in importance.items())]
        plt.figure()
        optuna_plots.plot_param_importances(study)
        plt.tight_layout()
        paths['importance'] = output / 'param_importances.png'
        plt.savefig(paths['importance'], dpi=110)
        plt.close('all')
    for key, plot in (('history', optuna_plots.plot_optimization_history), ('slices', optuna_plots.plot_slice)):
        plot(study)
        paths[key] = output / f'{plot.__name__[len("plot_"):]}.png'
        plt.savefig(paths[key], dpi=110, bbox_inches='tight')  # tight_layout can't place a slice plot's colorbar
        plt.close('all')

    best = ranked[0]
    best_config = read_yaml_mapping(spec['recipe'], 'recipe the sweep names') if spec.get('recipe') else {}
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
    parser = argparse.ArgumentParser(prog='timm-frelu sweep', description='Run an Optuna sweep of training arguments (see timm_frelu.studies.sweep).')
    parser.add_argument('sweep', help='sweep YAML file')
    parser.add_argument('--output', default='output/sweeps', help='parent folder of the study folder')
    parser.add_argument('--storage', default=None, help='Optuna storage URL (default: SQLite in the study folder)')
    parser.add_argument('--n-trials', type=int, default=None, help="the study's trial budget (default: the file's)")
    parser.add_argument('--seed', type=int, default=None, help='sampler seed')
    parser.add_argument('--report-only', action='store_true', help='write the report of the trials so far')
    parser.add_argument('--enqueue-best-of', metavar='OTHER_SWEEP', default=None,
                        help="first queue the best configurations of this other sweep's study (same --output and --storage)")
    parser.add_argument('--top', type=int, default=3, help='how many of the other study\'s best to queue (default 3)')
    parser.add_argument('--joint', metavar='OTHER_SWEEP', default=None,
                        help='also rank the configurations both studies ran by their mean objective')
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    spec = load_sweep(Path(args.sweep))
    output = Path(args.output)

    def load(sweep_spec: Dict[str, Any]) -> optuna.Study:
        try:
            return optuna.load_study(study_name=sweep_spec['study_name'],
                                     storage=args.storage or default_storage(sweep_spec, output))
        except KeyError:
            raise SweepError(f"No study {sweep_spec['study_name']!r} under {output} yet: run its sweep first.") from None

    other_path = args.enqueue_best_of or args.joint
    other_spec = load_sweep(Path(other_path)) if other_path else None
    if args.enqueue_best_of:
        study = open_study(spec, output, args.storage)
        for params in enqueue_best_of(study, spec, load(other_spec), other_spec, args.top):
            print(f"queued from {other_spec['study_name']}: {params}")
    if args.report_only:
        study = load(spec)
    else:
        study = run_sweep(spec, output, storage=args.storage, n_trials=args.n_trials, seed=args.seed)
    paths = write_report(study, spec, output)
    if args.joint:
        other = load(other_spec)
        paths['joint'] = write_joint_report(joint_ranking(study, spec, other, other_spec),
                                            joint_unfinished(study, spec, other, other_spec), spec, other_spec, output)
        print(paths['joint'].read_text())
    print(paths['report'].read_text())
    for kind, path in paths.items():
        print(f'{kind}: {path}')
    return 0


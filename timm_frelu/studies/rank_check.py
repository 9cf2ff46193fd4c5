"""Does a sweep's short proxy rank configurations as the full budget does?

A sweep scores each trial after a few epochs; the recipe it picks is meant for many more. A rank
check trains some of the trials again at full length, as the runs of a train queue that name their
trial:

    runs:
      - experiment: rank-check-resnet20_relu-trial14
        sweep: zoo_configs/sweeps/recipe_study_resnet20_relu.yaml   # whose trial this is
        trial: 14
        config: ...
        args: {epochs: 30, ...}

``timm-frelu rank-check QUEUE.yaml`` then puts each trial's proxy objective beside the last epoch of
its full-length run (the sweep's own metric, from the run's ``summary.csv``), ranks both within
each study, and says whether the orders agree. Runs still training show how far they got and are
left out of the ranks.
"""
import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import require_optuna
from ..fileio import write_text_atomic
from ..training.queue import QueueError, load_queue, run_args
from ..training.run_folder import SUMMARY_FILE, evaluated_epochs
from .sweep import SweepError, default_storage, direction, load_sweep

optuna = require_optuna()


def _ranks(values: List[float], maximize: bool) -> List[int]:
    order = sorted(range(len(values)), key=lambda i: values[i], reverse=maximize)
    ranks = [0] * len(values)
    for rank, i in enumerate(order, start=1):
        ranks[i] = rank
    return ranks


def rank_check(queue: Dict[str, Any], studies: Path, runs: Path) -> List[Dict[str, Any]]:
    """One entry a sweep: its rows (trial, proxy value, full-length value or progress, ranks)."""
    checks: Dict[str, Dict[str, Any]] = {}
    for run in queue['runs']:
        if 'sweep' not in run or 'trial' not in run:
            raise QueueError(f"run {run['experiment']}: a rank check run names its sweep file and trial number.")
        spec = load_sweep(Path(run['sweep']))
        if spec['study_name'] not in checks:
            if not (studies / spec['study_name'] / 'study.db').is_file():
                raise SweepError(f"No {studies / spec['study_name'] / 'study.db'}: pass --studies, the folder that holds "
                                 f"the {spec['study_name']} folder (docs/recipe-study for the recipe study).")
            study = optuna.load_study(study_name=spec['study_name'], storage=default_storage(spec, studies))
            checks[spec['study_name']] = dict(spec=spec, study=study, rows=[])
        check = checks[spec['study_name']]
        trial = next((t for t in check['study'].trials if t.number == run['trial']), None)
        if trial is None or trial.value is None:
            raise SweepError(f"{spec['study_name']} has no completed trial {run['trial']} (run {run['experiment']}).")
        epochs = run_args(queue, run, runs).epochs
        done = evaluated_epochs(runs / run['experiment'] / SUMMARY_FILE)
        metric = spec['objective']['metric']
        check['rows'].append(dict(trial=trial.number, experiment=run['experiment'], proxy=trial.value,
                                  proxy_epochs=trial.last_step + 1, epochs=epochs, epochs_done=len(done),
                                  full=done[-1][metric] if len(done) == epochs else None,
                                  so_far=done[-1][metric] if done else None))
    for check in checks.values():
        maximize = direction(check['spec']) == 'maximize'
        finished = [row for row in check['rows'] if row['full'] is not None]
        for row, proxy_rank, full_rank in zip(finished, _ranks([r['proxy'] for r in finished], maximize),
                                              _ranks([r['full'] for r in finished], maximize)):
            row.update(proxy_rank=proxy_rank, full_rank=full_rank)
        check['agree'] = all(r['proxy_rank'] == r['full_rank'] for r in finished) if len(finished) >= 2 else None
    return list(checks.values())


def render(checks: List[Dict[str, Any]], command: str) -> str:
    lines = ['# Rank check', '', f'Written by `{command}`.', '']
    for check in checks:
        spec, rows = check['spec'], check['rows']
        metric = spec['objective']['metric']
        proxy_epochs, epochs = rows[0]['proxy_epochs'], rows[0]['epochs']
        lines += [f"## {spec['study_name']}", '',
                  f'{metric}, last epoch. Ranks are among the runs that finished.', '',
                  f'| trial | proxy ({proxy_epochs} epochs) | rank | {epochs} epochs | rank |',
                  '| --- | --- | --- | --- | --- |']
        for row in sorted(rows, key=lambda r: r['proxy'], reverse=direction(spec) == 'maximize'):
            if row['full'] is not None:
                full = f"{row['full']:.2f}"
            elif row['so_far'] is not None:
                full = f"unfinished: {row['so_far']:.2f} after {row['epochs_done']} of {row['epochs']}"
            else:
                full = 'no results yet'
            lines.append(f"| {row['trial']} | {row['proxy']:.2f} | {row.get('proxy_rank', '-')} | {full} | "
                         f"{row.get('full_rank', '-')} |")
        verdict = {None: 'Fewer than two runs have finished: no order to compare yet.',
                   True: f'The {proxy_epochs}-epoch proxy orders these trials as {epochs} epochs do.',
                   False: f'The {proxy_epochs}-epoch proxy orders these trials differently from {epochs} epochs.'}
        lines += ['', verdict[check['agree']], '']
    return '\n'.join(lines[:-1]) + '\n'


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='timm-frelu rank-check', description=__doc__.splitlines()[0])
    parser.add_argument('queue', help='the train queue of full-length runs (each names its sweep and trial)')
    parser.add_argument('--studies', default='output/sweeps',
                        help="parent folder of the studies' folders, each with its study.db (default: output/sweeps)")
    parser.add_argument('--runs', default=None, help="parent folder of the run folders (default: the queue's output)")
    parser.add_argument('--output', default=None, help='also write the tables to this markdown file')
    args = parser.parse_args(argv)
    queue = load_queue(Path(args.queue))
    runs = Path(args.runs or queue.get('output', 'output/queue'))
    command = ' '.join(['timm-frelu rank-check', args.queue, '--studies', args.studies, '--runs', str(runs)])
    text = render(rank_check(queue, Path(args.studies), runs), command)
    if args.output:
        write_text_atomic(Path(args.output), text)
    print(text, end='')
    return 0


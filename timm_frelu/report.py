"""The comparison report: activations x architectures x datasets, from eval results files.

Input: JSON files written by ``timm_frelu.validate --results-file`` (any models, datasets and
seeds). Output, in one folder:

* ``report.md``: top-1 mean ± std over seeds per architecture, dataset and activation, then a
  detail table with params, MACs and train/inference images/s measured in the same run, and
  the results files behind every cell;
* ``report.csv``: the detail table as CSV;
* ``accuracy.png``: grouped bars with error bars; ``curves.png``: eval top-1 against epoch
  from the training runs' ``summary.csv`` files, where the results name them.

No number is typed in: every accuracy comes from a results file, every cost from a measurement.
"""
import csv
import json
import statistics
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import timm

from .measure import inference_step, interleaved_medians, machine_description, training_step
from .models import ACTS
from .summary import model_summary

ACT_ORDER = {act: i for i, act in enumerate(ACTS)}


def load_results(paths: Iterable[Path]) -> List[Dict[str, Any]]:
    """Results of ``timm_frelu.validate --results-file``, or the ``results.json`` of published
    checkpoints (one result per evaluation in it)."""
    results = []
    for path in paths:
        payload = json.loads(Path(path).read_text())
        for result in payload.get('evaluations', [payload]):
            for key in ('model', 'top1', 'data'):
                if key not in result:
                    raise ValueError(f'{path} is not a results file of timm_frelu.validate (no {key!r}).')
            training = result.get('training') or {}
            if training.get('summary_csv') and not Path(training['summary_csv']).is_absolute():
                training['summary_csv'] = str(Path(path).parent / training['summary_csv'])
            result['results_file'] = str(path)
            results.append(result)
    if not results:
        raise ValueError('No results files given.')
    return results


def _key(result: Dict[str, Any]) -> Tuple[str, str, str]:
    arch, _, act = result['model'].split('.')[0].rpartition('_')
    data = f"{result['data']['dataset']}/{result['data']['split']}"
    return arch, data, act


def measure_speed(model_name: str, batch_size: int = 64, repeats: int = 3) -> Dict[str, float]:
    """Median train-step and inference images/s on this machine, timed in turn after a warm-up."""
    model = timm.create_model(model_name)
    seconds = interleaved_medians({'train_img_per_sec': training_step(model, batch_size),
                                   'infer_img_per_sec': inference_step(model, batch_size)}, repeats)
    return {name: batch_size / s for name, s in seconds.items()}


def build_rows(results: List[Dict[str, Any]], speed: bool = True) -> List[Dict[str, Any]]:
    groups: Dict[Tuple[str, str, str], List[Dict[str, Any]]] = {}
    for result in results:
        groups.setdefault(_key(result), []).append(result)
    rows = []
    speeds: Dict[str, Dict[str, float]] = {}  # per model: one timing for its rows on every test set
    for (arch, data, act), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], ACT_ORDER.get(kv[0][2], 99))):
        top1 = [m['top1'] for m in members]
        name = f'{arch}_{act}'
        cost = model_summary(name)
        row = dict(
            arch=arch, data=data, act=act, n=len(top1),
            top1_mean=statistics.fmean(top1),
            top1_std=statistics.stdev(top1) if len(top1) > 1 else None,
            seeds=' '.join(str((m.get('training') or {}).get('seed', '?')) for m in members),
            params_m=cost['params'] / 1e6, macs_g=cost['macs'] / 1e9,
            results_files=' '.join(m['results_file'] for m in members),
        )
        if speed:
            if name not in speeds:
                speeds[name] = measure_speed(name)
            row.update(speeds[name])
        rows.append(row)
    return rows


def _mean_std(row: Dict[str, Any]) -> str:
    std = f" ± {row['top1_std']:.2f}" if row['top1_std'] is not None else ''
    return f"{row['top1_mean']:.2f}{std} (n={row['n']})"


def markdown(rows: List[Dict[str, Any]]) -> str:
    acts = sorted({r['act'] for r in rows}, key=lambda a: ACT_ORDER.get(a, 99))
    cells = {(r['arch'], r['data'], r['act']): r for r in rows}
    lines = ['Top-1 (%), mean ± std over seeds (n runs):', '',
             '| arch | test data | ' + ' | '.join(acts) + ' |', '| --- | --- | ' + ' | '.join('---' for _ in acts) + ' |']
    for arch, data in sorted({(r['arch'], r['data']) for r in rows}):
        values = [_mean_std(cells[arch, data, act]) if (arch, data, act) in cells else '' for act in acts]
        lines.append(f'| `{arch}` | {data} | ' + ' | '.join(values) + ' |')
    has_speed = 'train_img_per_sec' in rows[0]
    lines += ['', 'Detail' + (f' (images/s in this run, batch 64, each model as it runs by default: {machine_description()}):'
                              if has_speed else ':'), '',
              '| model | test data | top-1 | seeds | params (M) | MACs (G) |' + (' train img/s | infer img/s |' if has_speed else '')
              + ' results files |',
              '| --- | --- | --- | --- | --- | --- |' + (' --- | --- |' if has_speed else '') + ' --- |']
    for r in rows:
        speed = f" {r['train_img_per_sec']:.0f} | {r['infer_img_per_sec']:.0f} |" if has_speed else ''
        files = ', '.join(f'`{f}`' for f in r['results_files'].split())
        lines.append(f"| `{r['arch']}_{r['act']}` | {r['data']} | {_mean_std(r)} | {r['seeds']} | {r['params_m']:.3f} | "
                     f"{r['macs_g']:.3f} |{speed} {files} |")
    return '\n'.join(lines) + '\n'


def _plot_accuracy(rows: List[Dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    datas = sorted({r['data'] for r in rows})
    acts = sorted({r['act'] for r in rows}, key=lambda a: ACT_ORDER.get(a, 99))
    fig, axes = plt.subplots(1, len(datas), figsize=(6 * len(datas), 4), squeeze=False)
    for ax, data in zip(axes[0], datas):
        archs = sorted({r['arch'] for r in rows if r['data'] == data})
        width = 0.8 / len(acts)
        for i, act in enumerate(acts):
            cells = [next((r for r in rows if (r['arch'], r['data'], r['act']) == (a, data, act)), None) for a in archs]
            xs = [j + i * width for j, c in enumerate(cells) if c]
            ax.bar(xs, [c['top1_mean'] for c in cells if c], width, label=act,
                   yerr=[c['top1_std'] or 0 for c in cells if c], capsize=3)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(archs))], archs)
        ax.set_title(data)
        ax.set_ylabel('top-1 (%)')
        lows = [r['top1_mean'] for r in rows if r['data'] == data]
        ax.set_ylim(max(0, min(lows) - 5), min(100, max(lows) + 3))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_curves(results: List[Dict[str, Any]], path: Path) -> bool:
    runs = [r for r in results if (r.get('training') or {}).get('summary_csv') and Path(r['training']['summary_csv']).is_file()]
    if not runs:
        return False
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    panels = sorted({(_key(r)[0], r['training'].get('dataset')) for r in runs})
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    seen = set()
    for ax, (arch, dataset) in zip(axes[0], panels):
        for r in runs:
            if (_key(r)[0], r['training'].get('dataset')) != (arch, dataset) or r['training']['summary_csv'] in seen:
                continue
            seen.add(r['training']['summary_csv'])
            with open(r['training']['summary_csv']) as f:
                rows = [row for row in csv.DictReader(f) if row.get('eval_top1')]
            ax.plot([int(row['epoch']) for row in rows], [float(row['eval_top1']) for row in rows],
                    label=f"{_key(r)[2]} seed {r['training'].get('seed')}")
        ax.set_title(f'{arch} on {dataset} (eval each epoch)')
        ax.set_xlabel('epoch')
        ax.set_ylabel('eval top-1 (%)')
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(result_paths: Iterable[Path], output: Path, speed: bool = True) -> Dict[str, Optional[Path]]:
    results = load_results(result_paths)
    rows = build_rows(results, speed=speed)
    output.mkdir(parents=True, exist_ok=True)
    (output / 'report.md').write_text(markdown(rows))
    with open(output / 'report.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _plot_accuracy(rows, output / 'accuracy.png')
    curves = output / 'curves.png' if _plot_curves(results, output / 'curves.png') else None
    return dict(markdown=output / 'report.md', csv=output / 'report.csv', accuracy=output / 'accuracy.png', curves=curves)

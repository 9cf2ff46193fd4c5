"""The comparison report: activations x architectures x datasets, from eval results files.

Input: JSON files written by ``timm_frelu.validate --results-file`` (any models, datasets and
seeds). Output, in one folder:

* ``report.md``: top-1 mean ± std over seeds per architecture, recipe, test data and
  activation; FReLU minus ReLU with a 95% confidence interval (Welch's t) wherever both have two
  seeds or more; then a detail table with params, MACs and train/inference images/s measured in
  the same run, and the results files behind every cell;
* ``report.csv``: the detail table as CSV;
* ``accuracy.png``: grouped bars with error bars; ``curves.png``: eval top-1 against epoch
  from the training runs' ``summary.csv`` files, where the results name them.

Activations are compared within a recipe only: the recipe is the folder of the training run's
config (``zoo_configs/<recipe>/...``). Flip-TTA results are cells of their own, never averaged with
plain ones. No number is typed in: every accuracy comes from a results file, every cost from a
measurement.
"""
import csv
import json
import statistics
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import timm

from ..models import ACTS
from ..pretrained import ZooName
from ..training.run_folder import evaluated_epochs
from .figures import pyplot
from .measure import inference_step, interleaved_medians, machine_description, training_step
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


def recipe_of(result: Dict[str, Any]) -> str:
    """The recipe a result's weights were trained with: its training config's folder
    (``zoo_configs/<recipe>/<model>_<dataset>.yaml``), or ``-`` for a run without a config."""
    config = (result.get('training') or {}).get('config')
    return Path(config).parent.name if config else '-'


def test_data_of(result: Dict[str, Any]) -> str:
    data = f"{result['data']['dataset']}/{result['data']['split']}"
    return f'{data}, flip-TTA' if result.get('tta_flip') else data


def _key(result: Dict[str, Any]) -> Tuple[str, str, str, str]:
    name = ZooName.parse(result['model'])
    return name.arch, recipe_of(result), test_data_of(result), name.act


def difference_interval(a: List[float], b: List[float], confidence: float = 0.95) -> Dict[str, float]:
    """mean(a) - mean(b) with its confidence interval and p-value from Welch's t-test (unequal
    variances), for two groups of independent runs."""
    from scipy import stats
    test = stats.ttest_ind(a, b, equal_var=False)
    interval = test.confidence_interval(confidence)
    return dict(difference=statistics.fmean(a) - statistics.fmean(b), low=float(interval.low),
                high=float(interval.high), p_value=float(test.pvalue), confidence=confidence)


def measure_speed(model_name: str, batch_size: int = 64, repeats: int = 3) -> Dict[str, float]:
    """Median train-step and inference images/s on this machine, timed in turn after a warm-up."""
    model = timm.create_model(model_name)
    seconds = interleaved_medians({'train_img_per_sec': training_step(model, batch_size),
                                   'infer_img_per_sec': inference_step(model, batch_size)}, repeats)
    return {name: batch_size / s for name, s in seconds.items()}


def build_rows(results: List[Dict[str, Any]], speed: bool = True) -> List[Dict[str, Any]]:
    groups: Dict[Tuple[str, str, str, str], List[Dict[str, Any]]] = {}
    for result in results:
        groups.setdefault(_key(result), []).append(result)
    rows = []
    speeds: Dict[str, Dict[str, float]] = {}  # per model: one timing for its rows on every test set
    for (arch, recipe, data, act), members in sorted(groups.items(), key=lambda kv: (*kv[0][:3], ACT_ORDER.get(kv[0][3], 99))):
        top1 = [m['top1'] for m in members]
        name = f'{arch}_{act}'
        cost = model_summary(name)
        row = dict(
            arch=arch, recipe=recipe, data=data, act=act, n=len(top1),
            top1_mean=statistics.fmean(top1),
            top1_std=statistics.stdev(top1) if len(top1) > 1 else None,
            top1_values=' '.join(map(str, top1)),  # str(float) reads back as the same float
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


def frelu_minus_relu(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """FReLU minus ReLU top-1 per architecture, recipe and test data where both were run: with
    Welch's interval where both have 2+ runs, else the difference alone (no interval exists)."""
    cells = {(r['arch'], r['recipe'], r['data'], r['act']): r for r in rows}
    differences = []
    for (arch, recipe, data, act), frelu in cells.items():
        relu = cells.get((arch, recipe, data, 'relu'))
        if act != 'frelu' or relu is None:
            continue
        values = [[float(v) for v in cell['top1_values'].split()] for cell in (frelu, relu)]
        interval = (difference_interval(*values) if min(frelu['n'], relu['n']) >= 2
                    else dict(difference=statistics.fmean(values[0]) - statistics.fmean(values[1])))
        differences.append(dict(arch=arch, recipe=recipe, data=data, n_frelu=frelu['n'], n_relu=relu['n'], **interval))
    return differences


def markdown(rows: List[Dict[str, Any]]) -> str:
    acts = sorted({r['act'] for r in rows}, key=lambda a: ACT_ORDER.get(a, 99))
    cells = {(r['arch'], r['recipe'], r['data'], r['act']): r for r in rows}
    lines = ['Top-1 (%), mean ± std over seeds (n runs); compare within a recipe only:', '',
             '| arch | recipe | test data | ' + ' | '.join(acts) + ' |',
             '| --- | --- | --- | ' + ' | '.join('---' for _ in acts) + ' |']
    for arch, recipe, data in sorted({(r['arch'], r['recipe'], r['data']) for r in rows}):
        values = [_mean_std(cells[arch, recipe, data, act]) if (arch, recipe, data, act) in cells else '' for act in acts]
        lines.append(f'| `{arch}` | `{recipe}` | {data} | ' + ' | '.join(values) + ' |')
    differences = frelu_minus_relu(rows)
    if differences:
        lines += ['', "FReLU minus ReLU, top-1 points, with the 95% confidence interval of Welch's t-test where both "
                  'have two runs or more. A pair of single runs (n = 1) has no interval: its difference can show a gap '
                  'larger than the spread between seeds, not a smaller one, and says nothing of its sign when it is '
                  'within that spread.', '',
                  '| arch | recipe | test data | FReLU - ReLU | 95% interval | p | runs (FReLU, ReLU) |',
                  '| --- | --- | --- | --- | --- | --- | --- |']
        for d in differences:
            single = 'low' not in d
            interval = 'none: n = 1' if single else f"{d['low']:+.2f} to {d['high']:+.2f}"
            p_value = '-' if single else f"{d['p_value']:.2f}"
            lines.append(f"| `{d['arch']}` | `{d['recipe']}` | {d['data']} | {d['difference']:+.2f} | "
                         f"{interval} | {p_value} | {d['n_frelu']}, {d['n_relu']} |")
    has_speed = 'train_img_per_sec' in rows[0]
    lines += ['', 'Detail' + (f' (images/s in this run, batch 64, each model as it runs by default: {machine_description()}):'
                              if has_speed else ':'), '',
              '| model | recipe | test data | top-1 | seeds | params (M) | MACs (G) |'
              + (' train img/s | infer img/s |' if has_speed else '') + ' results files |',
              '| --- | --- | --- | --- | --- | --- | --- |' + (' --- | --- |' if has_speed else '') + ' --- |']
    for r in rows:
        speed = f" {r['train_img_per_sec']:.0f} | {r['infer_img_per_sec']:.0f} |" if has_speed else ''
        files = ', '.join(f'`{f}`' for f in r['results_files'].split())
        lines.append(f"| `{r['arch']}_{r['act']}` | `{r['recipe']}` | {r['data']} | {_mean_std(r)} | {r['seeds']} | {r['params_m']:.3f} | "
                     f"{r['macs_g']:.3f} |{speed} {files} |")
    return '\n'.join(lines) + '\n'


def _plot_accuracy(rows: List[Dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    datas = sorted({r['data'] for r in rows})
    acts = sorted({r['act'] for r in rows}, key=lambda a: ACT_ORDER.get(a, 99))
    fig, axes = plt.subplots(1, len(datas), figsize=(6 * len(datas), 4), squeeze=False)
    for ax, data in zip(axes[0], datas):
        groups = sorted({(r['arch'], r['recipe']) for r in rows if r['data'] == data})
        width = 0.8 / len(acts)
        for i, act in enumerate(acts):
            cells = [next((r for r in rows if (r['arch'], r['recipe'], r['data'], r['act']) == (*group, data, act)), None)
                     for group in groups]
            xs = [j + i * width for j, c in enumerate(cells) if c]
            ax.bar(xs, [c['top1_mean'] for c in cells if c], width, label=act,
                   yerr=[c['top1_std'] or 0 for c in cells if c], capsize=3)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], [f'{arch}\n{recipe}' for arch, recipe in groups])
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
    plt = pyplot()
    def panel(result: Dict[str, Any]) -> Tuple[str, str, str]:
        arch, recipe, _, _ = _key(result)
        return arch, recipe, result['training'].get('dataset')

    panels = sorted({panel(r) for r in runs})
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    seen = set()
    for ax, (arch, recipe, dataset) in zip(axes[0], panels):
        for r in runs:
            if panel(r) != (arch, recipe, dataset) or r['training']['summary_csv'] in seen:
                continue
            seen.add(r['training']['summary_csv'])
            epochs = evaluated_epochs(r['training']['summary_csv'])
            ax.plot([int(e['epoch']) for e in epochs], [e['eval_top1'] for e in epochs],
                    label=f"{_key(r)[3]} seed {r['training'].get('seed')}")
        ax.set_title(f'{arch}, recipe {recipe}, on {dataset} (eval each epoch)')
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

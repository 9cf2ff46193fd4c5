"""What the project's figures share: matplotlib without a display, and a training run's learning
curve drawn from the ``summary.csv`` that timm's ``update_summary`` writes, one row per epoch."""
from pathlib import Path

from ..training.run_folder import evaluated_epochs


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend: figures are files, and training machines have no display."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def plot_learning_curve(summary_csv: Path, path: Path, title: str, eval_label: str) -> None:
    """Train and eval loss (left) and eval top-1 (right) against epoch."""
    epochs = evaluated_epochs(summary_csv)
    if not epochs:
        raise ValueError(f'{summary_csv} has no evaluated epoch to plot.')
    plt = pyplot()
    x = [int(e['epoch']) + 1 for e in epochs]  # timm counts epochs from 0; an axis counts them done
    fig, (loss_ax, top1_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss_ax.plot(x, [e['train_loss'] for e in epochs], label='train (augmented batches)')
    loss_ax.plot(x, [e['eval_loss'] for e in epochs], label='eval')
    loss_ax.set_ylabel('loss')
    loss_ax.set_title('loss', fontsize=10)
    loss_ax.legend(fontsize=8)
    top1_ax.plot(x, [e['eval_top1'] for e in epochs], color='C1')
    top1_ax.set_ylabel('top-1 (%)')
    top1_ax.set_title(f'eval: {eval_label}', fontsize=10)
    best = max(e['eval_top1'] for e in epochs)
    top1_ax.set_ylim(max(0.0, best - 25), min(100.0, best + 2))
    for ax in (loss_ax, top1_ax):
        ax.set_xlabel('epoch')
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""`pgen train-generator`: fit a generator on a store slice, calibrate its return condition, register a version.

Reads the slice (`pgen.evaluation.training_data.open_slice`: one architecture, or with
`generator=family` every architecture of its family), fits it (`pgen.generator.fit.fit`, TensorBoard
events), measures the calibration curve (`pgen.evaluation.calibration`), registers the version in
the store (`pgen.generator.versions.save_generator`) and writes the loss curve and calibration PNGs
to `<out_dir>/<name>/<version>/`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from pgen.config import TrainGeneratorConfig
from pgen.evaluation.calibration import calibrate, check_calibration_settings, plot_calibration
from pgen.evaluation.training_data import open_slice
from pgen.generator.fit import fit
from pgen.generator.sample import Generator
from pgen.generator.versions import save_generator
from pgen.store import CheckpointStore, open_store
from pgen.util.plots import plot_curves
from pgen.util.progress import log


def train_generator(cfg: TrainGeneratorConfig, store: CheckpointStore | None = None,
                    warm_start: Generator | None = None, promoted: bool = True) -> Generator:
    """Fit on the store's slice for (env, generator.group, policy), write TensorBoard events and the
    loss curve to `<out_dir>/<name>/<version>/`, register the version; returns the generator.

    `warm_start` (a previous version) and `promoted` (False: registered but not what `name` means
    until `promote` is called — `pgen loop`'s gate decides) are `fit`'s and `save_generator`'s."""
    import torch
    from tensorboardX import SummaryWriter

    store = store or open_store(cfg.store)
    torch.set_num_threads(cfg.torch_threads)
    check_calibration_settings(cfg.generator.calibration)
    sl = open_slice(store, cfg.env, cfg.policy, cfg.generator)
    name = sl.name
    out = Path(cfg.out_dir).expanduser().resolve() / name
    scratch = out / f"unregistered-{time.strftime('%Y%m%dT%H%M%S')}"
    writer = SummaryWriter(str(scratch / "tensorboard"))

    def callback(metrics: dict[str, float], _save: Callable[[Path], None]) -> None:
        for k, v in metrics.items():
            if k != "epoch":
                writer.add_scalar(f"generator/{k}", v, metrics["epoch"])

    result = fit(cfg.generator, sl.data, sl.spec, cfg.seed, callback, label=f"train-generator {name}",
                 warm_start=warm_start, probes=sl.probes)
    writer.close()
    gen = result.generator
    gen.info.update(sl.info(cfg.seed, result.train_runs, result.val_runs))
    curves = calibrate(gen, sl.env, sl.others, sl.data, cfg.generator.calibration, result.train_runs,
                       label=f"train-generator {name}: calibration")
    final = result.history[-1]
    version = save_generator(store, gen, {"final": final, "history": result.history, "behaviour": result.behaviour},
                             promoted=promoted)
    folder = out / version
    if folder.exists():  # the same name and version in another store
        folder = out / f"{version}-{scratch.name.split('-', 1)[1]}"
    scratch.rename(folder)
    png = plot_curves({k: ([h["epoch"] for h in result.history], [h.get(k, float("nan")) for h in result.history])
                       for k in ("train_recon", "val_recon")}, folder / "loss.png",
                      f"{name}@{version}: reconstruction loss (standardised params)", xlabel="epoch",
                      ylabel="mean squared error", window=1)
    curve = (f"; calibration {plot_calibration(curves, folder / 'calibration.png', f'{name}@{version}: the return condition')}"
             if curves else "")
    log.info(f"registered {name}@{version}{'' if promoted else ' (not promoted)'} in {store.uri}:"
             f" val recon {final.get('val_recon', float('nan')):.4f};"
             f" loss curve {png}{curve}; TensorBoard: tensorboard --logdir {folder / 'tensorboard'}")
    return gen


def main(cfg: TrainGeneratorConfig) -> None:
    train_generator(cfg)

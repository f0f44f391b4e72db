"""Digits CNN training speed: our trainer against a plain PyTorch loop and Keras 3 (torch
backend), on the same data and recipe, in one process.

    make bench-digits    # or: .venv/bin/python bench/digits_bench.py --repeats 5 --threads 1

Data: `builtin:digits` through our `prepare` (pixels / 16, the spec's seeded 80/20 split); the
plain loop and Keras get exactly those training and validation arrays. Recipe: the shipped
models/digits/model.yaml: conv2d 16 3x3 same, batch normalization, max pooling 2,
conv2d 32 3x3 relu, flatten, dropout 0.25, dense 10 softmax; Adam 1e-3, batch 32, shuffled,
sparse categorical crossentropy, accuracy, validation after every epoch.
- ours: `training.trainer.fit` on that spec, exactly as `python -m training` fits (no export);
- plain: the same network by hand in torch (NCHW, torch's default init, logits with
  `F.cross_entropy`), a minimal loop that logs nothing per step;
- keras: `keras.Sequential` of the same layers, `model.fit(..., verbose=0)`, KERAS_BACKEND=torch;
  left out, with one line saying so, when keras is not installed (it is not a dependency).
An epoch is timed from its start to the end of its validation pass: our Progress's
`epoch_begin`/`epoch_end`, a Keras callback's `on_epoch_begin`/`on_epoch_end`, and around the
loop's epoch. Each trainer runs once untimed (one epoch), then `--repeats` times, interleaved,
under each `torch.set_num_threads` setting. Results replace the training-digits section of
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import machine, write_section
from training import trainer
from training.progress import Progress
from training.trainer import Run, fit, prepare

SPEC_FOLDER = Path(__file__).resolve().parent.parent / "models" / "digits"
"""The shipped digits model's spec: its recipe, with epochs set by --epochs."""
BATCH, LEARNING_RATE = 32, 1e-3


class EpochClock:
    """Wall and CPU seconds of each epoch (CPU: this process's, all threads; with one torch
    thread it is the work done, whatever else the machine runs)."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._start = (0.0, 0.0)

    def begin(self) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def end(self) -> None:
        self.wall.append(time.perf_counter() - self._start[0])
        self.cpu.append(time.process_time() - self._start[1])


@dataclass
class Outcome:
    clock: EpochClock
    val_accuracy: float

    @property
    def epoch_seconds(self) -> list[float]:
        return self.clock.wall


Trainer = Callable[[Run, int], Outcome]
"""(prepared data, epochs) -> per-epoch seconds and final validation accuracy."""


def ours(run: Run, epochs: int) -> Outcome:
    """Our `fit`, with epochs timed by the Progress that `fit` creates (a subclass that notes
    the time of `epoch_begin` and `epoch_end`; it prints nothing at verbose 0)."""
    clock = EpochClock()

    class Timed(Progress):
        def epoch_begin(self, epoch: int) -> None:
            clock.begin()
            super().epoch_begin(epoch)

        def epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
            clock.end()
            super().epoch_end(epoch, logs)

    config = run.fit_config.model_copy(update={"epochs": epochs})
    with mock.patch.object(trainer, "Progress", Timed):
        fitted = fit(Run(run.spec, run.spec_file, config, run.classes, run.train_set, run.val_set))
    return Outcome(clock, fitted.history.epochs[-1]["val_accuracy"])


class PlainCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.norm = nn.BatchNorm2d(16, eps=1e-3, momentum=0.01)  # Keras's defaults
        self.conv2 = nn.Conv2d(16, 32, 3)
        self.dropout = nn.Dropout(0.25)
        self.dense = nn.Linear(32 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.norm(self.conv1(x)), 2)
        x = F.relu(self.conv2(x))
        logits: torch.Tensor = self.dense(self.dropout(x.flatten(1)))
        return logits


def images(features: np.ndarray, channels_first: bool) -> np.ndarray:
    x = features.astype(np.float32).reshape(-1, 8, 8, 1)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if channels_first else x


def plain(run: Run, epochs: int) -> Outcome:
    torch.manual_seed(run.seed)
    x = torch.as_tensor(images(run.train_set.features, channels_first=True))
    y = torch.as_tensor(run.train_set.labels, dtype=torch.int64)
    x_val = torch.as_tensor(images(run.val_set.features, channels_first=True))
    y_val = torch.as_tensor(run.val_set.labels, dtype=torch.int64)
    model = PlainCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    generator = torch.Generator().manual_seed(run.seed)
    clock, accuracy = EpochClock(), 0.0
    for _ in range(epochs):
        clock.begin()
        model.train()
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), BATCH):
            index = order[i : i + BATCH]
            optimizer.zero_grad()
            F.cross_entropy(model(x[index]), y[index]).backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(x_val).argmax(1) == y_val).float().mean().item()
        clock.end()
    return Outcome(clock, accuracy)


def keras_trainer() -> tuple[Trainer, str] | None:
    """Keras 3 on the torch backend, or None (and one line) when keras is not installed."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        print("keras is not installed (pip install keras): Keras 3 is left out", flush=True)
        return None
    if keras.backend.backend() != "torch":
        sys.exit(f"keras runs on {keras.backend.backend()}: set KERAS_BACKEND=torch")
    layers = keras.layers

    def train_keras(run: Run, epochs: int) -> Outcome:
        keras.utils.set_random_seed(run.seed)
        model = keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                layers.Conv2D(16, 3, padding="same"),
                layers.BatchNormalization(),
                layers.MaxPooling2D(2),
                layers.Conv2D(32, 3, activation="relu"),
                layers.Flatten(),
                layers.Dropout(0.25),
                layers.Dense(10, activation="softmax"),
            ]
        )
        model.compile(
            optimizer=keras.optimizers.Adam(LEARNING_RATE),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        clock = EpochClock()
        callback = keras.callbacks.LambdaCallback(
            on_epoch_begin=lambda epoch, logs: clock.begin(),
            on_epoch_end=lambda epoch, logs: clock.end(),
        )
        history = model.fit(
            images(run.train_set.features, channels_first=False),
            run.train_set.labels,
            batch_size=BATCH,
            epochs=epochs,
            validation_data=(
                images(run.val_set.features, channels_first=False),
                run.val_set.labels,
            ),
            shuffle=True,
            verbose=0,
            callbacks=[callback],
        )
        return Outcome(clock, float(history.history["val_accuracy"][-1]))

    return train_keras, keras.__version__


@dataclass
class Summary:
    first: float
    later: float
    later_cpu: float
    repeat_medians: list[float]
    """Per repeat, the median of its later epochs (in the order the repeats ran)."""
    val_accuracy: float
    accuracy_spread: tuple[float, float]


def summarise(outcomes: list[Outcome]) -> Summary:
    later = [o.epoch_seconds[1:] for o in outcomes]
    medians = [statistics.median(e) for e in later]
    accuracies = [o.val_accuracy for o in outcomes]
    return Summary(
        first=statistics.median(o.epoch_seconds[0] for o in outcomes),
        later=statistics.median(s for e in later for s in e),
        later_cpu=statistics.median(s for o in outcomes for s in o.clock.cpu[1:]),
        repeat_medians=medians,
        val_accuracy=statistics.median(accuracies),
        accuracy_spread=(min(accuracies), max(accuracies)),
    )


def bench(
    run: Run, trainers: dict[str, Trainer], threads: int, epochs: int, repeats: int
) -> dict[str, Summary]:
    torch.set_num_threads(threads)
    for train in trainers.values():
        train(run, 1)  # untimed: first-call costs (kernels, Keras's tracing of its step)
    outcomes: dict[str, list[Outcome]] = {name: [] for name in trainers}
    for repeat in range(repeats):
        for name, train in trainers.items():  # interleaved, so that noise hits all alike
            outcomes[name].append(outcome := train(run, epochs))
            later = statistics.median(outcome.epoch_seconds[1:])
            print(
                f"threads {threads} repeat {repeat + 1} {name:<6} "
                f"first {outcome.epoch_seconds[0]:.3f}s later {later:.3f}s/epoch "
                f"val_accuracy {outcome.val_accuracy:.3f}",
                flush=True,
            )
    return {name: summarise(o) for name, o in outcomes.items()}


def report(
    results: dict[int, dict[str, Summary]],
    run: Run,
    labels: dict[str, str],
    *,
    command: str,
    epochs: int,
    repeats: int,
    keras_version: str | None,
    note: str,
) -> str:
    lines = [
        "| threads | trainer | s/epoch, epochs 2+ (median) | per-repeat medians | CPU s/epoch "
        "| first epoch s | val_accuracy | ours ÷ this |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for threads, by_trainer in results.items():
        ours = by_trainer["ours"].repeat_medians
        for name, s in by_trainer.items():
            low, high = min(s.repeat_medians), max(s.repeat_medians)
            ratio = statistics.median(
                a / b for a, b in zip(ours, s.repeat_medians, strict=True)
            )  # repeat by repeat: the runs beside each other shared the machine's load
            acc_low, acc_high = s.accuracy_spread
            accuracy = f"{s.val_accuracy:.3f}" + (
                f" ({acc_low:.3f}–{acc_high:.3f})" if acc_high - acc_low > 5e-4 else ""
            )
            lines.append(
                f"| {threads} | {labels[name]} | {s.later:.3f} | {low:.3f}–{high:.3f} "
                f"| {s.later_cpu:.3f} | {s.first:.3f} | {accuracy} | {ratio:.2f}× |"
            )
    keras_line = (
        f"Keras {keras_version} on the torch backend (`KERAS_BACKEND=torch`, eager, its default)."
        if keras_version
        else "Keras was not installed: only ours and the plain loop ran."
    )
    prose = f"""`{command}` on {datetime.now(UTC):%Y-%m-%d}: {machine()}, torch {torch.__version__}.
{note} {keras_line} `builtin:digits`: {len(run.train_set)} training and {len(run.val_set)}
validation rows (pixels / 16, the spec's seeded split), the same arrays for every trainer.
Recipe: conv2d 16 3x3 same, batch normalization, max pooling 2, conv2d 32 3x3 relu, flatten,
dropout 0.25, dense 10 softmax; Adam 1e-3, batch 32 ({-(-len(run.train_set) // BATCH)} steps),
sparse categorical crossentropy, {epochs} epochs, validation after each. An epoch is timed from
its start to the end of its validation pass (our Progress's epoch_begin/epoch_end, a Keras
callback's on_epoch_begin/on_epoch_end, around the plain loop's epoch); one untimed 1-epoch run
of each trainer first, then {repeats} runs of each, interleaved, per `torch.set_num_threads`
setting. *s/epoch* pools epochs 2-{epochs} of every run; *first epoch* is the median over runs;
*val_accuracy* the median (and range) of the last epoch's. The plain loop uses torch's default
initialisation and logits with `F.cross_entropy`, and computes no running loss or accuracy per
step; ours and Keras log both every step. *CPU s/epoch* is the process's CPU time over the same
epochs (median): with one torch thread, the work done whatever else the machine runs.
*per-repeat medians* is the range of each run's median
epoch; *ours ÷ this* is the median, over repeats, of ours' median epoch over this trainer's in the
same repeat (they ran one after the other, under the same load); above 1 means ours is slower."""
    return f"""## Training: the digits CNN, ours against a plain PyTorch loop and Keras 3

{textwrap.fill(" ".join(prose.split()), 100, break_on_hyphens=False)}

{chr(10).join(lines)}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per trainer")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1],
        help="torch.set_num_threads settings, each run in turn (2 on a busy 2-core machine "
        "measures the contention: its threads wait for each other, epochs take seconds)",
    )
    parser.add_argument("--note", default="", help="a sentence for the report (shared machine)")
    parser.add_argument("--no-write", action="store_true", help="print, leave RESULTS.md alone")
    args = parser.parse_args()
    trainers: dict[str, Trainer] = {"ours": ours, "plain": plain}
    labels = {"ours": "ours (`training.trainer.fit`)", "plain": "plain PyTorch loop"}
    keras = keras_trainer()
    if keras is not None:
        trainers["keras"] = keras[0]
        labels["keras"] = "Keras 3, torch backend"
    load_before = os.getloadavg()[0]
    run = prepare(SPEC_FOLDER, epochs=args.epochs, verbose=0)
    results = {
        threads: bench(run, trainers, threads, args.epochs, args.repeats)
        for threads in args.threads
    }
    command = (
        f"python bench/digits_bench.py --repeats {args.repeats} --epochs {args.epochs} "
        f"--threads {' '.join(map(str, args.threads))}"
    )
    text = report(
        results,
        run,
        labels,
        command=command,
        epochs=args.epochs,
        repeats=args.repeats,
        keras_version=keras[1] if keras else None,
        note=f"Load average (1 min, every process on the machine) "
        f"{load_before:.2f} before the run and {os.getloadavg()[0]:.2f} after. {args.note}",
    )
    print(text)
    if not args.no_write:
        write_section("training-digits", text)


if __name__ == "__main__":
    main()

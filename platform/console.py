"""What a sweep or a run prints: one line per epoch per trial, labelled with its setting, and a
progress line; Ray's own logs only with `-v`.

Library code logs to the `dncml` logger; the command line decides what reaches the terminal:
`-q` the summary only, default the epochs and the progress, `-v` also Ray's logs (its workers'
output, Train's reports, Tune's tables).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time

from dncml.analysis.schema import COMPLETED
from dncml.trainers.metric_keys import SELECTION_METRIC

log = logging.getLogger("dncml")
summary = logging.getLogger("dncml.summary")  # the outcome: shown even with -q

QUIET, NORMAL, VERBOSE = 0, 1, 2


def setup(verbosity: int = NORMAL) -> None:
    """Route the `dncml` logger to stdout as plain lines and quiet Ray unless `-v`."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.WARNING if verbosity == QUIET else logging.INFO)
    summary.setLevel(logging.INFO)
    if verbosity < VERBOSE:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's boxes and tables off (verbose=0)
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        # a failed trial: dncml prints its one-line reason; the traceback stays in the trial's
        # error.txt (Tune's own switch; -v prints it as well)
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
        for name in ("ray", "ray.tune", "ray.train", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
    os.environ["DNCML_VERBOSITY"] = str(verbosity)


# Ray's own switch that makes a local node's address the loopback (it is read when ray is
# imported): set, a Ray started here binds 127.0.0.1 only; `ray.init(_node_ip_address=
# "127.0.0.1")` alone is turned back into the machine's address. Set by the command line before
# it imports ray, for the commands that start a private local Ray (never for a cluster: `ray
# start` refuses it, and a driver on a cluster must be reachable from the other nodes).
LOOPBACK_RAY_ENV = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

_received: dict[str, int] = {}


def handle_sigterm(graceful: bool = False) -> None:
    """SIGTERM (what `kill`, systemd, Kubernetes and batch schedulers send) as Ctrl-C: a
    KeyboardInterrupt, so that the run records `interrupted` and says how to resume; with
    `graceful` (a sweep's driver, around `tuner.fit`) it goes to whatever handles SIGINT right
    now: Tune's graceful stop. Installed by the command line and again after `ray.init`, whose own
    handler exits at once."""
    if threading.current_thread() is not threading.main_thread():
        return

    def on_sigterm(signum, frame):
        _received["signal"] = signum
        current = signal.getsignal(signal.SIGINT)
        if graceful and callable(current) and current is not on_sigterm:
            current(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)


def interrupted_exit_code() -> int:
    """What a shell reports for a process ended by the signal it got: 143 (SIGTERM), 130 (Ctrl-C)."""
    return 128 + _received.get("signal", signal.SIGINT)


def configured() -> bool:
    """Whether the command line set the output up (`setup`); from Python (a notebook, a
    script) it has not, and progress shows as tqdm bars instead of log lines."""
    return bool(log.handlers)


class Bar:
    """A tqdm.auto progress bar (a widget in Jupyter, text in a terminal) when dncml runs from
    Python without the command line's logging set-up; nothing otherwise (the CLI prints lines)."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0):
        self.bar = None
        if not configured():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True)

    def __getstate__(self) -> dict:
        return {"bar": None}  # Tune pickles its callbacks (with the sweep's state): the bar stays here

    def update(self, count: int = 1, **postfix) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix({k: v for k, v in postfix.items() if v is not None}, refresh=False)
            self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def timeline(event: str, trial: str = "") -> None:
    """With DNCML_TIMELINE=FILE, append `unix-time pid trial event` for the moments of a trial
    (trial start, fit, worker start, each report, teardown): where Ray's fixed cost per trial
    goes. `tests/benchmarks/bench_platform.py` sets it and prints the breakdown. Every process of
    a node appends to the same file (lines below PIPE_BUF are written whole)."""
    path = os.environ.get("DNCML_TIMELINE")
    if path:
        with open(path, "a") as out:
            out.write(f"{time.time():.3f} {os.getpid()} {trial or '-'} {event}\n")


def verbosity() -> int:
    return int(os.environ.get("DNCML_VERBOSITY", NORMAL))


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def epoch_line(label: str, metrics: dict, metric: str = SELECTION_METRIC) -> str:
    """`[grouping=kmeans seed=1] epoch 3/8 divide K=8 loss 0.1234 val R@1 0.9512 (best 0.9561) 12.3s`."""
    parts = [
        f"[{label}]",
        f"epoch {int(metrics['epoch']) + 1}/{int(metrics['total_epochs'])}",
        str(metrics.get("phase", "")),
        f"K={metrics.get('active_learners')}",
        f"loss {metrics.get('loss', math.nan):.4f}",
    ]
    value, best = metrics.get(metric), metrics.get(f"best_{metric}")
    if isinstance(value, (int, float)) and value == value:
        parts.append(f"{metric} {value:.4f}")
    if isinstance(best, (int, float)) and math.isfinite(best):
        parts.append(f"(best {best:.4f})")
    if metrics.get("epoch_seconds") is not None:
        parts.append(f"{metrics['epoch_seconds']:.1f}s")
    return " ".join(parts)


class Progress:
    """Done / running / pending, elapsed and an ETA from the epochs trained so far."""

    def __init__(self, total_trials: int, epochs_per_trial: int, concurrency: int):
        self.total, self.epochs_per_trial, self.concurrency = total_trials, epochs_per_trial, max(1, concurrency)
        self.started = time.time()
        self.finished: dict[str, str] = {}  # trial id -> completed / failed / pruned
        self.epochs: dict[str, int] = {}  # trial id -> epochs reported
        self.last_line = 0.0

    def line(self) -> str:
        elapsed = time.time() - self.started
        running = len(set(self.epochs) - set(self.finished))
        pending = max(0, self.total - len(self.finished) - running)
        counts = {s: list(self.finished.values()).count(s) for s in dict.fromkeys(self.finished.values())}
        done = sum(self.epochs.values())
        remaining = (
            (self.total * self.epochs_per_trial)
            - done
            - sum(self.epochs_per_trial - self.epochs.get(t, 0) for t, s in self.finished.items() if s != COMPLETED)
        )
        eta = elapsed / done * remaining if done else math.nan
        state = ", ".join(f"{n} {s}" for s, n in counts.items()) or "0 done"
        return (
            f"progress: {len(self.finished)}/{self.total} trials done ({state}), {running} running, {pending} pending; "
            f"elapsed {duration(elapsed)}, ETA {duration(eta)}"
        )

    def due(self, every: float = 60.0) -> bool:
        if time.time() - self.last_line < every:
            return False
        self.last_line = time.time()
        return True


def tail_epochs(store, sweep: str, trial_id: str, label: str, metric: str, stop: threading.Event) -> threading.Thread:
    """Log each new epoch row of one run as the store receives it (for `dncml train` on Ray, whose
    epochs are written by the Train controller, not in this process)."""

    def follow():
        seen = set()
        while True:
            finished = stop.wait(2.0)
            for row in store.epoch_rows(sweep, trial_id):
                if row["epoch"] not in seen:
                    seen.add(row["epoch"])
                    log.info(epoch_line(label, row, metric))
            if finished:
                return

    thread = threading.Thread(target=follow, name=f"epochs of {trial_id}", daemon=True)
    thread.start()
    return thread

"""Rich tables for humans (stderr). Machine output never goes through here."""

from __future__ import annotations

from rich.console import Console, Group
from rich.table import Table


def chains_table(report: dict) -> Table:
    t = Table(title=f"{report['path']}  ({report['parameters']:,} parameters, {report['dtype']})")
    for col in ("chain", "query heads", "KV heads", "FFN units", "width", "parameters", "sub-model parameters"):
        t.add_column(col, justify="right")
    for c in report["chains"]:
        t.add_row(
            str(c["chain"]),
            str(c["heads"]),
            str(c["kv_heads"]),
            str(c["ffn"]),
            str(c["width"]),
            f"{c['parameters']:,}",
            f"{c['submodel_parameters']:,}",
        )
    return t


def render(report: dict, console: Console) -> None:
    cfg = report["config"]
    config = Table(title="config", show_header=False)
    for k, v in cfg.items():
        if k not in ("heads", "kv_heads", "ffn"):
            config.add_row(k, str(v))
    history = Table(title="history")
    for col in ("time", "command", "arguments"):
        history.add_column(col)
    for h in report["history"]:
        args = ", ".join(f"{k}={v}" for k, v in h.get("args", {}).items() if v is not None)
        history.add_row(h.get("time", "?"), h.get("command", "?"), args)
    console.print(Group(chains_table(report), config, history))
    if report["verified"]:
        console.print(f"verified: {len(report['digests'])} files match the sha256 recorded in digests.json")


def eval_table(report: dict) -> Table:
    t = Table(
        title=f"{report['checkpoint']}: {report['tokens']:,} tokens"
        + (f", {report['tokens_per_second']:,.0f} tokens/s" if report.get("tokens_per_second") else "")
    )
    for col in ("chains", "loss", "ppl", "bits/byte"):
        t.add_column(col, justify="right")
    for r in report["results"]:
        t.add_row(str(r["chains"]), f"{r['loss']:.4f}", f"{r['ppl']:.2f}", f"{r['bits_per_byte']:.4f}")
    return t


def tasks_table(report: dict) -> Table:
    """lm-eval tasks x chain counts: one row per task and metric, "value ± standard error" per chain count."""
    from colm_core.lm_eval_adapter import results_table

    t = Table(title=f"{report['checkpoint']}: lm-evaluation-harness")
    for col in ("task", "metric", *(f"{k} chains" for k in report["chains"])):
        t.add_column(col, justify="left" if col in ("task", "metric") else "right")
    for row in results_table(report):
        cells = []
        for k in report["chains"]:
            value, stderr = row["values"].get(str(k), (None, None))
            cells.append("-" if value is None else score(value) + ("" if stderr is None else f" ± {score(stderr)}"))
        metric, _, where = row["metric"].partition(",")
        t.add_row(row["task"], metric if where == "none" else f"{metric} ({where})", *cells)
    return t


def score(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.4g}"  # perplexities of weak models are huge


class TrainProgress:
    """Renders colm_core.train's events, then a summary: on a terminal a progress bar (step, loss per
    scale, tokens/s, ETA); elsewhere (a pipe, a log file) one plain line per logged step."""

    def __init__(self, console: Console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = console
        self.progress = (
            Progress(
                TextColumn("train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            if console.is_terminal
            else None
        )
        self.task = None
        self.steps = None

    def __call__(self, kind: str, record: dict) -> None:
        if kind == "start":
            if record["resumed_from"]:
                self.console.print(f"resuming from {record['resumed_from']}")
            self.steps = record["steps"]
            if self.progress is not None:
                self.progress.start()
                self.task = self.progress.add_task("train", total=self.steps, completed=record["start_step"], info="")
        elif kind == "log":
            losses = " ".join(f"L{k}={v:.3f}" for k, v in record["loss"].items())
            info = f"{losses}  {record['tokens_per_second']:,.0f} tok/s"
            if self.task is not None:
                self.progress.update(self.task, completed=record["step"], info=info)
            else:
                self.console.print(f"step {record['step']}/{self.steps}: {info}")
        elif kind == "val":
            losses = " ".join(f"{k}: {v:.4f}" for k, v in record["val_loss"].items())
            self.console.print(f"step {record['step']}: validation loss per scale  {losses}")
        elif kind == "save":
            self.console.print(f"step {record['step']}: saved {record['path']}")
        elif kind == "end":
            self.stop()
            self.console.print(train_summary(record))

    def stop(self) -> None:
        if self.task is not None:
            self.progress.stop()
            self.task = None


def train_summary(record: dict) -> Table:
    t = Table(
        title=f"{record['path']}: {record['steps']} steps, {record['tokens']:,} tokens in "
        f"{record['seconds']:.1f} s on {record['processes']} process(es)"
    )
    for col in ("chains", "train loss", "validation loss"):
        t.add_column(col, justify="right")
    for k, val in record["val_loss"].items():
        train = record["loss"].get(k)
        t.add_row(k, "-" if train is None else f"{train:.4f}", f"{val:.4f}")
    return t

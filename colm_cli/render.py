"""Rich tables for humans (stderr). Machine output never goes through here."""

from __future__ import annotations

from rich.console import Console, Group
from rich.table import Table


def chains_table(report: dict) -> Table:
    t = Table(title=f"{report['path']}  ({report['parameters']:,} parameters, {report['dtype']})")
    for col in ("chain", "query heads", "KV heads", "FFN units", "width", "parameters", "sub-model parameters"):
        t.add_column(col, justify="right")
    for c in report["chains"]:
        t.add_row(str(c["chain"]), str(c["heads"]), str(c["kv_heads"]), str(c["ffn"]), str(c["width"]),
                  f"{c['parameters']:,}", f"{c['submodel_parameters']:,}")
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


def eval_table(report: dict) -> Table:
    t = Table(title=f"{report['checkpoint']}: {report['tokens']:,} tokens"
                    + (f", {report['tokens_per_second']:,.0f} tokens/s" if report.get("tokens_per_second") else ""))
    for col in ("chains", "loss", "ppl", "bits/byte"):
        t.add_column(col, justify="right")
    for r in report["results"]:
        t.add_row(str(r["chains"]), f"{r['loss']:.4f}", f"{r['ppl']:.2f}", f"{r['bits_per_byte']:.4f}")
    return t

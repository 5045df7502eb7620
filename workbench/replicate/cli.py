"""``workbench replicate``: every phenomenon on several models, one report.

    workbench replicate --models smollm2-135m gemma-3-270m --controls random-init
    workbench replicate --models ./ckpt-1000 ./ckpt-2000 --phenomena ioi induction --seeds 3
    workbench replicate --models smollm2-135m --scheduler tcp://10.0.0.5:8786 --out reports/rep

Writes ``OUT/replication.html``, ``.csv``, ``.json`` and ``.png`` (default ``OUT``:
``reports/replication``); finished jobs are kept in ``OUT/store`` and never computed twice.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "main"]


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``replicate`` subcommand to an argparse subparsers object."""
    rep = sub.add_parser("replicate", help="run every phenomenon on several models: one cross-model report")
    rep.add_argument("--models", nargs="+", required=True, metavar="SOURCE",
                     help="offline names, checkpoint folders, .gguf files or hub names")
    rep.add_argument("--phenomena", nargs="+", default=None, metavar="NAME",
                     help="registered phenomena (default: all)")
    rep.add_argument("--controls", nargs="+", default=[], metavar="CONTROL",
                     help="random-init and/or placebo: extra columns beside each model")
    rep.add_argument("--seeds", type=int, default=1, help="run seeds 0..N-1 (default 1)")
    rep.add_argument("--device", default=None, help="cpu (default), cuda, cuda:N, mps or auto")
    rep.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    rep.add_argument("--out", default="reports/replication", help="report folder and its store")
    rep.add_argument("--scheduler", default=None, metavar="ADDRESS",
                     help="a Dask scheduler, tcp://host:port (default: run here)")
    rep.add_argument("--jobs", default="1", metavar="N",
                     help="here: jobs at once, an int or 'auto' (default 1: one after another)")
    return rep


def main(args: argparse.Namespace) -> int:
    """Run the replication; exit status 1 when a job failed (the report lists it)."""
    from workbench.replicate.api import replicate

    jobs: int | str = args.jobs if args.jobs == "auto" else int(args.jobs) if args.jobs.isdigit() else args.jobs
    try:
        rep = replicate(args.models, args.phenomena, controls=args.controls, seeds=args.seeds,
                        device=args.device, dtype=args.dtype, out=args.out, scheduler=args.scheduler,
                        jobs=jobs, progress=True)
    except ValueError as e:
        raise SystemExit(f"workbench replicate: {e}") from None
    print(f"{rep.computed} jobs computed, {rep.reused} reused, {rep.failed} failed, in {rep.seconds:.0f} s "
          f"-> {args.out}/replication.html")
    skipped = rep.frame[~rep.frame["status"].isin(["ok", "failed"])]
    for r in skipped.drop_duplicates(["phenomenon", "control"]).itertuples():
        print(f"  {r.phenomenon} ({r.control}): {r.note}", file=sys.stderr)
    return 1 if rep.failed else 0

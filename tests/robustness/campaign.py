"""The long robustness campaigns, which CI runs a handful of cases of (tests/robustness/test_*.py):

    python3 -m tests.robustness.campaign --kills 60 --files 5000 --cli 500 --json campaign.json

--kills   SIGKILL each writing command at random moments of its write (harness.py), then check the
          inputs, that nothing incomplete looks valid, and that a rerun (training: --resume auto) succeeds
--files   hostile checkpoint directories (hostile.py), opened, loaded and described in process
--cli     hypothesis-drawn command lines (cli_fuzz.py), run in process
--gguf, --tasks, --prompts, --overlap
          hostile inputs (inputs.py): GGUF files whose shapes, types and metadata disagree, lm-eval task
          directories, prompt files, outputs that overlap the command's inputs; run in process

Prints a table of cases tried and failures found, writes it as JSON, and exits 1 if any failed."""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.robustness.inputs import FAMILIES, run_family

# the longest a command's write lasts on the workspace's tiny models, roughly: kills land within it
KILL_WINDOW_S = {"train": 4.0, "expand": 0.5, "slice": 0.5, "import": 0.5, "export": 0.5, "pull": 0.2}


def kills(n: int, seed: int, root: Path) -> dict:
    from tests.robustness.harness import (
        COMMANDS,
        check_after_kill,
        command_args,
        inputs,
        kill_during,
        make_workspace,
        tree_digest,
    )

    env = make_workspace(root)
    before = {str(p): tree_digest(p) for p in inputs(root)}
    rng = random.Random(seed)
    outcomes, failures = collections.Counter(), []
    for i in range(n):
        command = COMMANDS[i % len(COMMANDS)]
        delay = rng.uniform(0, KILL_WINDOW_S[command])
        out = root / f"out-{i}"
        try:
            outcomes[f"{command} {kill_during(command_args(command, root, out), out, delay, env, root)}"] += 1
            check_after_kill(command, root, out, env, before)
        except Exception as e:  # noqa: BLE001 - a campaign records every failure and goes on
            failures.append(f"{command} killed {delay:.3f} s into its write: {type(e).__name__}: {str(e)[:300]}")
        for leftover in root.glob(f"*out-{i}*"):
            shutil.rmtree(leftover, ignore_errors=True)
    return {"cases": n, "outcomes": dict(outcomes), "failures": failures}


def files(n: int, seed: int, root: Path) -> dict:
    from colm_core.checkpoint import save
    from tests.conftest import tiny_model
    from tests.robustness.hostile import check_directory, make_case

    save(tiny_model(), root / "good")
    outcomes, failures = collections.Counter(), []
    for case_seed in range(seed, seed + n):
        case, what = make_case(root / "good", root / "case", case_seed)
        try:
            outcomes[check_directory(case)] += 1
        except BaseException as e:  # noqa: BLE001 - includes Hang and MemoryError
            failures.append(f"seed {case_seed} ({what}): {type(e).__name__}: {str(e)[:300]}")
    return {"cases": n, "outcomes": dict(outcomes), "failures": failures}


def cli(n: int, seed: int, root: Path) -> dict:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed

    from colm_core.checkpoint import save
    from tests.conftest import tiny_model
    from tests.robustness.cli_fuzz import check_outcome, command_lines, run_main

    save(tiny_model(vocab_size=258), root / "ckpt")
    (root / "data.txt").write_text("Emma Woodhouse, handsome, clever, and rich. " * 100)
    os.environ.update({"CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "COLM_CACHE_DIR": str(root / "cache")})
    os.chdir(root)
    out = root / "out"
    tried = collections.Counter()

    @hypothesis_seed(seed)
    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(command_lines(root / "ckpt", root / "data.txt", out))
    def one(args):
        for leftover in (out, out.with_name("out.partial")):
            shutil.rmtree(leftover, ignore_errors=True)
        code, stdout, stderr = run_main(args)
        tried[f"{args[0]} exit {code}"] += 1
        check_outcome(args, code, stdout, stderr)

    try:
        one()
        failures = []
    except Exception as e:  # noqa: BLE001 - hypothesis raises the shrunk failing example(s)
        failures = [f"{type(f).__name__}: {str(f)[:600]}" for f in getattr(e, "exceptions", [e])]
    return {"cases": sum(tried.values()), "outcomes": dict(tried), "failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=0, help="SIGKILL cases (spread over the writing commands)")
    parser.add_argument("--files", type=int, default=0, help="hostile checkpoint directories")
    parser.add_argument("--cli", type=int, default=0, help="hypothesis-drawn command lines")
    for family in FAMILIES:
        parser.add_argument(f"--{family}", type=int, default=0, help=f"hostile inputs: {family} cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    results = {}
    families = {family: functools.partial(run_family, family) for family in FAMILIES}
    for name, run in (("files", files), ("kills", kills), ("cli", cli), *families.items()):
        n = getattr(args, name)
        if n:
            start = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix=f"colm-campaign-{name}-") as root:
                results[name] = run(n, args.seed, Path(root)) | {"seconds": round(time.perf_counter() - start, 1)}
            print(f"{name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
    print(f"{'campaign':<10} {'cases':>7} {'failures':>9} {'seconds':>8}  outcomes")
    for name, r in results.items():
        print(f"{name:<10} {r['cases']:>7} {len(r['failures']):>9} {r['seconds']:>8}  {r['outcomes']}")
        for failure in r["failures"]:
            print(f"  FAILED {failure}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    sys.exit(1 if any(r["failures"] for r in results.values()) else 0)


if __name__ == "__main__":
    main()

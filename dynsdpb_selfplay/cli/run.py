"""``dynsdpb run``: start a self-training / self-correction run from a YAML config, or resume one.

dynsdpb run pipelines/configs/demo.yaml            # runs/demo/
dynsdpb run --resume runs/demo                     # after a crash or Ctrl-C: finished phases are kept
dynsdpb run pipelines/configs/demo.yaml --set generation.n=8 training.learning_rate=1e-5
dynsdpb run --options                              # every config key with its default and help

Exit codes: 0 done; 2 bad input (one line naming the file, key or option; also too little memory for the next
model); 1 a file could not be written (a full disk: finished phases are kept for --resume); 3 the training loss
became NaN/inf (the state before that step is saved); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import EngineUnavailableError, NonFiniteLossError, UserInputError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help="self-improvement rounds from a YAML config (or --resume RUN_DIR)")
    p.add_argument("config", nargs="?", help="run config (YAML); see pipelines/configs/")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--run-dir", help="output folder (default: the config's run_dir, else runs/<config stem>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in the output folder")
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        dest="assignments",
        help="config keys to change, e.g. generation.n=8 training.learning_rate=1e-5 (values are YAML; "
        "saved in the run folder's config.yaml)",
    )
    p.add_argument("--options", action="store_true", help="list every config key with its default and help, and exit")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.options:
        return print_options()
    from ..memory import InsufficientMemoryError
    from ..rounds import RunDir, load_config, run
    from ..rounds.config import from_dict, to_dict

    run_dir = None
    try:
        if args.resume:
            if args.config or args.run_dir or args.overwrite or args.assignments:
                raise UserInputError("--resume takes only the run folder (its config.yaml is reused)")
            run_dir = RunDir.open(args.resume)
        elif args.config:
            config = load_config(args.config, args.assignments)
            path = args.run_dir or config.run_dir or str(Path("runs") / Path(args.config).stem)
            config.run_dir = str(Path(path))
            run_dir = RunDir.create(path, to_dict(config), overwrite=args.overwrite)
        else:
            raise UserInputError("give a config file, or --resume RUN_DIR")
        with run_dir:
            if args.resume:  # the saved config is checked like a new one, naming its file
                from_dict(run_dir.config(), source=run_dir.path / "config.yaml")
            print(f"run folder: {run_dir.path}", flush=True)
            if run_dir.stopped:
                pids = ", ".join(str(p["pid"]) for p in run_dir.stopped)
                print(
                    f"stopped {len(run_dir.stopped)} process(es) an earlier attempt of this run left running "
                    f"(engine or generation shards; pids {pids})",
                    flush=True,
                )
            run(run_dir)
    except (UserInputError, EngineUnavailableError) as e:
        saved = isinstance(e, InsufficientMemoryError) and run_dir is not None
        hint = (
            (
                f". Finished phases are saved; change the settings in {run_dir.path / 'config.yaml'} (or free memory) "
                f"and continue with `dynsdpb run --resume {run_dir.path}`"
            )
            if saved
            else ""
        )
        print(f"dynsdpb run: error: {e}{hint}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        hint = f" Finished phases are saved; continue with `dynsdpb run --resume {run_dir.path}`." if run_dir else ""
        print(f"dynsdpb run: error: {e}{hint}", file=sys.stderr)
        return 3
    except OSError as e:  # a full disk, a folder made read-only mid-run: the finished phases are on disk
        hint = f"; finished phases are saved: fix that, then `dynsdpb run --resume {run_dir.path}`" if run_dir else ""
        print(f"dynsdpb run: error: {e.filename or 'I/O'}: {e.strerror or e}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = f"; finished phases are saved. Continue with `dynsdpb run --resume {run_dir.path}`" if run_dir else ""
        print(f"dynsdpb run: interrupted{hint}", file=sys.stderr)
        return 130
    return 0


def print_options() -> int:
    """The run config's keys, defaults and help, from the dataclasses that define them."""
    from ..rounds.config import RunConfig
    from ..rounds.schema import describe

    rows = describe(RunConfig)
    width = max(len(k) for k, _, _ in rows)
    for key, default, what in rows:
        print(f"{key:<{width}}  {default:<12} {what}")
    return 0

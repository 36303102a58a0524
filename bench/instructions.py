"""Instructions per message (valgrind's callgrind): a count that, unlike seconds, does not move
with the host's speed or load, to judge a change to the dispatcher or to composing.

    .venv/bin/python bench/instructions.py --messages 2000              # dispatch
    .venv/bin/python bench/instructions.py --messages 2000 --compose    # compose() alone

Dispatch: a shop of --messages clients from bench/generate.py, planned (a thank-you each, as in
bench/deliver.py), is sent into smtp-sink by followup's dispatcher in one process (claim,
prefetch, render, send, record). Compose: bench/render.py's jobs, composed one by one.

Each is run twice under callgrind, in a child process with PYTHONHASHSEED=0: once doing the
work and once doing everything but the work (imports, opening the runtime, the shop, a few
messages composed to compile the templates). The difference, divided by --messages, is what
one message costs in user-space instructions; the kernel's work (sockets, files) is not
counted. Installs Debian's valgrind (and postfix, for smtp-sink) when missing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import deliver  # noqa: E402


def ensure_valgrind() -> None:
    if not shutil.which("valgrind"):
        deliver.apt_install("valgrind")


def counted(arguments: list[str], out: Path) -> int:
    """Instructions of `python bench/instructions.py <arguments>` run under callgrind."""
    subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            *arguments,
        ],
        check=True,
        env=dict(os.environ, PYTHONHASHSEED="0"),
        stderr=subprocess.DEVNULL,
    )
    found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no total in {out}")
    return int(found.group(1))


def child_dispatch(folder: Path, port: int, work: bool) -> None:
    from followup.delivery.dispatcher import dispatch_in_processes
    from followup.runtime import Clock, Runtime

    rt = Runtime.open(deliver.shop_settings(folder, deliver.sink_env(port, 4)))
    if work:
        dispatch_in_processes(rt, Clock.starting_at(deliver.NOW), 1)
    rt.engine.dispose()


def child_compose(messages: int, work: bool) -> None:
    import render

    with tempfile.TemporaryDirectory() as folder:
        compose_one, jobs, _ = render.composer(Path(folder), messages)
    for job in jobs[:7]:  # compile every template, as a running dispatcher has
        compose_one(job)
    if work:
        for job in jobs:
            compose_one(job)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2_000)
    parser.add_argument("--compose", action="store_true", help="compose() alone")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, work = args.child[0], args.child[-1] == "work"
        if what == "dispatch":
            child_dispatch(Path(args.child[1]), int(args.child[2]), work)
        else:
            child_compose(args.messages, work)
        return
    ensure_valgrind()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        if args.compose:
            runs = {
                mode: ["--messages", str(args.messages), "--child", "compose", mode]
                for mode in ("work", "idle")
            }
            sink = None
        else:
            deliver.ensure_postfix()
            port = deliver.free_port()
            sink = deliver.start_sink(port)
            shop = folder / "work"
            deliver.shop_runtime(shop, args.messages, deliver.sink_env(port, 4)).engine.dispose()
            shutil.copytree(shop, folder / "idle")
            runs = {
                mode: ["--child", "dispatch", str(folder / mode), str(port), mode]
                for mode in ("work", "idle")
            }
        try:
            totals = {mode: counted(run, folder / f"{mode}.out") for mode, run in runs.items()}
        finally:
            if sink is not None:
                sink.terminate()
                sink.wait()
    what = "composed (compose())" if args.compose else "dispatched (1 process)"
    per = (totals["work"] - totals["idle"]) // args.messages
    print(deliver.machine())
    print(
        f"{args.messages} messages {what}: {per:,} instructions a message "
        f"(callgrind: {totals['work']:,} with the work, {totals['idle']:,} without)"
    )


if __name__ == "__main__":
    main()

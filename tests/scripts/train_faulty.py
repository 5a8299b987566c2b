"""A small training script for the fault tests (tests/test_faults.py), with no gfprobe code in it
unless ``--watch-out`` asks for ``gfprobe.watch``.

It prints the digest of its final weights (``witness.weights_digest``) and nothing else that
depends on how it ends, so one run without gfprobe is the reference for every ending. A
KeyboardInterrupt at any point ends it quietly with 130, as a well-behaved script would: any
traceback that appears after a SIGINT is then not the script's.
"""

try:  # the first statement, so that even the imports are covered
    import argparse
    import os
    import sys
    import time
    from pathlib import Path

    def write_pid(path: Path) -> None:
        """Atomically: the test never reads half a pid."""
        temp = path.with_name(path.name + ".part")
        temp.write_text(str(os.getpid()))
        os.replace(temp, path)

    def main() -> None:
        p = argparse.ArgumentParser()
        p.add_argument("--steps", type=int, default=12)
        p.add_argument("--forever", action="store_true", help="train until killed or interrupted")
        p.add_argument("--sleep", type=float, default=0.0, help="seconds after each step")
        p.add_argument("--pid-file", type=Path, help="written once numpy is imported, before torch is")
        p.add_argument("--steps-file", type=Path, help="rewritten with the step count after each step")
        p.add_argument("--hold-at", type=int, default=-1, help="after this many steps, wait for --release")
        p.add_argument("--release", type=Path, help="the file whose existence ends the hold")
        p.add_argument("--end", choices=["clean", "exit3", "raise"], default="clean")
        p.add_argument("--watch-out", help="record with gfprobe.watch(model, opt, out=WATCH_OUT)")
        p.add_argument("--no-fallocate", action="store_true",
                       help="with --watch-out: gfprobe as on a file system without fallocate (no disk reserve)")
        args = p.parse_args()
        # numpy before the pid file: a KeyboardInterrupt inside numpy's own import can leave it
        # half-imported, and torch's import then swallows the interrupt (a RecursionError in
        # numpy.__getattr__ that torch catches) and the script trains on, with or without
        # gfprobe (seen in 2 of 25 plain runs). The tests interrupt torch's import, not numpy's.
        import numpy  # noqa: F401

        if args.pid_file:
            write_pid(args.pid_file)

        import torch
        from torch import nn
        from witness import weights_digest

        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
        x = torch.randn(256, 16)
        y = torch.randint(0, 4, (256,))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        probe = None
        if args.watch_out is not None:
            import gfprobe

            if args.no_fallocate:
                import gfprobe.store.reserve

                gfprobe.store.reserve._FALLOCATE = None
            probe = gfprobe.watch(model, opt, out=args.watch_out)
        step = 0
        while args.forever or step < args.steps:
            batch = slice(step * 16 % 256, step * 16 % 256 + 16)
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if args.steps_file:
                args.steps_file.write_text(str(step))
            if step == args.hold_at:
                while not args.release.exists():
                    time.sleep(0.05)
            if args.sleep:
                time.sleep(args.sleep)
        if probe is not None:
            probe.close()
        print(f"weights {weights_digest(model)}")
        print(f"done steps={step}", flush=True)
        if args.end == "exit3":
            sys.exit(3)
        if args.end == "raise":
            raise RuntimeError("failure requested by --end raise")

    if __name__ == "__main__":
        main()
except KeyboardInterrupt:
    raise SystemExit(130) from None

"""Test entry point: records what a training container gives it, then exits (or crashes).

Writes probe-<host>-<rank>.json to its output data dir with every SM_* variable, TF_CONFIG,
the Open MPI rank variables, a few container variables and sys.argv; the chief also writes
model/probe.txt and a small metrics.json, as an entry point would. Standard library only:
it must start fast.

Hyperparameters: --crash-rank R  exit 3 on rank R (MPI rank, else TF_CONFIG task index, else 0)
                 --sleep S       other ranks sleep S seconds first (to see who stops whom)
                 --on-sigterm    "save": on SIGTERM, rank 0 writes model/probe.txt after
                                 --save-seconds, all exit 0; "ignore": SIGTERM is ignored;
                                 default: Python's (it dies)
                 --epoch-lines N rank 0 first prints N epoch lines as the entry points do, one
                                 every --epoch-seconds
"""

import argparse
import json
import os
import signal
import sys
import time

RECORDED = ("TF_CONFIG", "CURRENT_HOST", "SAGEMAKER_JOB_NAME", "SAGEMAKER_REGION",
            "TRAINING_JOB_NAME", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
            "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE")


def my_rank():
    if "OMPI_COMM_WORLD_RANK" in os.environ:
        return int(os.environ["OMPI_COMM_WORLD_RANK"])
    if "TF_CONFIG" in os.environ:
        return int(json.loads(os.environ["TF_CONFIG"])["task"]["index"])
    return 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--crash-rank", type=int, default=-1)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--on-sigterm", default="")
    parser.add_argument("--save-seconds", type=float, default=0.0)
    parser.add_argument("--epoch-lines", type=int, default=0)
    parser.add_argument("--epoch-seconds", type=float, default=1.0)
    args, _ = parser.parse_known_args()
    rank = my_rank()
    if args.on_sigterm == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif args.on_sigterm == "save":
        signal.signal(signal.SIGTERM,
                      lambda signum, frame: save_and_exit(rank, args.save_seconds))
    host = os.environ.get("SM_CURRENT_HOST", "nohost")
    record = {
        "env": {k: v for k, v in os.environ.items()
                if k.startswith("SM_") or k in RECORDED},
        "argv": sys.argv,
        "cwd": os.getcwd(),
        "pid": os.getpid(),
    }
    out_dir = os.environ["SM_OUTPUT_DATA_DIR"]
    with open(os.path.join(out_dir, f"probe-{host}-{rank}.json"), "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    print(f"probe rank {rank} on {host}: recorded {len(record['env'])} variables", flush=True)
    if rank == args.crash_rank:
        print(f"probe rank {rank}: crashing as asked (--crash-rank {rank})", file=sys.stderr,
              flush=True)
        sys.exit(3)
    for epoch in range(1, args.epoch_lines + 1 if rank == 0 else 1):
        time.sleep(args.epoch_seconds)
        print(f"epoch {epoch}/{args.epoch_lines} - loss: 1.0000 - accuracy: 0.5000"
              f" - val_loss: 1.0000 - val_accuracy: 0.5000 - lr: 0.010000"
              f" - time: {args.epoch_seconds:.1f}s - images/s: 1000.0", flush=True)
    time.sleep(args.sleep)
    if rank == 0:
        with open(os.path.join(os.environ["SM_MODEL_DIR"], "probe.txt"), "w") as f:
            f.write("model of the probe\n")
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            json.dump({"eval_accuracy": 0.5, "history": [{"epoch": 1, "loss": 2.0}]}, f)


def save_and_exit(rank, seconds):
    time.sleep(seconds)  # saving takes a while: longer than Open MPI's 1 s before SIGKILL
    if rank == 0:
        with open(os.path.join(os.environ["SM_MODEL_DIR"], "probe.txt"), "w") as f:
            f.write("saved at SIGTERM\n")
    print(f"probe rank {rank}: SIGTERM, saved, exiting 0", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()

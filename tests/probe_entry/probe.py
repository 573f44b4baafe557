"""Test entry point: records what a training container gives it, then exits (or crashes).

Writes probe-<host>-<rank>.json to its output data dir with every SM_* variable, TF_CONFIG,
the Open MPI rank variables, a few container variables and sys.argv; the chief also writes
model/probe.txt and a small metrics.json, as an entry point would. Standard library only:
it must start fast.

Hyperparameters: --crash-rank R  exit 3 on rank R (MPI rank, else TF_CONFIG task index, else 0)
                 --sleep S       other ranks sleep S seconds first (to see who stops whom)
"""

import argparse
import json
import os
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
    args, _ = parser.parse_known_args()
    rank = my_rank()
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
    time.sleep(args.sleep)
    if rank == 0:
        with open(os.path.join(os.environ["SM_MODEL_DIR"], "probe.txt"), "w") as f:
            f.write("model of the probe\n")
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            json.dump({"eval_accuracy": 0.5, "history": [{"epoch": 1, "loss": 2.0}]}, f)


if __name__ == "__main__":
    main()

"""Command-line arguments of every entry point, with SageMaker's container variables as defaults.

SageMaker passes each hyperparameter as ``--key value`` and describes channels and output
folders in ``SM_*`` variables. Defaulting to those variables, not reading them directly,
keeps the scripts usable outside a container with explicit paths.
"""

import argparse
import os


def default_checkpoint_dir():
    """SageMaker: /opt/ml/checkpoints (synced with checkpoint_s3_uri) sits beside /opt/ml/model.

    Deriving it from SM_MODEL_DIR keeps it right wherever the job folder is laid out.
    """
    model_dir = os.environ.get("SM_MODEL_DIR")
    if model_dir:
        candidate = os.path.join(os.path.dirname(os.path.normpath(model_dir)), "checkpoints")
        if os.path.isdir(candidate):
            return candidate
    return None


HYPERPARAMETERS = "hyperparameters"


def build_parser(description):
    env = os.environ.get
    parser = argparse.ArgumentParser(description=description)
    hp = parser.add_argument_group(HYPERPARAMETERS)
    # The recipe (its result: README.md, "Accuracy on real CIFAR-10"). SGD's decay is decoupled in
    # Keras (w -= lr * wd * w): 5e-3 at lr 0.4 shrinks the weights as cifar10-fast's L2 5e-4
    # through momentum 0.9 does (5e-4 / (1 - 0.9)); the old 5e-4 at lr 0.05 did 20x less an epoch.
    hp.add_argument("--epochs", type=int, default=15)
    hp.add_argument("--batch-size", type=int, default=512,
                    help="per worker (cifar10-fast's batch; fewer, larger steps per epoch)")
    hp.add_argument("--learning-rate", type=float, default=0.4,
                    help="peak learning rate for one worker (distributed runs scale it)")
    hp.add_argument("--warmup-epochs", type=float, default=3.5,
                    help="linear warm-up from 0.2x, then linear decay to 0.07x the peak "
                         "(airbench's triangle: the peak at 23%% of training)")
    hp.add_argument("--momentum", type=float, default=0.9, help="Nesterov")
    hp.add_argument("--weight-decay", type=float, default=5e-3, help="decoupled (see above)")
    hp.add_argument("--label-smoothing", type=float, default=0.2, help="airbench's value")
    hp.add_argument("--precision", default="auto",
                    choices=["auto", "float32", "mixed_bfloat16"],
                    help="auto: mixed_bfloat16 on CPUs with AMX (no GPU), else float32; "
                         "evaluation and the exported model are float32 either way")
    hp.add_argument("--seed", type=int, default=0)
    paths = parser.add_argument_group("data and outputs (SageMaker sets the defaults)")
    paths.add_argument("--train", default=env("SM_CHANNEL_TRAIN"))
    paths.add_argument("--validation", default=env("SM_CHANNEL_VALIDATION"))
    paths.add_argument("--eval", default=env("SM_CHANNEL_EVAL"))
    paths.add_argument("--sm-model-dir", default=env("SM_MODEL_DIR"),
                       help="where the SavedModel goes (packed into model.tar.gz)")
    paths.add_argument("--output-data-dir", default=env("SM_OUTPUT_DATA_DIR"),
                       help="metrics.json and TensorBoard logs (packed into output.tar.gz)")
    paths.add_argument("--checkpoint-dir",
                       default=default_checkpoint_dir(),
                       help="per-epoch checkpoints; a run resumes from the latest one")
    # SageMaker: SDK v2's TF estimator always passes --model_dir (an S3 prefix); the model goes
    # to --sm-model-dir instead, so this is accepted and ignored. SDK v3 passes none.
    paths.add_argument("--model_dir", help=argparse.SUPPRESS)
    return parser


def recipe_defaults():
    """The training recipe's defaults, read back from the flags above (the one place they are
    set): {"epochs": 15, "batch_size": 512, "learning_rate": 0.4, "warmup_epochs": 3.0, ...}."""
    parser = build_parser("recipe defaults")
    (group,) = [g for g in parser._action_groups if g.title == HYPERPARAMETERS]
    return {action.dest: action.default for action in group._group_actions}


RECIPE_DEFAULTS = recipe_defaults()


def parse_args(description, argv=None):
    parser = build_parser(description)
    args = parser.parse_args(argv)
    for flag, variable in (("train", "SM_CHANNEL_TRAIN"), ("validation", "SM_CHANNEL_VALIDATION"),
                           ("eval", "SM_CHANNEL_EVAL"), ("sm_model_dir", "SM_MODEL_DIR"),
                           ("output_data_dir", "SM_OUTPUT_DATA_DIR")):
        if not getattr(args, flag):
            name = flag.replace("_", "-")
            hint = (f"give estimator.fit() a '{flag}' input" if variable.startswith("SM_CHANNEL")
                    else "run it as a SageMaker job")
            parser.error(f"--{name} is missing: pass --{name} PATH, or {hint} "
                         f"(SageMaker then sets {variable})")
    return args

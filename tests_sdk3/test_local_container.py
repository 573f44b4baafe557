"""2.1's entry point, train_tf.py, unchanged under SDK v3's driver in its stand-in image
(ModelTrainer with Mode.LOCAL_CONTAINER, docker compose). 1.2's train_keras.py runs the same way
in notebook 6.0, which tests/test_sdk3.py runs under papermill.

Needs Docker with the stand-in images (make local-images) and SDK3_DATA_DIR, a DATA_DIR as 1.0
writes it: this venv has no TensorFlow to make TFRecords. tests/test_sdk3.py sets both, and
checks the model it wrote to SDK3_RESULT_OUT with TensorFlow.
"""

import json
import os

import pytest

from workshop import PHASE0_DIR, records, sdk3
from workshop.entry_points import entry_point

HYPERPARAMETERS = {"epochs": 2, "batch-size": 32, "learning-rate": 0.02}


@pytest.fixture
def data_dir():
    if not os.environ.get("SDK3_DATA_DIR"):
        pytest.fail("SDK3_DATA_DIR must name a DATA_DIR that 1.0 wrote (tests/test_sdk3.py "
                    "sets it to its fixture data)")
    return sdk3.v3_start("local", os.environ["SDK3_DATA_DIR"])  # fails here without Docker


def test_train_tf_runs_unchanged_under_v3s_driver(data_dir):
    from sagemaker.core.training.configs import Compute, InputData, SourceCode
    from sagemaker.train.model_trainer import Mode, ModelTrainer

    entry = entry_point("train_tf.py")
    trainer = ModelTrainer(
        training_mode=Mode.LOCAL_CONTAINER,
        training_image=sdk3.v3_image_for("local", "", *entry.image_tags),  # 2.21: by its tag
        source_code=SourceCode(source_dir=str(PHASE0_DIR / "src"), entry_script=entry.script),
        compute=Compute(instance_type=sdk3.v3_instance_type_for("local", ""), instance_count=1),
        hyperparameters=HYPERPARAMETERS,
        base_job_name=entry.base_job_name,
        local_container_root=sdk3.local_root("local", entry.base_job_name))
    inputs = [InputData(channel_name=split, data_source=source)
              for split, source in sdk3.channels("local", data_dir).items()]
    with sdk3.job_log() as log:
        trainer.train(input_data_config=inputs)
    result = sdk3.v3_result_of(trainer, "local", log)

    # v3's driver ran the script itself: its arguments, no --model_dir, no TF_CONFIG.
    (command,) = log.commands()
    assert command.endswith(" train_tf.py --epochs 2 --batch-size 32 --learning-rate 0.02")
    assert "TF_CONFIG=" not in log.text
    assert result.metrics["epochs"] == 2
    assert result.metrics["tensorflow"].startswith(entry.framework_version + ".")  # its image
    if os.environ.get("SDK3_RESULT_OUT"):
        with open(os.environ["SDK3_RESULT_OUT"], "w") as f:
            json.dump(records.headline(result) | {"model_artifact": str(result.model_artifact)}, f)

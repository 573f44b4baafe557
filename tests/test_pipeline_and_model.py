"""src/cifar: the input pipeline (train-only augmentation, shapes, ranges) and the model."""

import numpy as np
import pytest
import tensorflow as tf

from cifar import data
from cifar import model as cnn
from workshop import dataset


def windows_of(images):
    """Every 32x32 window of each edge-padded image and of its mirror, what a shift can give:
    shape (N, 2 x (2 x MAX_SHIFT + 1)^2, 32, 32, 3)."""
    pad, side = data.MAX_SHIFT, 2 * data.MAX_SHIFT + 1
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    crops = np.stack([padded[:, y:y + 32, x:x + 32] for y in range(side) for x in range(side)],
                     axis=1)
    return np.concatenate([crops, crops[:, :, :, ::-1]], axis=1)


def test_eval_and_validation_are_exactly_the_stored_images(cifar_data_dir):
    for split in ("validation", "eval"):
        stored, stored_labels = dataset.read_examples(cifar_data_dir, split, count=None)
        batches = list(data.make_dataset(cifar_data_dir / split, 100, training=False))
        images = np.concatenate([b[0].numpy() for b in batches])
        labels = np.concatenate([b[1].numpy() for b in batches])
        assert images.dtype == np.uint8 and images.shape == stored.shape
        np.testing.assert_array_equal(images, stored)  # no augmentation, no shuffling
        np.testing.assert_array_equal(labels, stored_labels)


def test_train_batches_are_augmented_crops_and_flips_of_train_images(cifar_data_dir):
    stored, _ = dataset.read_examples(cifar_data_dir, "train", count=None)
    images, labels = next(iter(data.make_dataset(cifar_data_dir / "train", 16, training=True)))
    assert images.shape == (16, 32, 32, 3) and images.dtype == tf.uint8
    assert labels.shape == (16,) and labels.dtype == tf.int64
    windows = windows_of(stored)
    changed = 0
    for image in images.numpy():
        # the stored images this is a window (or mirrored window) of
        is_window = (windows == image).all(axis=(2, 3, 4)).any(axis=1)
        candidates = stored[is_window]
        assert len(candidates), "a training image is not a crop/flip of any stored image"
        changed += not (candidates == image).all(axis=(1, 2, 3)).any()
    assert changed >= 8, "augmentation should change most training images"


def test_training_epoch_takes_whole_batches(cifar_data_dir):
    records = data.count_records(cifar_data_dir / "train")
    sizes = [int(labels.shape[0]) for _, labels in data.make_dataset(
        cifar_data_dir / "train", 100, training=True)]
    assert records == 1024 and sizes == [100] * 10  # the 24 left over: other ones next epoch
    assert data.steps_per_epoch(records, 100) == len(sizes)
    assert data.steps_per_epoch(records, 100, num_workers=2) == 5
    # a share smaller than a batch is one short batch, not none
    assert [int(labels.shape[0]) for _, labels in data.make_dataset(
        cifar_data_dir / "train", 2048, training=True)] == [1024]
    assert data.steps_per_epoch(records, 2048) == 1


def test_bad_channels_fail_with_the_channel_name(tmp_path):
    with pytest.raises(data.ChannelError, match="channel 'train'.*does not exist"):
        data.make_dataset(tmp_path / "missing", 8, training=True, channel="train")
    with pytest.raises(data.ChannelError, match="channel 'eval': no \\*.tfrecord files"):
        data.make_dataset(tmp_path, 8, training=False, channel="eval")
    (tmp_path / "x.tfrecord").write_bytes(b"PNG this is not a TFRecord at all" * 10)
    with pytest.raises(data.ChannelError, match="x.tfrecord is not a CIFAR-10 TFRecord file"):
        data.make_dataset(tmp_path, 8, training=False, channel="eval")


SAMPLE = np.random.default_rng(1).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)


def test_model_takes_raw_uint8_and_normalises_inside():
    model = cnn.build_model(SAMPLE, test_time_augmentation=False)
    assert model.input.dtype == tf.uint8
    mean_colour = np.round(np.array(cnn.CIFAR10_MEAN) * 255).astype(np.uint8)
    images = np.broadcast_to(mean_colour, (2, 32, 32, 3))
    normalised = tf.keras.Model(model.input, model.layers[2].output)(images)
    assert np.abs(normalised.numpy()).max() < 0.02  # the mean colour maps to ~0
    assert model(images, training=False).shape == (2, 10)


def test_first_layer_whitens_the_sample_and_convolutions_start_as_identity(cifar_data_dir):
    images = data.sample_images(cifar_data_dir / "train", count=500)
    assert images.shape == (500, 32, 32, 3) and images.dtype == np.uint8
    model = cnn.build_model(images, test_time_augmentation=False)
    whitening = model.get_layer("whitening")
    assert not whitening.trainable
    np.testing.assert_array_equal(whitening.get_weights()[0], cnn.patch_whitening(images))
    features = tf.keras.Model(model.input, whitening.output)(images).numpy()
    covariance = np.cov(features.reshape(-1, cnn.WHITENING_FILTERS)[:, :12], rowvar=False)
    assert np.abs(covariance - np.diag(np.diag(covariance))).max() < 0.05  # decorrelated
    assert np.diag(covariance).max() < 1.01  # unit variance at most (eps damps the smallest)
    first_block = [layer for layer in model.layers
                   if isinstance(layer, tf.keras.layers.Conv2D)][1].get_weights()[0]
    inputs = first_block.shape[2]
    np.testing.assert_array_equal(first_block[1, 1, :, :inputs], np.eye(inputs))


def test_inference_averages_six_views_training_does_not():
    model = cnn.build_model(SAMPLE)
    # By type: Keras numbers a layer's default name per process (test_time_augmentation_3).
    (tta,) = [layer for layer in model.layers if isinstance(layer, cnn.TestTimeAugmentation)]
    body = tta.body
    images = SAMPLE[:4]

    def mirrored(views):
        return 0.5 * (body(views, training=False) + body(views[:, :, ::-1], training=False))

    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    expected = 0.5 * mirrored(images) + 0.25 * (mirrored(padded[:, :32, :32])
                                                + mirrored(padded[:, 2:, 2:]))
    np.testing.assert_allclose(model(images, training=False), expected, atol=1e-5)
    mirror = images[:, :, ::-1]
    assert not np.allclose(model(images, training=True), model(mirror, training=True))


def test_one_cycle_schedule_warms_up_peaks_and_decays_to_its_end():
    schedule = cnn.OneCycle(peak=0.1, total_steps=100, warmup_steps=10)
    values = [float(schedule(step)) for step in (0, 5, 10, 55, 100, 120)]
    assert values == pytest.approx([0.0, 0.05, 0.1, 0.05, 0.0, 0.0], abs=1e-6)
    triangle = cnn.OneCycle(peak=1.0, total_steps=100, warmup_steps=20, start=0.2, end=0.1)
    values = [float(triangle(step)) for step in (0, 10, 20, 60, 100, 120)]
    assert values == pytest.approx([0.2, 0.6, 1.0, 0.55, 0.1, 0.1], abs=1e-6)


def test_lookahead_averages_from_its_start_and_leaves_the_average_in_place():
    model = cnn.build_model(SAMPLE, widths=(4, 4, 4))
    lookahead = cnn.Lookahead(model, steps_per_epoch=10, total_steps=40)  # starts at step 30
    weight = model.trainable_weights[0]
    start = weight.numpy().copy()
    weight.assign(start + 1)
    lookahead.after_step(25)
    lookahead.end_of_epoch()
    np.testing.assert_array_equal(weight.numpy(), start + 1)  # before its start: untouched
    lookahead.after_step(30)  # the slow copy starts from the weights
    weight.assign(start + 2)
    lookahead.after_step(33)  # every 5 steps only
    np.testing.assert_array_equal(weight.numpy(), start + 2)
    lookahead.after_step(35)
    rho = 0.95 ** 5 * (35 / 40) ** 3
    np.testing.assert_allclose(weight.numpy(), start + 1 + (1 - rho), rtol=1e-5)
    averaged = weight.numpy().copy()
    weight.assign(start + 5)  # steps after the last average ...
    lookahead.end_of_epoch()  # ... give way to it at the end of the epoch
    np.testing.assert_allclose(weight.numpy(), averaged)


def test_lookahead_averages_batch_norm_statistics_but_not_the_fixed_layers():
    model = cnn.build_model(SAMPLE, widths=(4, 4, 4))
    lookahead = cnn.Lookahead(model, steps_per_epoch=10, total_steps=40)
    (norm, *_) = [layer for layer in model.layers[-1].body.layers
                  if isinstance(layer, tf.keras.layers.BatchNormalization)]
    averaged = {id(weight) for weight in lookahead.weights}
    assert id(norm.moving_mean) in averaged and id(norm.moving_variance) in averaged
    whitening = model.layers[-1].body.get_layer("whitening").kernel
    assert id(whitening) not in averaged
    lookahead.after_step(30)
    start = norm.moving_mean.numpy().copy()
    norm.moving_mean.assign(start + 2)
    lookahead.after_step(35)
    rho = 0.95 ** 5 * (35 / 40) ** 3
    np.testing.assert_allclose(norm.moving_mean.numpy(), start + 2 * (1 - rho), rtol=1e-5)


def test_loss_is_per_example_with_label_smoothing():
    logits = tf.constant([[10.0] + [0.0] * 9, [0.0] * 9 + [10.0]])
    losses = cnn.loss_fn(label_smoothing=0.0)(tf.constant([0, 0], tf.int64), logits)
    assert losses.shape == (2,)
    assert float(losses[0]) < 0.01 < 5 < float(losses[1])
    smoothed = cnn.loss_fn(label_smoothing=0.1)(tf.constant([0], tf.int64), logits[:1])
    assert float(smoothed[0]) > float(losses[0])


@pytest.mark.parametrize("has_export", [True, False], ids=["export-archive", "tf-2.11-path"])
def test_saved_model_serves_raw_images_by_name(tmp_path, monkeypatch, has_export):
    """Both save paths: Keras' ExportArchive, and tf.saved_model for TF 2.11 (no tf.keras.export).
    """
    from cifar import serving

    model = cnn.build_model(SAMPLE)
    if not has_export:
        monkeypatch.delattr(tf.keras, "export")
    path = serving.save_for_serving(model, str(tmp_path))
    assert path == str(tmp_path / "1") and not (tmp_path / "1.partial").exists()
    signature = tf.saved_model.load(path).signatures["serving_default"]
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    outputs = signature(image=tf.constant(images))
    assert outputs["class_id"].dtype == tf.int32 and outputs["class_id"].shape == (4,)
    served_as = cnn.float32_copy(model)  # the model itself if it computes in float32
    np.testing.assert_allclose(outputs["probabilities"].numpy(),
                               tf.nn.softmax(served_as(images, training=False)).numpy(),
                               atol=1e-5)


def test_precision_follows_the_flag_and_this_machine():
    assert cnn.choose_precision("float32") == "float32"
    assert cnn.choose_precision("mixed_bfloat16") == "mixed_bfloat16"
    with open("/proc/cpuinfo") as f:
        amx = any(line.startswith("flags") and "amx_bf16" in line.split() for line in f)
    gpu = bool(tf.config.list_physical_devices("GPU"))
    assert cnn.choose_precision("auto") == ("mixed_bfloat16" if amx and not gpu else "float32")


def test_a_bfloat16_model_is_evaluated_and_exported_in_float32(tmp_path):
    """Trained in mixed_bfloat16 (on any CPU here: TensorFlow has bfloat16 kernels without AMX
    too, only slower), evaluated and served in float32 with the same weights."""
    from cifar import serving

    model = cnn.build_model(SAMPLE, widths=(8, 8, 8), precision="mixed_bfloat16")
    assert tf.keras.mixed_precision.global_policy().name == "float32"  # not left behind
    assert not cnn.computes_in_float32(model)
    assert all(w.dtype == tf.float32 for w in model.weights)  # mixed: float32 weights
    copy = cnn.float32_copy(model)
    assert cnn.computes_in_float32(copy)
    for ours, theirs in zip(model.get_weights(), copy.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    images = np.random.default_rng(2).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
    labels = np.random.default_rng(3).integers(0, 10, 32)
    bf16, f32 = model(images, training=False), copy(images, training=False)
    assert bf16.dtype == f32.dtype == tf.float32  # float32 logits whatever the policy
    assert 0 < np.abs(bf16 - f32).max() < 0.05  # bfloat16 rounding: different, and only just
    signature = tf.saved_model.load(serving.save_for_serving(model, str(tmp_path))) \
        .signatures["serving_default"]
    np.testing.assert_allclose(signature(image=tf.constant(images))["probabilities"].numpy(),
                               tf.nn.softmax(f32).numpy(), atol=1e-5)
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(10)
    loss = cnn.loss_fn(0.2)
    expected_loss = float(tf.reduce_mean(loss(labels, f32)))
    expected_accuracy = float(np.mean(np.argmax(f32, -1) == labels))
    assert cnn.evaluate(copy, batches, loss) == pytest.approx(
        (expected_loss, expected_accuracy), abs=1e-6)


def test_legacy_optimizer_for_old_horovod_trains_exactly_like_the_default_one():
    """Horovod 0.27 (TF 2.12 image) takes only legacy optimizers; the legacy SGD must keep the
    recipe: Nesterov momentum, decoupled weight decay, the one-cycle schedule."""
    from cifar.distributed import horovod_needs_legacy_optimizer

    assert horovod_needs_legacy_optimizer("0.27.0") and horovod_needs_legacy_optimizer("0.26.1")
    assert not horovod_needs_legacy_optimizer("0.28.1")
    rng = np.random.default_rng(0)
    start = rng.normal(size=(6, 3)).astype("float32")
    gradients = [rng.normal(size=(6, 3)).astype("float32") for _ in range(8)]
    final = {}
    for legacy in (False, True):
        variable = tf.Variable(start)
        optimizer = cnn.build_optimizer(0.5, total_steps=8, warmup_steps=2, momentum=0.9,
                                        weight_decay=0.05,
                                        legacy=legacy)
        state = cnn.build_optimizer_state(optimizer, [variable])
        assert state, "the optimizer's slots exist before the first step (to broadcast)"
        rates = []
        for gradient in gradients:
            rates.append(cnn.current_learning_rate(optimizer))
            optimizer.apply_gradients([(tf.constant(gradient), variable)])
        final[legacy] = (variable.numpy(), rates)
    np.testing.assert_allclose(final[True][0], final[False][0], rtol=1e-5, atol=1e-6)
    # build_optimizer's schedule; the legacy optimizer reports the next step's rate
    schedule = cnn.OneCycle(0.5, 8, 2, start=0.2, end=0.07)
    np.testing.assert_allclose(final[True][1], [float(schedule(s)) for s in range(8)], rtol=1e-6)
    assert not np.allclose(final[False][0], start)


def test_a_checkpoint_that_cannot_be_read_falls_back_to_the_one_before(tmp_path, capsys):
    """SageMaker syncs /opt/ml/checkpoints file by file: the index may name a checkpoint whose
    data is incomplete after a spot interruption. Restarting must not fail for ever."""
    from cifar.checkpoints import EpochCheckpoints

    model = cnn.build_model(SAMPLE, widths=(4, 4, 4))
    optimizer = cnn.build_optimizer(0.1, total_steps=10, warmup_steps=2, momentum=0.9,
                                    weight_decay=5e-4)
    saver = EpochCheckpoints(str(tmp_path), model, optimizer)
    saver.save(1, [{"epoch": 1}])
    saver.save(2, [{"epoch": 1}, {"epoch": 2}])
    for data_file in tmp_path.glob("ckpt-2.data-*"):
        data_file.write_bytes(data_file.read_bytes()[:10])  # truncated by an interrupted sync
    restored = EpochCheckpoints(
        str(tmp_path), cnn.build_model(SAMPLE, widths=(4, 4, 4)),
        cnn.build_optimizer(0.1, total_steps=10, warmup_steps=2, momentum=0.9, weight_decay=5e-4))
    assert restored.restore() == (1, [{"epoch": 1}])
    assert "ckpt-2 cannot be restored" in capsys.readouterr().out

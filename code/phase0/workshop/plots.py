"""Figures the notebooks show: training curves, image grids, confusion matrix."""

import matplotlib.pyplot as plt
import numpy as np

from .dataset import CLASS_NAMES


def training_curves(history, title=""):
    """Loss and accuracy per epoch, train vs validation; ``history`` is metrics.json's rows."""
    epochs = [row["epoch"] for row in history]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, [row[metric] for row in history], "o-", label="train")
        ax.plot(epochs, [row["val_" + metric] for row in history], "o-", label="validation")
        ax.set(xlabel="epoch", ylabel=metric, title=f"{title} {metric}".strip())
        ax.legend()
    figure.tight_layout()
    plt.show()


def image_grid(images, labels, predictions=None, rows=4, cols=8, class_names=CLASS_NAMES):
    """Images with their labels; with predictions, titles read "pred (true)", red when wrong."""
    figure, axes = plt.subplots(rows, cols, figsize=(cols * 1.4, rows * 1.6))
    for i, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if i >= len(images):
            continue
        ax.imshow(images[i])
        true = class_names[int(labels[i])]
        if predictions is None:
            ax.set_title(true, fontsize=8)
        else:
            guess = class_names[int(predictions[i])]
            ax.set_title(f"{guess}\n({true})", fontsize=8,
                         color="black" if guess == true else "red")
    figure.tight_layout()
    plt.show()


def confusion_matrix(labels, predictions, num_classes=10):
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, int), np.asarray(predictions, int)), 1)
    return matrix


def plot_confusion(labels, predictions, class_names=CLASS_NAMES):
    matrix = confusion_matrix(labels, predictions, len(class_names))
    figure, ax = plt.subplots(figsize=(6.5, 5.5))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=60, fontsize=8)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (eval set)")
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, count, ha="center", va="center", fontsize=7,
                color="white" if count > matrix.max() / 2 else "black")
    figure.colorbar(image)
    figure.tight_layout()
    plt.show()
    return matrix


def keras_history_rows(history):
    """Keras ``History.history`` (dict of lists) -> metrics.json-style rows, for training_curves."""
    count = len(history["loss"])
    return [{"epoch": i + 1, **{name: values[i] for name, values in history.items()}}
            for i in range(count)]

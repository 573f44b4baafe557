"""Every run this machine has made, side by side (notebook 5.0): accuracy, speed, time, cost.

Each training notebook records its run with ``records.save_result`` as
``runs/results/runs/<job>.json``. Cost applies to host runs only, from SageMaker's own figures:

  on-demand estimate = TrainingTimeInSeconds x InstanceCount x price per instance-hour / 3600
  billed estimate    = BillableTimeInSeconds x InstanceCount x price per instance-hour / 3600

Managed spot training bills fewer seconds than it trains (the saving is
1 - BillableTimeInSeconds / TrainingTimeInSeconds, as the DescribeTrainingJob reference puts it),
so the two differ only for spot runs (spot bills its billable seconds at the on-demand price).
Prices are the training prices of ``prices.json`` (the budget guard's table), each with its source
and the date the source shows; a type with no price there gets no estimate.
"""


from . import budget

PRICES_PATH = budget.PRICES_PATH
COLUMNS = ("notebook", "mode", "job_name", "instance_type", "instance_count", "spot", "epochs",
           "workers", "eval_accuracy", "images_per_sec", "wall_seconds", "billable_seconds",
           "usd_per_hour", "on_demand_usd", "billed_usd")


def training_price(instance_type, prices):
    """The table's training price of a type (budget.Price; usd_per_hour None if it has none)."""
    return budget.table_price(instance_type, "training", prices["region"], prices)


def cost_estimate(record, prices):
    """{"usd_per_hour", "on_demand_usd", "billed_usd"} of a host run, or None (not host, or no
    price)."""
    if record.get("mode") != "host":
        return None
    price = training_price(record.get("instance_type"), prices).usd_per_hour
    if price is None:
        return None
    count = int(record.get("instance_count") or 1)

    def usd(seconds):
        return None if seconds is None else round(seconds * count * price / 3600, 4)

    return {"usd_per_hour": price, "on_demand_usd": usd(record.get("training_seconds")),
            "billed_usd": usd(record.get("billable_seconds"))}


def price_sources(records, prices):
    """One line per instance type of the host runs: its price and where it comes from."""
    types = sorted({r.get("instance_type") for r in records if r.get("mode") == "host"})
    return [f"{kind}: {training_price(kind, prices).describe()}" for kind in types]


def table(records, prices):
    """One row per run (a pandas DataFrame with COLUMNS)."""
    import pandas as pd

    rows = []
    for record in records:
        cost = cost_estimate(record, prices) or {}
        rows.append({column: cost.get(column, record.get(column)) for column in COLUMNS})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def plot(frame):
    """Eval accuracy and images/s of every run, one bar each, labelled notebook/mode/instances."""
    import matplotlib.pyplot as plt

    if frame.empty:
        print("Nothing to plot: no runs recorded yet.")
        return
    labels = [f"{row.notebook} {row.mode}\n{row.instance_count}x {row.workers or 1}w"
              for row in frame.itertuples()]
    figure, axes = plt.subplots(1, 2, figsize=(max(8, len(frame) * 0.9), 3.8))
    for ax, column, title in ((axes[0], "eval_accuracy", "eval accuracy"),
                              (axes[1], "images_per_sec", "training images/s")):
        ax.bar(range(len(frame)), frame[column].fillna(0))
        ax.set_xticks(range(len(frame)), labels, fontsize=7)
        ax.set(title=title)
    figure.tight_layout()
    plt.show()

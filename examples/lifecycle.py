# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The whole lifecycle from Python
#
# Atoll's Python API, cell by cell: the cluster, a training run, a sweep, the registry, an endpoint, a query
# and a batch prediction. Every call is the one the `atoll` CLI makes. Open it as a notebook with
# `jupytext --to notebook examples/lifecycle.py` (or in Jupyter with the jupytext extension); CI runs it
# headless (`tests/test_notebook.py`).
#
# It uses the project's `cluster.yaml` (the local cluster) and its demo data, the handwritten digits that
# scikit-learn ships: nothing is downloaded. The figures are small (2 epochs, 2 trials) so it runs in a few
# minutes on a laptop. The state goes to the storage root of cluster.yaml (or `$ATOLL_STORAGE`): a local
# folder, or an object store such as `s3://atoll/storage` (`atoll storage up` starts one on this machine;
# `eval "$(atoll storage env)"` points Atoll at it). Nothing below assumes a local disk.

# %%
import os
from pathlib import Path

import atoll

PROJECT = Path(os.environ.get("ATOLL_PROJECT", ".")).resolve()  # the folder holding cluster.yaml and jobs/
os.chdir(PROJECT)
cluster = atoll.up()  # starts the local cluster of ./cluster.yaml, or reuses the running one
print(cluster.dashboard_url, "reused" if cluster.already_up else "started")

# %% [markdown]
# ## Train
# `atoll.fit` submits the training job (Ray Train, 2 workers), waits, and returns what it registered.

# %%
run = atoll.fit("jobs/configs/train.yaml", overrides=["epochs=2"])
trained = run["registered"]
print(trained["name"], trained["version"], trained["metrics"]["val_accuracy"])

# %% [markdown]
# ## Sweep
# Ray Tune with ASHA over the same training loop; the best trial is registered as the next version.

# %%
swept = atoll.sweep("jobs/configs/sweep.yaml", overrides=["num_samples=2", "overrides.epochs=2",
                                                         f"name=notebook-{os.getpid()}"])
print(swept["summary"]["trials"], "trials; best registered as version", swept["registered"]["version"])

# %% [markdown]
# ## The registry
# Every version is immutable, with its metrics, lineage and exported artefacts.

# %%
registry = atoll.open_registry()
best = max((trained, swept["registered"]), key=lambda r: r["metrics"]["val_accuracy"])
registry.set_alias(best["name"], best["version"], "production")
version = registry.get(f"{best['name']}@production")
print(version.ref, version.metrics["val_accuracy"], "exported as", sorted(version.exports))

# %% [markdown]
# ## Serve and query

# %%
app = atoll.deploy("digits@production", app="notebook-digits", replicas=(1, 1),
                   settings={"num_cpus_per_replica": 0.5})
import pandas as pd  # noqa: E402
from atoll import data  # noqa: E402

holdout = pd.read_parquet(data.prepare_demo(registry.root)["holdout"])  # 180 digits training never saw
features = [c for c in holdout.columns if c != "label"]
answer = atoll.query(app["app"], {"inputs": holdout[features].head(5).to_numpy().tolist()})
print(answer["predictions"], "true:", holdout["label"].head(5).tolist())

# %% [markdown]
# ## Predict a batch
# A Ray job over a whole file with Ray Data and an actor pool of the model; the output keeps the other columns.

# %%
from atoll.filesystems import join  # noqa: E402  (paths under a root that may be s3://)

rows, out = join(registry.root, "notebook-rows.parquet"), join(registry.root, f"notebook-predictions-{os.getpid()}.parquet")
holdout.to_parquet(rows)
batch = atoll.predict("digits@production", rows, out)
predicted = pd.read_parquet(out)
print(batch["predicted"]["rows"], "rows;", (predicted["prediction"] == predicted["label"]).mean(), "accuracy")

# %%
atoll.undeploy(app["app"])  # the cluster stays up: `atoll.down()` stops it

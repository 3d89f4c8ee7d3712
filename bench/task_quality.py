"""What each task's model is worth: Atoll's model against a simple baseline, on the same rows, in one run.

    python bench/task_quality.py                      # every task: text, image, keras, regression, tables
    python bench/task_quality.py --task text --quick  # one task, fewer epochs

Ours: ``atoll train jobs/configs/<task>.yaml`` run for real (a Ray job, 2 Ray Train workers, preprocessing
fitted on the training split), then the registered version asked, in process with
:class:`atoll.serving.predictor.Predictor`, about the demo's held-out rows (10% of the data that neither side
trains on). Baseline: a scikit-learn model fitted on the very rows the Atoll run trained on (its own
train/validation split) and asked about the same held-out rows:

- text (the SMS Spam Collection): TF-IDF + logistic regression; the figure is macro-F1 (spam is 13% of the
  messages, so accuracy alone flatters a model that never says spam), accuracy beside it;
- image and keras (the digits as 8×8 PNGs; a small CNN, the Keras CNN of examples/keras_cnn.py): logistic
  regression on the 64 pixels; accuracy, macro-F1 beside it;
- regression (the diabetes data): ordinary least squares; RMSE (lower is better), R² beside it;
- generate (the SMS corpus as chats; a small Llama-style language model): perplexity on the held-out chats' learnt
  tokens (the assistant's turns), against an interpolated bigram model fitted on the tokens of the rows the run
  trained on (the unigram's beside it);
- tables (the Palmer penguins: words, a category coded as a number, gaps): the MLP on the table as it comes,
  against scikit-learn's ``HistGradientBoostingClassifier`` with native categories (gaps left as NaN, which
  it handles); accuracy, macro-F1 beside it. tables-regression: the same birds' body mass in grams
  (``HistGradientBoostingRegressor``); RMSE, R² beside it. tables-trees and tables-regression-trees: the same
  two with Atoll's gradient-boosted trees (``model.type: xgboost`` on Ray Train's XGBoostTrainer) instead of
  the MLP.

The bench uses a cluster and storage of its own, and stops them. One JSON line per task.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _common import atoll_cli as _atoll
from _common import own_cluster, result_line

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Case:
    config: str
    demo: str
    quick_epochs: int
    figure: str  # the headline figure
    better: str
    baseline: str  # what the baseline is, for people
    sets: tuple[str, ...] = ()  # --set overrides of the spec (the same table, another model)


CASES = {
    "text": Case("text.yaml", "sms_spam", 2, "f1", "higher", "TF-IDF + logistic regression"),
    "image": Case("image.yaml", "digits_images", 5, "accuracy", "higher", "logistic regression on the pixels"),
    "keras": Case("keras.yaml", "digits_images", 4, "accuracy", "higher", "logistic regression on the pixels"),
    "regression": Case("regression.yaml", "diabetes", 20, "rmse", "lower", "ordinary least squares"),
    "tables": Case("penguins.yaml", "penguins", 10, "accuracy", "higher",
                   "HistGradientBoosting with native categories"),
    "tables-regression": Case("penguins_mass.yaml", "penguins", 20, "rmse", "lower",
                              "HistGradientBoosting with native categories"),
    "tables-trees": Case("penguins_trees.yaml", "penguins", 30, "accuracy", "higher",
                         "HistGradientBoosting with native categories"),
    "tables-regression-trees": Case("penguins_mass.yaml", "penguins", 100, "rmse", "lower",
                                    "HistGradientBoosting with native categories",
                                    ("name=penguins-mass-trees", "model.type=xgboost", "epochs=300",
                                     "model.params={max_depth: 3, eta: 0.05, early_stopping_rounds: 30}")),
    "generate": Case("generate.yaml", "sms_chat", 3, "perplexity", "lower",
                     "interpolated bigram model on the same tokens"),
}
#: Cases whose rows are a table with words and gaps: ours gets them raw, the baseline as pandas categories.
MIXED = ("tables", "tables-regression", "tables-trees", "tables-regression-trees")


def _scores(truth, predicted, regression: bool) -> dict[str, float]:
    from sklearn import metrics

    if regression:
        return {"rmse": round(float(np.sqrt(metrics.mean_squared_error(truth, predicted))), 3),
                "r2": round(float(metrics.r2_score(truth, predicted)), 4)}
    return {"accuracy": round(float(metrics.accuracy_score(truth, predicted)), 4),
            "f1": round(float(metrics.f1_score(truth, predicted, average="macro")), 4)}


def _inputs(task: str, frame, features: list[str], categorical: list[str] | None = None):
    """(what the registered model is asked, the baseline's input) of a frame's rows."""
    if task in MIXED:  # words stay words, gaps stay gaps; scikit-learn's trees take words as categories
        from pandas.api.types import is_numeric_dtype

        base = frame[features].copy()
        for column in features:
            if not is_numeric_dtype(base[column]) or column in (categorical or []):
                base[column] = base[column].astype(str).where(base[column].notna()).astype("category")
        return frame[features], base
    if task == "text":
        return frame[features[0]].astype(str).tolist(), frame[features[0]].astype(str).tolist()
    if task in ("image", "keras"):
        from PIL import Image

        grey = np.stack([np.asarray(Image.open(io.BytesIO(blob))) for blob in frame[features[0]]])
        return [g[None] for g in grey], grey.reshape(len(grey), -1).astype(np.float64)
    rows = frame[features].to_numpy(dtype=np.float32)
    return rows, rows


def _baseline(task: str) -> Callable:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if task == "text":
        return make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=1000))
    if task == "regression":
        return LinearRegression()
    if task in MIXED:
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        trees = HistGradientBoostingRegressor if CASES[task].figure == "rmse" else HistGradientBoostingClassifier
        return trees(categorical_features="from_dtype", random_state=0)
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


def _packed_nll(state, frame, next_token_logprob) -> tuple[float, int]:
    """(summed negative log-likelihood, tokens) of the learnt positions of ``frame``'s rows packed as training packs
    them; ``next_token_logprob(x [b, L] int64) -> log-probabilities [b, L, vocabulary]`` of the token after each."""
    import torch
    from atoll.tasks.generation import IGNORE

    blocks = state(frame)
    x, y = torch.as_tensor(blocks["x"]), torch.as_tensor(blocks["y"])
    logprob = next_token_logprob(x)[:, :-1]
    labels = y[:, 1:]
    mask = labels != IGNORE
    picked = logprob.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return float(-(picked * mask).sum()), int(mask.sum())


def _bigram(state, frame, vocab: int):
    """An interpolated bigram model (Jelinek-Mercer, add-one unigram) fitted on ``frame``'s packed tokens, as a
    ``next_token_logprob``; its weight is the best of a grid on the evaluated rows (a baseline at its best)."""
    import torch
    from atoll.tasks.generation import IGNORE

    blocks = state(frame)
    x, y = torch.as_tensor(blocks["x"]), torch.as_tensor(blocks["y"])
    prev, nxt = x[:, :-1].reshape(-1), y[:, 1:].reshape(-1)
    keep = nxt != IGNORE
    pairs = torch.zeros(vocab, vocab, dtype=torch.float64)
    pairs.index_put_((prev[keep], nxt[keep]), torch.ones(int(keep.sum()), dtype=torch.float64), accumulate=True)
    unigram = (pairs.sum(0) + 1) / (pairs.sum() + vocab)
    conditional = pairs / pairs.sum(1, keepdim=True).clamp(min=1)

    def with_weight(weight: float):
        table = torch.log(weight * conditional + (1 - weight) * unigram)
        return lambda ids: table[ids]

    return with_weight


def _generation_case(task: str, case: Case, quick: bool, storage: str) -> dict:
    """Ours: the registered language model's perplexity on the held-out chats (packed as training packs them);
    baseline: an interpolated bigram model on the tokens of the rows the run trained on, on the same positions."""
    import math
    import tempfile

    import pandas as pd
    import torch
    from atoll import config, data, registry
    from atoll.specs import TrainSpec
    from atoll.tasks.generation import GenerationState
    from transformers import AutoModelForCausalLM

    path = REPO / "jobs" / "configs" / case.config
    overrides = [*case.sets, *([f"epochs={case.quick_epochs}"] if quick else [])]
    spec = config.load_file(TrainSpec, path, overrides)
    paths = data.prepare_demo(storage, case.demo)
    train_file, held = pd.read_parquet(paths["train"]), pd.read_parquet(paths["holdout"])
    sets = [a for o in overrides for a in ("--set", o)]
    out = json.loads(_atoll("train", str(path), *sets, "--name", f"bench-{task}-{os.urandom(3).hex()}", "--json"))
    registered = out["registered"]
    reg = registry.Registry(storage)
    version = reg.get(f"{registered['name']}:{registered['version']}")
    state = GenerationState.from_dict(json.loads(reg.read_file(version, "atoll.json"))["preprocess"])
    with tempfile.TemporaryDirectory() as tmp:
        model = AutoModelForCausalLM.from_pretrained(f"{reg.local_copy(version, tmp)}/hf").eval()
        with torch.no_grad():
            nll, tokens = _packed_nll(state, held, lambda ids: torch.log_softmax(model(input_ids=ids).logits, -1))
    trained_on = data.SplitFilter(state.features, spec.dataset.validation_fraction, "train", spec.seed)(train_file)
    bigram = _bigram(state, trained_on, state.vocab_size)
    base_nll, _ = min(_packed_nll(state, held, bigram(w)) for w in (0.3, 0.5, 0.7, 0.8, 0.9, 0.95))
    uni_nll, _ = _packed_nll(state, held, bigram(0.0))
    ours = {"perplexity": round(math.exp(nll / tokens), 3), "loss": round(nll / tokens, 4)}
    baseline = {"perplexity": round(math.exp(base_nll / tokens), 3), "loss": round(base_nll / tokens, 4),
                "unigram_perplexity": round(math.exp(uni_nll / tokens), 3)}
    print(f"{task}: {len(held)} held-out chats ({tokens} learnt tokens), trained on {len(trained_on)}; "
          f"{spec.model.type}, {spec.epochs} epochs, 2 workers: {ours}; {case.baseline}: {baseline}", flush=True)
    return {"bench": "task_quality", "task": task, "model": spec.model.type, "unit": "perplexity", "better": "lower",
            "ours": ours["perplexity"], "baseline": baseline["perplexity"],
            "ratio": round(ours["perplexity"] / baseline["perplexity"], 4), "ours_all": ours, "baseline_all": baseline,
            "baseline_model": case.baseline, "epochs": spec.epochs, "held_out": len(held), "held_out_tokens": tokens,
            "val_metrics": registered["metrics"]}


def run_case(task: str, quick: bool, storage: str) -> dict:
    import pandas as pd
    from atoll import config, data
    from atoll.serving.predictor import Predictor
    from atoll.specs import TrainSpec

    case = CASES[task]
    if case.figure == "perplexity":
        return _generation_case(task, case, quick, storage)
    path = REPO / "jobs" / "configs" / case.config
    overrides = [*case.sets, *([f"epochs={case.quick_epochs}"] if quick else [])]
    spec = config.load_file(TrainSpec, path, overrides)
    paths = data.prepare_demo(storage, case.demo)
    train_file, held = pd.read_parquet(paths["train"]), pd.read_parquet(paths["holdout"])
    label = spec.dataset.label
    features = spec.dataset.features or [c for c in train_file.columns
                                          if c != label and c not in (spec.dataset.exclude or [])]
    sets = [a for o in overrides for a in ("--set", o)]
    out = json.loads(_atoll("train", str(path), *sets, "--name", f"bench-{task}-{os.urandom(3).hex()}", "--json"))
    registered = out["registered"]
    regression = case.figure == "rmse"
    categorical = list(spec.dataset.categorical or []) if task in MIXED else None
    if task in MIXED:  # the rows without a label are left out of training on both sides, and of the scoring
        held = held[held[label].notna()]
    asked, held_x = _inputs(task, held, features, categorical)
    ours = _scores(held[label], Predictor(storage, f"{registered['name']}:{registered['version']}").predict(asked)[0],
                   regression)
    trained_on = data.SplitFilter(features + [label], spec.dataset.validation_fraction, "train", spec.seed)(train_file)
    trained_on = trained_on[trained_on[label].notna()]
    train_x = _inputs(task, trained_on, features, categorical)[1]
    if task in MIXED:  # one set of categories for both frames (each frame's own would number levels differently)
        for column in train_x.columns:
            if str(train_x[column].dtype) == "category":
                levels = sorted(set(train_x[column].dropna()) | set(held_x[column].dropna()))
                train_x[column] = train_x[column].cat.set_categories(levels)
                held_x[column] = held_x[column].cat.set_categories(levels)
    model = _baseline(task).fit(train_x, trained_on[label])
    baseline = _scores(held[label], model.predict(held_x), regression)
    figure = case.figure
    print(f"{task}: {len(held)} held-out rows, trained on {len(trained_on)}; {spec.model.type}, {spec.epochs} epochs, "
          f"2 workers: {ours}; {case.baseline}: {baseline}", flush=True)
    return {"bench": "task_quality", "task": task, "model": spec.model.type, "unit": figure, "better": case.better,
            "ours": ours[figure], "baseline": baseline[figure], "ratio": round(ours[figure] / baseline[figure], 4),
            "ours_all": ours, "baseline_all": baseline, "baseline_model": case.baseline, "epochs": spec.epochs,
            "held_out": len(held), "val_metrics": registered["metrics"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(CASES), action="append", help="one task (repeatable; default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer epochs per task")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))  # the Keras example's module, which the Predictor imports here
    results = []
    with own_cluster("atoll_bench_quality_") as (storage, _):
        for task in args.task or list(CASES):
            results.append(run_case(task, args.quick, storage))
    for result in results:
        print(result_line(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

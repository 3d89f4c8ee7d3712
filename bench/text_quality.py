"""What the text model is worth: Atoll's BERT-style classifier against a simple baseline, on the same data.

    python bench/text_quality.py            # jobs/configs/text.yaml as it is (3 epochs)
    python bench/text_quality.py --quick    # 2 epochs (< 3 min on 2 cores)

Ours: ``atoll train jobs/configs/text.yaml`` run for real (a Ray job, 2 Ray Train workers, the WordPiece
tokenizer fitted on the training split), then the registered version asked, in process with
:class:`atoll.serving.replica.Predictor`, about the demo's held-out messages (10% of the SMS Spam
Collection that neither run sees). Baseline: TF-IDF + logistic regression (scikit-learn) fitted on the very
rows the model trained on (the same train/validation split) and asked about the same held-out messages.
The figure is macro-F1 (spam is 13% of the messages, so accuracy alone flatters a model that never says
spam); accuracy is printed beside it. The bench uses a cluster and storage of its own, and stops them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ATOLL = Path(sys.executable).parent / "atoll"
CONFIG = REPO / "jobs" / "configs" / "text.yaml"


def _atoll(*args: str, timeout: float = 900) -> str:
    proc = subprocess.run([str(ATOLL), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise RuntimeError(f"`atoll {' '.join(args)}` failed (exit {proc.returncode})")
    return proc.stdout


def _scores(truth, predicted) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": round(float(accuracy_score(truth, predicted)), 4),
            "f1": round(float(f1_score(truth, predicted, average="macro")), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 epochs (< 3 min)")
    args = parser.parse_args()
    import pandas as pd
    from atoll import config, data
    from atoll.serving.replica import Predictor
    from atoll.specs import TrainSpec
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    work = Path(tempfile.mkdtemp(prefix="atoll_bench_text_"))
    storage = str(work / "storage")
    os.environ.update({"ATOLL_HOME": str(work / "home"), "ATOLL_STORAGE": storage,
                       "ATOLL_CLUSTER_CONFIG": str(REPO / "cluster.yaml")})
    overrides = ["epochs=2"] if args.quick else []
    spec = config.load_file(TrainSpec, CONFIG, overrides)
    paths = data.prepare_demo(storage, "sms_spam")
    train_file, held = pd.read_parquet(paths["train"]), pd.read_parquet(paths["holdout"])
    text, label = "text", spec.dataset.label
    _atoll("up")
    try:
        sets = [a for o in overrides for a in ("--set", o)]
        out = json.loads(_atoll("train", str(CONFIG), *sets, "--name", f"bench-text-{os.urandom(3).hex()}", "--json"))
        registered = out["registered"]
        predictor = Predictor(storage, f"{registered['name']}:{registered['version']}")
        ours = _scores(held[label], predictor.predict(held[text].tolist())[0])
    finally:
        _atoll("down")
    trained_on = data.SplitFilter([text, label], spec.dataset.validation_fraction, "train", spec.seed)(train_file)
    vectorizer = TfidfVectorizer()
    baseline_model = LogisticRegression(max_iter=1000).fit(vectorizer.fit_transform(trained_on[text]), trained_on[label])
    baseline = _scores(held[label], baseline_model.predict(vectorizer.transform(held[text])))
    print(f"held-out messages: {len(held)} ({(held[label] == 'spam').mean():.1%} spam); trained on {len(trained_on)}")
    print(f"  Atoll hf-bert ({spec.epochs} epochs, 2 workers): accuracy {ours['accuracy']}  macro-F1 {ours['f1']}")
    print(f"  TF-IDF + logistic regression:          accuracy {baseline['accuracy']}  macro-F1 {baseline['f1']}")
    print(json.dumps({"bench": "text_quality", "ours": ours["f1"], "baseline": baseline["f1"], "unit": "macro-F1",
                      "ratio": round(ours["f1"] / baseline["f1"], 4), "better": "higher",
                      "ours_accuracy": ours["accuracy"], "baseline_accuracy": baseline["accuracy"],
                      "epochs": spec.epochs, "held_out": len(held), "val_metrics": registered["metrics"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

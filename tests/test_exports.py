"""Exported artefacts: every task's model exported at registration as a torch.export program and an ONNX file,
checked against the PyTorch model, and run in a fresh interpreter without Atoll or the model's class
(onnxruntime and numpy only; torch only) to the registry's own predictions. No cluster: the registration
step is called on a checkpoint folder as the training job leaves it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from atoll import data, exports, models, registry, tasks
from atoll.serving.predictor import Predictor
from atoll.specs import TrainSpec
from atoll.train.run import export_artefacts
from conftest import REPO
from safetensors.torch import save_file


def _version_dir(tmp_path, spec: dict, state, examples: list, model_builder=None):
    """A checkpoint folder as the loop writes it (weights, atoll.json) plus the playground's examples."""
    spec = TrainSpec.model_validate(spec)
    task = tasks.get(spec.task)
    torch.manual_seed(0)
    model = models.build(spec.model.type, state.input_dim, task.out_dim(state), task.model_params(state, spec.model.params))
    folder = tmp_path / "version"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    schema = task.input_schema(state, spec.model.model_dump(mode="json"))
    meta = {"epoch": 0, "history": [], "spec": spec.model_dump(mode="json"), "preprocess": state.to_dict(),
            "input_schema": schema}
    (folder / "atoll.json").write_text(json.dumps(meta, default=str))
    (folder / "examples.json").write_text(json.dumps({"examples": examples}))
    return folder, meta, schema


def _tabular(tmp_path):
    paths = data.prepare_demo(str(tmp_path), "digits")
    frame = pd.read_parquet(paths["holdout"])
    features = [c for c in frame.columns if c != "label"]
    x = frame[features].to_numpy(dtype=np.float64)
    state = data.Preprocessor(features=features, label="label", mean=x.mean(0).tolist(),
                              std=np.maximum(x.std(0), 1e-8).tolist(), classes=list(range(10)))
    examples = [{"inputs": row, "label": int(y)} for row, y in zip(x[:6].tolist(), frame["label"][:6], strict=True)]
    spec = {"name": "digits", "dataset": {"path": "demo:digits"}, "model": {"type": "mlp"}}
    return spec, state, examples, frame[features].to_numpy(dtype=np.float32)[:25]


def _register(tmp_path, folder, meta, schema, exported):
    reg = registry.Registry(str(tmp_path / "store"))
    return reg, reg.register("m", str(folder), metrics={}, spec=meta["spec"], input_schema=schema, exports=exported)


def test_a_tabular_model_leaves_as_onnx_and_pt2_that_match_the_registry_in_a_fresh_interpreter(tmp_path):
    spec, state, examples, rows = _tabular(tmp_path)
    folder, meta, schema = _version_dir(tmp_path, spec, state, examples)
    exported = export_artefacts(folder, meta, schema)
    for fmt in ("onnx", "pt2"):
        assert exported[fmt]["file"] == exports.FILES[fmt] and exported[fmt]["examples"] == 6, exported
        assert 0 <= exported[fmt]["max_abs_diff"] <= exports.TOLERANCE
    reg, mv = _register(tmp_path, folder, meta, schema, exported)
    assert mv.exports == exported and {"model.onnx", "model.pt2", "preprocess.json"} <= set(mv.files)
    expected, probs = Predictor(reg.root, mv.ref).predict(rows)
    out = tmp_path / "copy"
    reg.local_copy(mv, str(out))
    np.save(tmp_path / "rows.npy", rows)
    # Nothing of Atoll may load: the artefact and preprocess.json are all another team gets.
    guard = "import sys; sys.modules['atoll'] = None\n"
    onnx_run = guard + textwrap.dedent(f"""
        import json, numpy as np, onnxruntime
        pre = json.load(open({str(out / 'preprocess.json')!r}))
        state = pre["state"]
        x = ((np.load({str(tmp_path / 'rows.npy')!r}) - np.float32(state["mean"])) / np.float32(state["std"]))
        session = onnxruntime.InferenceSession({str(out / 'model.onnx')!r})
        logits = session.run([pre["output"]], {{pre["input"]: x.astype(np.float32)}})[0]
        print(json.dumps([state["classes"][i] for i in logits.argmax(1)]))
        assert "torch" not in sys.modules and "atoll" not in [m.split(".")[0] for m in sys.modules if sys.modules[m]]
    """)
    pt2_run = guard + textwrap.dedent(f"""
        import json, numpy as np, torch
        pre = json.load(open({str(out / 'preprocess.json')!r}))
        state = pre["state"]
        x = (torch.from_numpy(np.load({str(tmp_path / 'rows.npy')!r})) - torch.tensor(state["mean"])) / torch.tensor(state["std"])
        program = torch.export.load({str(out / 'model.pt2')!r}).module()
        print(json.dumps([state["classes"][i] for i in program(x.float()).argmax(1).tolist()]))
    """)
    for code in (onnx_run, pt2_run):
        done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout.strip().splitlines()[-1]) == expected


@pytest.mark.parametrize("kind", ["text", "image", "keras"])
def test_text_image_and_keras_models_export_with_recorded_parity(tmp_path, kind, monkeypatch):
    from atoll.tasks.image import ImageState
    from atoll.tasks.text import TextState, train_tokenizer

    if kind == "text":
        texts = ["free prize call now", "see you at lunch", "win cash today", "ok thanks"] * 5
        tokenizer = train_tokenizer(texts, 200)
        from tokenizers import Tokenizer

        state = TextState(features=["text"], label="label", classes=["ham", "spam"], tokenizer=tokenizer, max_length=12,
                          vocab_size=Tokenizer.from_str(tokenizer).get_vocab_size())
        spec = {"name": "t", "task": "text-classification", "dataset": {"path": "x.parquet"},
                "model": {"type": "hf-bert", "params": {"layers": 1, "hidden": 16, "heads": 2, "max_length": 12}}}
        examples = [{"inputs": t, "label": "ham"} for t in texts[:4]]
    else:
        state = ImageState(features=["image"], label="label", classes=list(range(10)), image_shape=[1, 8, 8],
                           mean=[0.3], std=[0.4])
        model_type = "cnn" if kind == "image" else "examples.keras_cnn:build"
        monkeypatch.syspath_prepend(str(REPO))
        spec = {"name": "i", "task": "image-classification", "dataset": {"path": "x.parquet"},
                "model": {"type": model_type}}
        rng = np.random.default_rng(0)
        examples = [{"inputs": rng.integers(0, 256, (8, 8)).tolist(), "label": 1} for _ in range(3)]
    folder, meta, schema = _version_dir(tmp_path, spec, state, examples)
    exported = export_artefacts(folder, meta, schema)
    assert set(exported) == {"pt2", "onnx"}
    for fmt, result in exported.items():
        assert result.get("file") == exports.FILES[fmt], result  # kept: within the tolerance
        assert result["max_abs_diff"] <= exports.TOLERANCE and (folder / result["file"]).is_file()
    pre = json.loads((folder / "preprocess.json").read_text())
    assert pre["task"] == spec.get("task") and pre["input_schema"] == schema
    if kind == "text":  # the tokenizer as its own file, and a shorter sequence runs too (dynamic length)
        import onnxruntime

        assert json.loads((folder / "tokenizer.json").read_text())["model"]["type"] == "WordPiece"
        session = onnxruntime.InferenceSession(str(folder / "model.onnx"))
        assert session.run(None, {"inputs": state.token_ids(["free prize"])[0][:, :6]})[0].shape == (1, 2)


def test_a_model_that_cannot_be_exported_is_registered_without_it_and_says_why(tmp_path):
    class Branchy(torch.nn.Module):  # data-dependent control flow: torch.export refuses it
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.linear(x) if x.sum() > 0 else -self.linear(x)

    results = exports.export_version(Branchy(), np.ones((4, 3), dtype=np.float32), tmp_path)
    assert "cannot export to pt2" in results["pt2"]["error"] and not (tmp_path / "model.pt2").exists()
    assert set(results) == {"pt2", "onnx"} and all("file" in r or "error" in r for r in results.values())


def test_atoll_models_export_writes_a_folder_with_a_readme_and_refuses_what_is_not_there(tmp_path, monkeypatch):
    from atoll import cli
    from typer.testing import CliRunner

    spec, state, examples, _ = _tabular(tmp_path)
    folder, meta, schema = _version_dir(tmp_path, spec, state, examples)
    exported = export_artefacts(folder, meta, schema)
    reg, mv = _register(tmp_path, folder, meta, schema, exported)
    monkeypatch.setenv("ATOLL_STORAGE", reg.root)
    out = tmp_path / "for-the-other-team"
    result = CliRunner().invoke(cli.app, ["models", "export", mv.ref, "--format", "onnx", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["files"] == ["README.md", "model.onnx", "preprocess.json"] and answer["parity"] == exported["onnx"]
    readme = (out / "README.md").read_text()
    assert "float32 [n, 64]" in readme and "onnxruntime" in readme and "state.classes[argmax]" in readme
    (folder / "model.onnx").unlink()
    (folder / "model.pt2").unlink()
    bare = reg.register("m", str(folder), metrics={}, spec=meta["spec"], input_schema=schema,
                        exports={"pt2": {"error": "cannot export to pt2: UserError: data-dependent branch"}})
    refused = CliRunner().invoke(cli.app, ["models", "export", bare.ref, "--format", "pt2", "-o", str(tmp_path / "x")])
    assert str(refused.exception) == "m:2 has no model.pt2: cannot export to pt2: UserError: data-dependent branch."
    again = CliRunner().invoke(cli.app, ["models", "export", mv.ref, "--format", "onnx", "-o", str(out)])
    assert "exists and is not an empty folder" in str(again.exception)


def test_the_runtime_is_onnx_runtime_on_cpu_when_the_version_has_its_file_and_torch_otherwise():
    from atoll.errors import ConfigError
    from atoll.registry import ModelVersion
    from atoll.serving.predictor import choose_runtime

    with_onnx = ModelVersion("m", 1, "x", {"files": {"model.onnx": {}, "model.safetensors": {}}})
    without = ModelVersion("m", 2, "x", {"files": {"model.safetensors": {}},
                                         "exports": {"onnx": {"error": "cannot export to onnx: X"}}})
    assert choose_runtime("auto", with_onnx, "cpu") == "onnx" and choose_runtime("auto", with_onnx, "cuda") == "torch"
    assert choose_runtime("auto", without, "cpu") == "torch" and choose_runtime("torch", with_onnx, "cpu") == "torch"
    with pytest.raises(ConfigError, match=r"runtime: onnx, but m:2 has no model.onnx \(cannot export to onnx: X\)"):
        choose_runtime("onnx", without, "cpu")


def test_a_predictor_on_onnx_runtime_answers_as_the_torch_one(tmp_path):
    spec, state, examples, rows = _tabular(tmp_path)
    folder, meta, schema = _version_dir(tmp_path, spec, state, examples)
    reg, mv = _register(tmp_path, folder, meta, schema, export_artefacts(folder, meta, schema))
    on_torch, on_onnx = Predictor(reg.root, mv.ref), Predictor(reg.root, mv.ref, runtime="onnx")
    assert (on_torch.runtime, on_onnx.runtime, on_onnx.model) == ("torch", "onnx", None)  # no model code loaded
    labels, probs = on_torch.predict(rows)
    assert on_onnx.predict(rows)[0] == labels and np.allclose(on_onnx.predict(rows)[1], probs, atol=1e-6)
    many = np.tile(rows, (400, 1))  # 10,000 rows: run in slices of RUN_ROWS, answered as one call would be
    assert len(many) > 2 * Predictor.RUN_ROWS
    for predictor in (on_torch, on_onnx):
        np.testing.assert_allclose(predictor.outputs(many), np.tile(predictor.outputs(rows), (400, 1)), atol=1e-5)
    # A batch actor on ONNX Runtime never imports torch (about a second of its start on 2 cores).
    probe = ("import sys; from atoll.serving.predictor import Predictor; "
             f"p = Predictor({reg.root!r}, {mv.ref!r}, device='cpu', runtime='onnx'); "
             "print(p.runtime, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["onnx", "False"], out.stderr[-2000:]

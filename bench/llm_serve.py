"""Serving a language model: Atoll's OpenAI endpoint vs the same model's ``generate`` in one process.

    python bench/llm_serve.py            # 3 alternating rounds of 20 s per side
    python bench/llm_serve.py --quick    # 1 round of 8 s per side (< 3 min on 2 cores)
    python bench/llm_serve.py --ingress haproxy   # through Ray's HAProxy, inside a network namespace it makes

The model: a Llama-style ``LlamaForCausalLM`` built from a config (hidden 256, 4 layers, 4 heads, MLP 688, context
512; weights as initialised, since the compute per step is what matters here) with a byte-level BPE tokenizer of
2,000 tokens trained on this repository's README, saved with ``save_pretrained`` into a version folder's ``hf/`` and
registered as a ``text-generation`` version in a temporary ``atoll.registry.Registry``, as training registers one.

Ours: ``atoll.serving.replica.app`` (which builds ``atoll.serving.openai_api.LanguageModelServer`` for this task)
deployed with ``serve.run`` on an in-process local Ray (``ray.init(address="local", num_cpus=2)``), Serve's proxy on
127.0.0.1:8125, route ``/bench``; 1 replica of 1 CPU (torch on 1 thread), max_batch_size 32, batch_wait_timeout_s
0.005 (cluster.yaml's defaults). Each client streams ``POST /v1/completions`` (``stream: true``, ``temperature: 0``,
``max_tokens`` 64, ``stream_options.include_usage``) over its own keep-alive connection, back to back; tokens are
the answers' ``usage.completion_tokens``; time to first token is from sending the request to the first event with
text.

Baseline: ``model.generate`` of that same folder (Transformers, KV cache, greedy, the same stop tokens and 64 new
tokens) called in this process one request at a time on 1 thread, over the same prompts; its time to first token is
until a ``BaseStreamer`` receives the first new token.

Serve runs as `atoll up` starts it (``atoll.cluster.serve_env``: the key middleware and Serve's tuning). With
``--ingress haproxy`` the bench runs itself again inside a network namespace it makes (``unshare -n``, its own
loopback), with Ray's HAProxy ingress as `atoll up` starts it for ``ingress: haproxy`` (``RAY_SERVE_ENABLE_HA_PROXY=1``,
Atoll's HAProxy wrapper); its cases are named ``..., haproxy``.

Figures: aggregate generated tokens/s with 8 concurrent streams against the baseline's tokens/s (target ≥ 2×); the
same with 1 stream (target ≥ 0.8×); and the time to first token at 1 stream through the endpoint minus in-process,
p50 and p99 (target ≤ 15 ms added). Sides alternate (baseline, ours, ...) with Ray up throughout; the load generator
shares the 2 cores with Serve, and whether another Ray cluster ran is reported.
"""

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ForeignRay, own_session, print_table, result_line

REPO = Path(__file__).resolve().parent.parent
HOST, PORT, APP, ROUTE = "127.0.0.1", 8125, "bench", "/bench"
MAX_TOKENS = 64
CONTEXT = 512
MODEL = "bench-lm"
TARGETS = {"8 streams": 2.0, "1 stream": 0.8, "ttft_added_ms": 15.0}


def build_model(folder: Path) -> Path:
    """The benchmark's version folder (``hf/`` as save_pretrained writes it)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    text = (REPO / "README.md").read_text().splitlines()
    bpe.train_from_iterator(text, trainers.BpeTrainer(vocab_size=2000, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=CONTEXT, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, bos_token_id=None))
    model.generation_config = GenerationConfig(eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id,
                                               max_new_tokens=MAX_TOKENS, do_sample=False)
    model.save_pretrained(folder / "hf")
    tok.save_pretrained(folder / "hf")
    (folder / "atoll.json").write_text(json.dumps({"input_schema": schema()}))
    return folder


def schema() -> dict[str, Any]:
    return {"task": "text-generation", "input_kind": "prompt", "output_kind": "text", "context_length": CONTEXT,
            "chat": False, "format": "text", "features": ["text"]}


def register(storage: str, folder: Path) -> str:
    from atoll import registry

    spec = {"name": MODEL, "task": "text-generation", "model": {"type": "hf-causal-lm", "params": {
        "arch": "llama", "layers": 4, "hidden": 256, "heads": 4, "context_length": CONTEXT}}}
    return registry.Registry(storage).register(MODEL, folder, metrics={}, spec=spec, lineage={},
                                               input_schema=schema()).ref


def prompts() -> list[str]:
    """Sixteen prompts of 15-30 tokens from the README's prose."""
    lines = [line.strip() for line in (REPO / "README.md").read_text().splitlines()
             if len(line.strip()) > 80 and not line.strip().startswith(("|", "#", "`", "!", "-"))]
    return [line[:120] for line in lines[:16]]


# ------------------------------------------------------------------------------------------------
# In-process baseline: generate, one request at a time


class InProcess:
    """The folder's model and tokenizer with plain Transformers, greedy, on 1 thread."""

    def __init__(self, folder: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(1)
        self.tok = AutoTokenizer.from_pretrained(folder / "hf", local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(folder / "hf", local_files_only=True,
                                                          dtype=torch.float32).eval()

    def one(self, prompt: str) -> tuple[int, float, float]:
        """(new tokens, seconds to the first new token, seconds in all) of one greedy generation."""
        import torch
        from transformers import GenerationConfig
        from transformers.generation.streamers import BaseStreamer

        start = time.perf_counter()
        first: list[float] = []

        class First(BaseStreamer):
            def __init__(self) -> None:
                self.puts = 0

            def put(self, value: Any) -> None:
                self.puts += 1
                if self.puts == 2:  # the first put is the prompt
                    first.append(time.perf_counter() - start)

            def end(self) -> None:
                pass

        ids = torch.tensor([self.tok(prompt, add_special_tokens=False).input_ids])
        config = GenerationConfig(max_new_tokens=MAX_TOKENS, do_sample=False, num_beams=1,
                                  eos_token_id=self.model.generation_config.eos_token_id,
                                  pad_token_id=self.tok.pad_token_id)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                                      streamer=First())
        return out.shape[1] - ids.shape[1], first[0], time.perf_counter() - start

    def measure(self, texts: list[str], seconds: float) -> dict[str, Any]:
        self.one(texts[0])  # warm-up
        tokens, ttft, started, i = 0, [], time.perf_counter(), 0
        while time.perf_counter() - started < seconds:
            n, first, _ = self.one(texts[i % len(texts)])
            tokens, i = tokens + n, i + 1
            ttft.append(first * 1000)
        elapsed = time.perf_counter() - started
        return {"tokens_per_s": tokens / elapsed, "requests": i, "ttft_ms": ttft}


# ------------------------------------------------------------------------------------------------
# Atoll's side: Ray + Serve in this process, streamed through the proxy


def start_serve(storage: str, ref: str) -> float:
    import atoll.serving.replica
    import ray
    from atoll import cluster
    from ray import serve

    os.environ.update(cluster.serve_env())  # as `atoll up` starts Serve: the key middleware, Serve's tuning
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": HOST, "port": PORT})
    started = time.perf_counter()
    settings = {"min_replicas": 1, "max_replicas": 1, "num_cpus_per_replica": 1.0}
    serve.run(atoll.serving.replica.app({"model": ref, "storage": storage, "requested": ref, "settings": settings}),
              name=APP, route_prefix=ROUTE, blocking=False)
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://{HOST}:{PORT}{ROUTE}/healthz", timeout=5).status_code == 200:
                return time.perf_counter() - started
        time.sleep(0.5)
    raise RuntimeError(f"the bench app did not answer /healthz on port {PORT} within 300 s")


def stop_serve() -> None:
    import ray
    from ray import serve

    if ray.is_initialized():
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


async def _stream(client, prompt: str) -> tuple[int, float | None]:
    """One streamed completion: (completion tokens, seconds to the first text)."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start, first, tokens = time.perf_counter(), None, 0
    async with client.stream("POST", f"http://{HOST}:{PORT}{ROUTE}/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"the endpoint answered {resp.status_code}: {(await resp.aread())[:300]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if first is None and any(c.get("text") for c in event.get("choices") or []):
                first = time.perf_counter() - start
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return tokens, first


async def _load(texts: list[str], streams: int, warmup_s: float, seconds: float) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        async def worker(k: int, until: float, out: list[tuple[int, float | None]] | None) -> None:
            i = k
            while time.perf_counter() < until:
                result = await _stream(client, texts[i % len(texts)])
                i += streams
                if out is not None and time.perf_counter() <= until:
                    out.append(result)

        await asyncio.gather(*(worker(k, time.perf_counter() + warmup_s, None) for k in range(streams)))
        done: list[tuple[int, float | None]] = []
        started = time.perf_counter()
        await asyncio.gather(*(worker(k, started + seconds, done) for k in range(streams)))
        elapsed = time.perf_counter() - started
    return {"tokens_per_s": sum(t for t, _ in done) / elapsed, "requests": len(done),
            "ttft_ms": [f * 1000 for _, f in done if f is not None]}


def endpoint(texts: list[str], streams: int, warmup_s: float, seconds: float) -> dict[str, Any]:
    return asyncio.run(_load(texts, streams, warmup_s, seconds))


def replica_card() -> dict[str, Any]:
    import httpx

    return httpx.get(f"http://{HOST}:{PORT}{ROUTE}/", timeout=10).json()


# ------------------------------------------------------------------------------------------------


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


IN_NAMESPACE = "ATOLL_BENCH_IN_NAMESPACE"


def in_namespace() -> int:
    """This bench again, inside a network namespace of its own with Ray's HAProxy ingress: HAProxy's replicas bind
    every interface there, reachable from nothing outside it."""
    import subprocess

    from atoll import ingress

    mark = os.urandom(8).hex()  # HAProxy's files in a private folder of their own, as `atoll up` keeps them
    env = {**os.environ, IN_NAMESPACE: "1", ingress.ENV_VAR: "1", ingress.BINARY_VAR: ingress.wrapper_path() or "",
           **ingress.private_files(mark),
           "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}  # a quick shutdown
    cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable, *sys.argv]
    try:
        return subprocess.call(cmd, env=env)
    finally:
        ingress.remove_files(mark)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 round of 8 s per side")
    parser.add_argument("--ingress", choices=("proxy", "haproxy"), default="proxy",
                        help="what takes the HTTP requests: Serve's proxy, or Ray's HAProxy (in a network namespace)")
    args = parser.parse_args()
    if args.ingress == "haproxy" and not os.environ.get(IN_NAMESPACE):
        return in_namespace()
    rounds, seconds, warmup = (1, 8.0, 2.0) if args.quick else (3, 20.0, 3.0)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="atoll-llm-bench-"))
    storage = str(work / "storage")
    folder = build_model(work / "version")
    ref = register(storage, folder)
    texts = prompts()
    base = InProcess(folder)
    sides: dict[str, list[dict[str, Any]]] = {"in-process": [], "1 stream": [], "8 streams": []}
    with ForeignRay() as watcher:
        watcher.paused = True
        try:
            deploy_s = start_serve(storage, ref)
            watcher.own_session, watcher.paused = own_session(), False
            for r in range(rounds):
                print(f"round {r + 1}/{rounds}: in-process", file=sys.stderr)
                sides["in-process"].append(base.measure(texts, seconds))
                print(f"round {r + 1}/{rounds}: endpoint, 1 stream", file=sys.stderr)
                sides["1 stream"].append(endpoint(texts, 1, warmup, seconds))
                print(f"round {r + 1}/{rounds}: endpoint, 8 streams", file=sys.stderr)
                sides["8 streams"].append(endpoint(texts, 8, warmup, seconds))
            card = replica_card()
        finally:
            stop_serve()
        contention = watcher.note()

    def tps(side: str) -> float:
        return statistics.median(r["tokens_per_s"] for r in sides[side])

    base_tps = tps("in-process")
    base_ttft = [t for r in sides["in-process"] for t in r["ttft_ms"]]
    ours_ttft = [t for r in sides["1 stream"] for t in r["ttft_ms"]]
    common = {"quick": args.quick, "rounds": rounds, "seconds": seconds, "max_tokens": MAX_TOKENS,
              "model": "llama hidden 256, 4 layers, vocab 2000, float32, 1 thread", "contention": contention,
              "deploy_s": round(deploy_s, 1), "replica_threads": card.get("threads")}
    rows, lines = [], []
    suffix = ", haproxy" if args.ingress == "haproxy" else ""
    common["ingress"] = args.ingress
    for case in ("8 streams", "1 stream"):
        ours = tps(case)
        lines.append({"bench": "llm_serve", "case": case + suffix, "ours": ours, "baseline": base_tps, "unit": "tokens/s",
                      "ratio": ours / base_tps, "better": "higher", "target": TARGETS[case],
                      "met": ours / base_tps >= TARGETS[case],
                      "requests": sum(r["requests"] for r in sides[case]), **common,
                      **({"batching": card.get("batching")} if case == "8 streams" else {})})
        rows.append([case, f"{ours:,.0f}", f"{base_tps:,.0f}", "tokens/s", f"{ours / base_tps:.2f}x",
                     f"≥ {TARGETS[case]}x"])
    p50 = (quantile(ours_ttft, 0.5) or 0) - (quantile(base_ttft, 0.5) or 0)
    p99 = (quantile(ours_ttft, 0.99) or 0) - (quantile(base_ttft, 0.99) or 0)
    lines.append({"bench": "llm_serve", "case": "time to first token, 1 stream" + suffix, "ours": quantile(ours_ttft, 0.5),
                  "baseline": quantile(base_ttft, 0.5), "unit": "ms (p50)", "ratio": None, "better": "lower",
                  "added_p50_ms": p50, "added_p99_ms": p99, "ours_p99_ms": quantile(ours_ttft, 0.99),
                  "baseline_p99_ms": quantile(base_ttft, 0.99), "target_added_ms": TARGETS["ttft_added_ms"],
                  "met": p50 <= TARGETS["ttft_added_ms"] and p99 <= TARGETS["ttft_added_ms"], **common})
    rows.append(["time to first token (p50)", f"{quantile(ours_ttft, 0.5):.1f}", f"{quantile(base_ttft, 0.5):.1f}",
                 "ms", f"+{p50:.1f} ms (p99 +{p99:.1f})", f"≤ +{TARGETS['ttft_added_ms']:.0f} ms"])
    print_table(f"llm_serve: OpenAI endpoint ({args.ingress}) vs generate in-process ({contention})",
                ["case", "endpoint", "in-process", "unit", "ratio / added", "target"], rows)
    for line in lines:
        print(result_line(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`skipdecode bench-serve`: open-loop load on the engine, static batcher against continuous
batching at full depth, at 3x and with a per-request mix of speedups (runtime/serve_bench.py).

Without --rates it finds the peak: a saturating closed loop per configuration, then Poisson
rates at half and 80% of the continuous full-depth peak.

With --url it sends the same workloads over HTTP to any OpenAI-compatible server (ours, vLLM)
instead (serve/loadgen.py): the server batches as it likes, so --modes and --max-batch do not
apply; --tokenizer (or --export) gives the workload's vocabulary."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from skipdecode.errors import SkipDecodeError


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise SkipDecodeError(f"expected comma-separated numbers, got {text!r}") from None


def add_arguments(p):
    p.add_argument("--export", default=None, help="export folder (onnxruntime); with --url, only its tokenizer")
    p.add_argument("--url", default=None, help="an OpenAI-compatible server's /v1 base: load it over HTTP")
    p.add_argument("--model", default=None, help="--url: the model name to send (default: the server's first)")
    p.add_argument("--tokenizer", default=None, help="--url: folder with tokenizer.json (default: --export)")
    p.add_argument("--label", default="http", help="--url: the records' mode field (e.g. vllm-fp32)")
    p.add_argument("--api-key", default=None, help="--url: bearer key")
    p.add_argument("--warmup", type=int, default=4, help="--url: warm-up requests before timing (default 4)")
    p.add_argument("--timeout", type=float, default=900.0, help="--url: seconds one run may take (default 900)")
    p.add_argument("--workload", choices=("e2e", "chat"), default="chat")
    p.add_argument("--modes", default="static,continuous",
                   help="static and/or continuous (default both); none with --overhead: that check alone")
    p.add_argument("--speedups", default=None,
                   help="continuous-batching speedups; 'mix' draws 1 or 3 per request (default 1,3,mix); with "
                   "--url, sent as the skipdecode extension; 'default' sends none (default: default)")
    p.add_argument("--rates", default=None, help="requests/s, comma-separated; 'inf' saturates (default: "
                   "inf, then 0.5 and 0.8 of the continuous full-depth peak)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals per rate (default 30)")
    p.add_argument("--requests", type=int, default=None, help="requests of a saturating run (default 3 x --max-batch)")
    p.add_argument("--max-batch", type=int, default=16, help="KV rows (default 16)")
    p.add_argument("--prompt-tokens", default="32,256", help="chat: prompt length range (default 32,256)")
    p.add_argument("--output-tokens", default="128,512", help="chat: output length range (default 128,512)")
    p.add_argument("--window", type=int, default=32, help="the 3x schedule's window (default 32, as bench)")
    p.add_argument("--data", default=None, help="E2E folder for --workload e2e (default ../shared/data/e2e)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--overhead", action="store_true", help="also measure the row-range mechanism's cost")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", required=True, help="output JSON (records and settings)")
    p.add_argument("--plot", default=None, help="latency-vs-throughput PNG")


def _jobs(args, tokenizer, n: int):
    from skipdecode.runtime import serve_bench as sb

    if args.workload == "chat":
        ranges = [tuple(int(x) for x in _floats(r)) for r in (args.prompt_tokens, args.output_tokens)]
        if any(len(r) != 2 or not 1 <= r[0] <= r[1] for r in ranges):
            raise SkipDecodeError("--prompt-tokens and --output-tokens take LOW,HIGH with 1 <= LOW <= HIGH")
        return sb.chat_jobs(n, tokenizer.vocab_size, args.seed, *ranges)
    from skipdecode.datasets import E2E_TEST, find_e2e
    from skipdecode.io import cache_root
    from skipdecode.data import group_examples, load_examples

    folder = find_e2e(args.data, cache_root() / "e2e")
    examples = group_examples(load_examples(Path(folder) / E2E_TEST, "e2e"))
    prompts = [tokenizer.encode(e.prompt) for e in examples]
    lengths = [len(tokenizer.encode(ref)) + 1 for e in examples for ref in e.references]
    return sb.e2e_jobs(n, prompts, lengths, args.seed)


def run(args) -> int:
    import numpy as np

    from skipdecode.io import atomic_write_text
    from skipdecode.runtime import serve_bench as sb
    from skipdecode.runtime.api import Runtime
    from skipdecode.runtime.bench import machine_info

    if args.url:
        return run_http(args)
    if not args.export:
        raise SkipDecodeError("give --export (in process) or --url (over HTTP)")
    modes = [m for m in args.modes.split(",") if m]
    if modes == ["none"] and args.overhead:
        modes = []  # the range-overhead check alone
    elif not modes or any(m not in sb.MODES for m in modes):
        raise SkipDecodeError(f"--modes takes {', '.join(sb.MODES)} (or none with --overhead), got {args.modes!r}")
    speedups = [s for s in (args.speedups or "1,3,mix").split(",") if s]
    machine = machine_info()
    rt = Runtime.load(args.export, threads=args.threads)
    solve = lambda s: rt.schedule(speedup=s, window=args.window)  # noqa: E731: the export's family
    for s in speedups:
        if s != "mix":
            solve(float(s))  # a speedup the depth cannot reach fails here, before any run
    n_sat = args.requests or 3 * args.max_batch
    jobs = _jobs(args, rt.tokenizer, 4000)
    max_len = max(len(j.prompt) + j.new_tokens for j in jobs)
    rng = np.random.default_rng(args.seed)
    mix = [solve(float(rng.choice([1.0, 3.0]))) for _ in jobs]
    configs = [("static", "1")] if "static" in modes else []
    configs += [("continuous", s) for s in speedups] if "continuous" in modes else []

    def schedules(sp: str):
        return mix if sp == "mix" else [solve(float(sp))] * len(jobs)

    # warm-up: sessions, bindings and shapes stay out of the timed runs
    sb.serve(rt.backend, jobs[:args.max_batch], schedules("1"), "continuous", float("inf"), args.max_batch, max_len)
    records = []
    for mode, sp in configs:
        rec = sb.serve(rt.backend, jobs[:n_sat], schedules(sp), mode, float("inf"), args.max_batch, max_len,
                       args.seed, label=sp)
        print(json.dumps(sb.to_dicts([rec])[0]), file=sys.stderr)
        records.append(rec)
    if args.rates is not None:
        rates = [r for r in _floats(args.rates) if np.isfinite(r)]
    elif not records:
        rates = []
    else:
        base = next((r for r in records if r.mode == "continuous" and r.speedup == "1"), records[0])
        rates = sb.peak_rates(base.requests_per_s)
    for rate in rates:
        n = max(1, int(rate * args.duration))
        for mode, sp in configs:
            rec = sb.serve(rt.backend, jobs[:n], schedules(sp), mode, rate, args.max_batch, max_len, args.seed,
                           timeout_s=3 * args.duration, label=sp)
            print(json.dumps(sb.to_dicts([rec])[0]), file=sys.stderr)
            records.append(rec)
    overhead = None
    if args.overhead:
        P = min(64, int(np.median([len(j.prompt) for j in jobs])))
        N = min(128, int(np.median([j.new_tokens for j in jobs])))
        prompt = next(j.prompt for j in jobs if len(j.prompt) >= P)[:P]
        overhead = [sb.range_overhead(rt.backend, args.max_batch, s, prompt, N, stagger=max(1, N // (2 * args.max_batch)))
                    for s in (solve(1.0), solve(3.0))]
    machine["loadavg_1m_end"] = machine_info()["loadavg_1m"]
    report = {"machine": machine,
              "settings": {k: v for k, v in vars(args).items() if not k.startswith("_")},
              "records": sb.to_dicts(records), "range_overhead": overhead}
    atomic_write_text(args.json, json.dumps(report, indent=1))
    print(f"{machine['cpu']}, {machine['cores']} cores, load {machine['loadavg_1m']} -> {machine['loadavg_1m_end']}")
    print(sb.records_table(records))
    if overhead:
        for o in overhead:
            print(f"row ranges vs lockstep at batch {o['batch']}, {o['schedule']}: overhead {100 * o['overhead']:.1f}%")
    if args.plot:
        sb.plot(records, args.plot)
    return 0


def run_http(args) -> int:
    """The workloads over HTTP: a saturating run per speedup, then the Poisson rates."""
    import numpy as np

    from skipdecode.io import atomic_write_text
    from skipdecode.runtime import serve_bench as sb
    from skipdecode.runtime.bench import machine_info
    from skipdecode.serve import loadgen
    from skipdecode.tokenizer import Tokenizer

    folder = args.tokenizer or args.export
    if not folder:
        raise SkipDecodeError("--url needs --tokenizer (or --export): the workload's vocabulary")
    speedups = [None if s == "default" else _floats(s)[0] for s in (args.speedups or "default").split(",") if s]
    if not speedups:
        raise SkipDecodeError("--speedups is empty")
    machine = machine_info()
    model = args.model or loadgen.served_model(args.url, args.api_key)
    jobs = _jobs(args, Tokenizer.from_dir(folder), 4000)
    kw = dict(model=model, label=args.label, seed=args.seed, api_key=args.api_key)
    n_sat = args.requests or 3 * args.max_batch
    records = []

    def measure(n: int, rate: float, speedup, timeout: float):
        rec, samples = loadgen.run(args.url, jobs[:n], rate, speedup=speedup, timeout_s=timeout, **kw)
        failed = [s.error for s in samples if not s.ok]
        if failed:
            print(f"{len(failed)} of {n} requests failed; first: {failed[0]}", file=sys.stderr)
        print(json.dumps(sb.to_dicts([rec])[0]), file=sys.stderr)
        records.append(rec)
        return rec

    if args.warmup:  # the server's first requests (allocation, compilation) stay out of the timed runs
        warm = [sb.Job(j.prompt, min(j.new_tokens, 16)) for j in jobs[:args.warmup]]
        loadgen.run(args.url, warm, float("inf"), speedup=speedups[0], timeout_s=args.timeout, **kw)
    for sp in speedups:
        measure(n_sat, float("inf"), sp, args.timeout)
    rates = ([r for r in _floats(args.rates) if np.isfinite(r)] if args.rates is not None
             else sb.peak_rates(records[0].requests_per_s))
    for rate in rates:
        n = max(1, int(rate * args.duration))
        for sp in speedups:
            measure(n, rate, sp, args.timeout)
    machine["loadavg_1m_end"] = machine_info()["loadavg_1m"]
    report = {"machine": machine, "url": args.url, "model": model,
              "settings": {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "api_key"},
              "records": loadgen.json_records(records)}
    atomic_write_text(args.json, json.dumps(report, indent=1))
    print(f"{machine['cpu']}, {machine['cores']} cores, load {machine['loadavg_1m']} -> {machine['loadavg_1m_end']}")
    print(sb.records_table(records))
    if args.plot:
        sb.plot(records, args.plot)
    return 0

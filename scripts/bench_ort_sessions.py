"""ONNX Runtime session settings for a chain of per-layer sessions, measured in one run:
per-session thread pools with intra-op threads (1 or all cores) and spinning (on or off), and
one global thread pool shared by every session. Many sessions run in series, so a spinning
per-session pool keeps burning a core after its call while the next session's pool wants it.
Decode tokens/s, medians over interleaved repeats.

    python scripts/bench_ort_sessions.py build/smollm2 --batch-sizes 1,32 --repeats 3
"""

import argparse
import os
import statistics
import subprocess
import sys

from skipdecode.runtime.bench import LoopRunner, make_prompts
from skipdecode.runtime.onnxruntime_backend import OnnxRuntimeBackend, session_options
from skipdecode.schedule import Schedule


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("export")
    p.add_argument("--batch-sizes", default="1,32")
    p.add_argument("--speedups", default="1,3")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--global-pool", action="store_true",
                   help="measure only the global pool (a process cannot mix it with per-session pools)")
    args = p.parse_args()
    import onnxruntime as ort
    from onnxruntime.capi import _pybind_state

    cores = os.cpu_count() or 1
    ort.set_default_logger_severity(3)  # the global pool warns once per session that sizes are ignored
    if args.global_pool:
        # sized before the first session creates ONNX Runtime's environment; every session then
        # shares it (spinning off, as the per-session pools below that do not collapse)
        _pybind_state.set_global_thread_pool_sizes(cores, 1)
        shared: ort.SessionOptions = session_options(cores, spinning=False)
        shared.use_per_session_threads = False
        variants = {f"global pool, {cores} threads": dict(options=shared)}
    else:
        variants = {f"threads={t} spinning={'on' if s else 'off'}": dict(threads=t, spinning=s)
                    for t in sorted({1, cores}) for s in (False, True)}
    runners = {name: LoopRunner(OnnxRuntimeBackend(args.export, **kw), name) for name, kw in variants.items()}
    L = next(iter(runners.values())).backend.num_layers
    vocab = next(iter(runners.values())).backend.inner.manifest.vocab_size
    if not args.global_pool:
        print(f"{args.export}: decode tokens/s, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
              f"median of {args.repeats}, {cores} cores")
        print(f"{'setting':28}" + "".join(f"{f'B={b} {s}x':>12}" for b in args.batch_sizes.split(",")
                                            for s in args.speedups.split(",")))
    results = {name: [] for name in runners}
    for b in (int(x) for x in args.batch_sizes.split(",")):
        prompts = make_prompts(vocab, b, args.prompt_len)
        for s in (float(x) for x in args.speedups.split(",")):
            sched = Schedule.full(L) if s == 1 else Schedule.for_speedup(L, s, args.new_tokens)
            times = {name: [] for name in runners}
            for r in runners.values():  # warm-up
                r.run(prompts, sched, 4)
            for _ in range(args.repeats):
                for name, r in runners.items():
                    t = r.run(prompts, sched, args.new_tokens)
                    times[name].append(b * (args.new_tokens - 1) / t.decode_s)
            for name in runners:
                results[name].append(statistics.median(times[name]))
    for name, vals in results.items():
        print(f"{name:28}" + "".join(f"{v:12.1f}" for v in vals), flush=True)
    if not args.global_pool:
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--global-pool"], check=True)


if __name__ == "__main__":
    main()

"""`skipdecode compare`: eval reports side by side (markdown table on stdout, plot, JSON)."""

from __future__ import annotations

import json
import sys


def add_arguments(p):
    p.add_argument("reports", nargs="+", metavar="REPORT", help="report.json files or eval --out folders")
    p.add_argument("--plot", help="PNG of ROUGE-L and BLEU against speedup, one curve per method")
    p.add_argument("--x", choices=["layer", "measured", "decode"], default="layer",
                   help="x axis: realised layer speedup (default), measured tokens/s over full depth, or the "
                   "same for decode-only tokens/s (prefill excluded)")
    p.add_argument("--json", help="write one flat record per report to this file")
    p.add_argument("--paired", action="store_true",
                   help="also each report's ROUGE-L minus the first report's, with a 95%% paired-bootstrap "
                   "interval over the inputs (needs outputs.jsonl beside each report.json)")


def run(args) -> int:
    from skipdecode.evaluation.compare import markdown_table, mismatches, plot, summary_records
    from skipdecode.evaluation.report import load_report
    from skipdecode.io import atomic_write_text

    reports = [load_report(r) for r in args.reports]
    for note in mismatches(reports):
        print(f"compare: warning: {note}", file=sys.stderr)
    records = summary_records(reports)
    print(markdown_table(records), end="")
    if args.paired:
        from skipdecode.evaluation.compare import load_outputs, paired_bootstrap

        base = load_outputs(reports[0])
        for r in reports[1:]:
            d, lo, hi = paired_bootstrap(load_outputs(r), base)
            print(f"ROUGE-L {r['method']} ({r['_path']}) minus {reports[0]['method']} ({reports[0]['_path']}): "
                  f"{d:+.2f}, 95% interval [{lo:+.2f}, {hi:+.2f}] over {len(base)} inputs (paired bootstrap)")
    if args.json:
        atomic_write_text(args.json, json.dumps(records, indent=2) + "\n")
    if args.plot:
        print(f"compare: wrote {plot(reports, args.plot, args.x)}", file=sys.stderr)
    return 0

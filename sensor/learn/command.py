"""`sensor model train|score` and `sensor features`: the command-line side of sensor.learn."""
from __future__ import annotations

import sys

import orjson

from ..errors import SensorError

TABLES = ("x86_64", "i386")  # syscall tables of ADFA-LD traces (sensor/data)


def add_arguments(sub) -> None:
    mo = sub.add_parser("model", help="train anomaly detectors on normal runs and score runs with them")
    msub = mo.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    tr = msub.add_parser("train", help="learn from the normal runs under DIR... (attack runs are not learnt)")
    tr.add_argument("paths", nargs="+", metavar="DIR", help="trace directories, ADFA-LD or LID-DS 2021 folders")
    tr.add_argument("-o", "--output", required=True, metavar="MODEL", help="model file to write (JSON)")
    tr.add_argument("--method", default="stide", choices=("stide", "ngram-freq", "iforest"))
    tr.add_argument("--n", type=int, help="calls per window (stide 6, ngram-freq 3)")
    tr.add_argument("--frame", type=int, help="windows per locality frame (stide 20, ngram-freq 10)")
    tr.add_argument("--quantile", type=float, default=0.99,
                    help="threshold: this quantile of held-out normal process scores (0.99)")
    sc = msub.add_parser("score", help="score each run (-log10 p, docs/ml.md) and process under DIR...: "
                         "higher is more anomalous")
    sc.add_argument("model", metavar="MODEL")
    sc.add_argument("paths", nargs="+", metavar="DIR")
    sc.add_argument("--json", action="store_true", help="one JSON object per run")
    sc.add_argument("--top", type=int, default=10, help="processes listed per run (10)")
    fe = sub.add_parser("features", help="per-process or per-window feature tables of runs, and which columns tell")
    fe.add_argument("paths", nargs="+", metavar="DIR", help="trace directories, ADFA-LD or LID-DS 2021 folders")
    fe.add_argument("-o", "--output", metavar="OUT.parquet", help="write the table here (Parquet)")
    fe.add_argument("--per", choices=("process", "window"), default="process")
    fe.add_argument("--window", type=float, default=1.0, metavar="SECONDS", help="--per window: its length (1)")
    fe.add_argument("--ngram", type=int, default=1, help="n of the ngram.* count columns (1: each call)")
    fe.add_argument("--report", action="store_true", help="variance, mutual information with the labels, "
                    "redundant pairs")
    fe.add_argument("--json", action="store_true", help="the report as JSON")
    for p in (tr, sc, fe):
        p.add_argument("--syscall-table", choices=TABLES,
                       help="numbers of ADFA-LD traces (default: the export's manifest, else i386)")


def run(args) -> int:
    if args.command == "model" and args.model_command == "train":
        return _train(args)
    if args.command == "model":
        return _score(args)
    if args.command == "features":
        return _features(args)
    raise SensorError(f"unknown command {args.command}")


def _train(args) -> int:
    from . import modelfile, models, runs as runs_mod

    if not 0 < args.quantile <= 1:
        raise SensorError(f"--quantile {args.quantile}: between 0 (excluded) and 1")
    try:
        params = models.check_params(args.method, args.n, args.frame)
    except ValueError as exc:
        raise SensorError(str(exc)) from None
    found = runs_mod.read(args.paths, args.syscall_table)
    doc = modelfile.train(found, args.method, params, args.quantile)
    modelfile.save(doc, args.output)
    n = len(doc["training"])
    print(f"sensor model: {args.method} {doc['params']} trained on {n} normal runs "
          f"({sum(t['processes'] for t in doc['training'])} processes; {len(found) - n} other runs not learnt); "
          f"threshold {doc['threshold']:.4g} ({doc['threshold_rule']}) -> {args.output}", file=sys.stderr)
    return 0


def _score(args) -> int:
    from . import modelfile, runs as runs_mod

    doc, model = modelfile.load(args.model)
    found = runs_mod.read(args.paths, args.syscall_table)
    results = modelfile.score(doc, model, found, args.top)
    out = sys.stdout
    for r in results:
        if args.json:
            out.write(orjson.dumps(r).decode() + "\n")
            continue
        flag = "ANOMALOUS" if r["anomalous"] else "normal"
        out.write(f"{r['score']:.4f}  {flag:<9}  {r['label']:<20}  {r['source']}  (highest process "
                  f"{r['max_process_score']:.4f})\n")
        for p in r["processes"][:3]:
            why = "; ".join(" ".join(t["sequence"]) if "sequence" in t else f"{t['feature']}={t['value']:.4g}"
                            for t in p["top"][:2])
            new = "" if p["program_seen"] else " (a program training never ran)"
            out.write(f"    {p['score']:.4f}  {p['name']}[{p['process']}]{new}  {why}\n")
    flagged = sum(r["anomalous"] for r in results)
    print(f"sensor model: {len(results)} runs scored with {doc['method']}, {flagged} above the threshold "
          f"{doc['threshold']:.4g}", file=sys.stderr)
    return 0


def _features(args) -> int:
    import pyarrow.parquet as pq

    from . import features, runs as runs_mod

    if args.window <= 0 or not 1 <= args.ngram <= 6:
        raise SensorError(f"--window {args.window} / --ngram {args.ngram}: a window > 0 s, n from 1 to 6")
    if not args.output and not args.report:
        raise SensorError("nothing to do: give -o OUT.parquet, --report, or both")
    found = runs_mod.read(args.paths, args.syscall_table)
    rows = (features.per_process(found, args.ngram) if args.per == "process"
            else features.per_window(found, args.window))
    if args.output:
        pq.write_table(features.table(rows), args.output, compression="zstd")
        print(f"sensor features: {len(rows)} rows ({args.per}) of {len(found)} runs -> {args.output}",
              file=sys.stderr)
    if args.report:
        rep = features.report(rows)
        if args.json:
            print(orjson.dumps(rep).decode())
        else:
            print(_format_report(rep))
    return 0


def _format_report(rep: dict) -> str:
    lines = [f"{rep['rows']} rows, {rep['columns']} feature columns, {len(rep['constant'])} constant"]
    lines.append("mutual information with normal/attack (nats; 0 = tells nothing):")
    mi = rep["mutual_information"]
    lines += ([f"  {v:8.4f}  {c}" for c, v in mi.items()] if mi else
              [f"  (not computed: needs {rep['missing']})" if rep.get("missing") else "  (one label only: nothing to tell apart)"])
    lines.append("highest variance:")
    lines += [f"  {v:12.4g}  {c}" for c, v in rep["variance"].items()]
    lines.append(f"redundant pairs (|r| >= {rep['redundant_threshold']}): {len(rep['redundant_pairs'])}")
    lines += [f"  {r:+.3f}  {a} ~ {b}" for a, b, r in rep["redundant_pairs"][:20]]
    return "\n".join(lines)

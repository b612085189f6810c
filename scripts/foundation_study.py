#!/usr/bin/env python
"""Run a subset of the foundation study's runs: some strategies, fractions and seeds.

``irreptensor-ml transfer --preset foundation`` runs everything (and reports only when every
planned run is stored).  On a CPU only ``foundation-frozen`` is cheap (its head trains on cached
trunk features), so this script executes the runs of chosen strategies -- their tuning runs first,
then the final runs of the chosen fractions and seeds with the candidates chosen on validation --
into the study's own store, with the study's own functions: the runs have the ids, files and
records the full study will find and skip.  Resumable (finished runs are skipped).  Examples::

    nice -n 19 python scripts/foundation_study.py --from-cache study_data.pt             # foundation-frozen, all
    python scripts/foundation_study.py --from-cache d.pt --fractions 1.0 --seeds 0       # the cheapest point
    python scripts/foundation_study.py --strategies foundation-finetune --workers 4      # on a GPU machine
"""

from __future__ import annotations

import argparse
import copy
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="foundation")
    parser.add_argument("--from-cache", default=None, help="exported study-data file")
    parser.add_argument("--strategies", nargs="+", default=["foundation-frozen"])
    parser.add_argument("--targets", nargs="+", default=None, help="default: the preset's")
    parser.add_argument("--fractions", nargs="+", type=float, default=None, help="default: the preset's")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: the preset's")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="study-config override (changes run ids unless execution-only)")
    args = parser.parse_args(argv)

    from irreptensor_ml.transfer.presets import load_study_config
    from irreptensor_ml.transfer.execute import _quiet, execute_tasks, import_runs, prepare_features
    from irreptensor_ml.transfer.plan import Task, plan_runs, plan_trials, selection_from_records, tuning_needed
    from irreptensor_ml.transfer.store import RunStore, data_file, load_study_data

    _quiet()
    config = load_study_config(args.preset, args.overrides)
    unknown = sorted(set(args.strategies) - set(config["strategies"]))
    if unknown:
        parser.error(f"strategies {unknown} are not in the {args.preset} study {config['strategies']}")
    sub = copy.deepcopy(config)
    sub["strategies"] = list(args.strategies)
    sub["targets"] = list(args.targets or config["targets"])
    data = load_study_data(config, args.from_cache)
    data.check_union_split()
    store = RunStore(config["results_dir"])
    common = dict(workers=args.workers, min_train_steps=int(config["min_train_steps"]),
                  eval_batch_size=int(config["eval_batch_size"]))
    if args.workers > 1:
        common["data_path"] = data_file(store.root, data, args.from_cache)

    def execute(tasks: list[Task]) -> None:
        imported = import_runs(tasks, store, config["reuse_runs_from"])
        if imported:
            print(f"{imported} run(s) copied from {config['reuse_runs_from']}")
        prepare_features(tasks, data, store)
        failed = execute_tasks(tasks, data, store, **common)["failed"]
        if failed:
            print("\n".join(f"FAILED {rid}: {err}" for rid, err in failed.items()), file=sys.stderr)
            raise SystemExit(1)

    pretrain: dict = {}  # the foundation strategies need no pretraining run
    selection = None
    if tuning_needed(sub):
        trials = plan_trials(sub, data, pretrain)
        print(f"tuning: {len(trials)} runs")
        execute([Task(s, False, "tuning") for s in trials])
        selection = selection_from_records(sub, trials, store)
        for target, by_strat in selection.items():
            for strat, sel in by_strat.items():
                print(f"chosen for {strat} on {target}: candidate {sel['chosen']} {sel['overrides'][sel['chosen']]} "
                      f"(val Frobenius MAE {sel['val_frobenius_mae']})")
    finals = [
        s for s in plan_runs(sub, data, pretrain, selection)
        if (args.fractions is None or s.fraction in args.fractions) and (args.seeds is None or s.seed in args.seeds)
    ]
    print(f"final: {len(finals)} runs")
    execute([Task(s, True, "final") for s in finals])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

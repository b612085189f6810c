"""Command-line interface ``irreptensor-ml`` (entry point ``irreptensor_ml.cli:main``).

Subcommands::

    irreptensor-ml train    [--config FILE] [--run-dir DIR] [--set key=value ...]
    irreptensor-ml evaluate RUN_DIR [--split test] [--device cpu] [--out DIR] [--no-plots]
    irreptensor-ml predict  FILE... [--model RUN_DIR|model.pt] [--property elastic] [--format table|json]
    irreptensor-ml transfer [--preset quick|full-cpu|full|...] [--workers N] ...   (irreptensor_ml.transfer.cli)

``predict`` reads CIF, POSCAR/CONTCAR or pymatgen JSON structure files and prints, per file, the
predicted tensor as a Voigt matrix (order xx, yy, zz, yz, xz, xy; elastic 6x6 GPa, piezoelectric
3x6 C/m^2, dielectric 3x3), its irreps by block, and derived properties (K_VRH, G_VRH, Y_VRH for
elastic; mean eigenvalue for dielectric; max |e_ij| for piezoelectric).

User errors (a missing file, a file that is not a structure, an unknown property, a property the
model has no head for, a bad or unfinished model/run directory, a bad config or ``--set``, a run
directory another training is using) print ONE line ``irreptensor-ml <command>: error: ...`` to
stderr and exit with status 2 (argparse's convention); ``--debug`` re-raises them with a traceback.
A training stopped by SIGTERM prints one line and exits with 143 (128 + SIGTERM).

``transfer`` runs the transfer-learning study (its options: :mod:`irreptensor_ml.transfer.cli`).
Adding a subcommand: write ``_add_<name>(subparsers)`` that creates the subparser and sets
``func=<handler(args) -> int>``, and append it to :data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

PROG = "irreptensor-ml"
EXIT_USAGE = 2


class CLIError(Exception):
    """A user error reported as one line on stderr with exit status 2."""


# --------------------------------------------------------------------------------------- train


def _add_train(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train", help="train a tensor predictor",
        description="Train a TensorPredictor from a YAML config (see configs/default.yaml).",
    )
    p.add_argument("--config", default=None,
                   help="YAML config merged over configs/default.yaml (a path, or a shipped name "
                        "such as 'tiny')")
    p.add_argument("--run-dir", default=None,
                   help="output directory (default: runs/<config name>-<UTC timestamp>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry: dotted key, YAML value, e.g. trainer.max_epochs=5 "
                        "(repeatable)")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """``train``: config = default.yaml <- ``--config`` <- ``--set`` overrides (validated by
    :func:`irreptensor_ml.train.config.load_config`), then :func:`irreptensor_ml.train.fit`."""
    from irreptensor_ml.train.config import load_config

    config = load_config(args.config, args.overrides)
    from irreptensor_ml.train import fit

    if args.run_dir:
        run_dir = Path(args.run_dir)
    else:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        name = Path(args.config).stem if args.config else "default"
        run_dir = Path("runs") / f"{name}-{stamp}"

    from irreptensor_ml.train.fit import RunDirectoryLocked, TrainingInterrupted

    try:
        model_path = fit(config, run_dir)
    except RunDirectoryLocked as exc:
        raise CLIError(str(exc)) from exc
    except TrainingInterrupted as exc:  # one line, and the signal's exit status (143)
        print(f"{PROG} train: {exc}", file=sys.stderr)
        return int(exc.code)
    print(f"run written to {run_dir}; model: {model_path}")
    return 0


# ------------------------------------------------------------------------------------ evaluate


def _add_evaluate(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate", help="evaluate a trained run on a data split",
        description="Metrics, predictions JSON and parity plots of a trained run on one split.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by 'train'")
    p.add_argument("--split", default="test", help="train, val or test (default: test)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--out", default=None, help="output directory (default: RUN_DIR/eval_<split>)")
    p.add_argument("--no-plots", action="store_true", help="skip the parity and learning-curve plots")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``evaluate``: run :func:`irreptensor_ml.evaluate.evaluate_run` and print the metrics."""
    from irreptensor_ml.evaluate import evaluate_run
    from irreptensor_ml.metrics import format_metrics_table

    run_dir = Path(args.run_dir)
    if not run_dir.exists():
        raise CLIError(f"run directory not found: {run_dir}")
    result = evaluate_run(run_dir, split=args.split, out_dir=args.out, device=args.device,
                          plots=not args.no_plots)
    print(format_metrics_table(result.metrics))
    print(f"\nwritten to {result.out_dir}")
    return 0


# ------------------------------------------------------------------------------------- predict


def _add_predict(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "predict", help="predict tensors of structure files",
        description="Predict a tensor for each CIF / POSCAR / pymatgen-JSON structure file.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="structure files")
    p.add_argument("--model", default=None,
                   help="run directory or model.pt (default: shipped pretrained model)")
    p.add_argument("--property", default="elastic",
                   help="elastic, dielectric or piezoelectric (default: elastic)")
    p.add_argument("--format", default="table", choices=("table", "json"), help="output format")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.set_defaults(func=cmd_predict)


def prediction_records(
    files: Sequence[str], property: str, model: Any = None, device: str = "cpu"
) -> list[dict[str, Any]]:
    """Predict ``property`` for each file; one JSON-ready dict per file.

    Each dict: ``file``, ``formula``, ``property``, ``units``, ``voigt`` (nested lists: elastic
    6x6, piezoelectric 3x6, dielectric the 3x3 matrix),
    ``irreps`` (``{block: [coefficients]}``), ``irreps_layout`` (irreps string) and ``derived``
    (``{name: value}``).
    """
    import irreptensor as it
    from irreptensor_ml import metrics as M
    from irreptensor_ml import predict as P

    M.check_property(property)
    # one unreadable file or flagged structure gives an ``error`` entry, not a failed call
    errors: dict[int, str] = {}
    structures: list[Any] = []
    first_error: Exception | None = None
    for k, f in enumerate(files):
        try:
            structures.append(P.read_structure(f))
        except (ValueError, FileNotFoundError, OSError) as exc:
            first_error = first_error or exc
            errors[k] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            structures.append(None)
    good = [k for k in range(len(files)) if k not in errors]
    if not good:  # nothing to predict: the first file's error is the command's
        raise first_error  # type: ignore[misc]
    loaded = P.load_predictor(model, property)
    loaded.require(property)
    predicted = P.predict_irreps([structures[k] for k in good], property, loaded, device=device)
    x = np.full((len(files), predicted.shape[1]), np.nan)
    x[good] = predicted
    ok = np.isfinite(x).all(axis=1)
    for k in good:
        if not ok[k]:
            errors[k] = "no finite prediction (flagged structure: see the warning above)"
    finite = np.flatnonzero(ok)
    if finite.size == 0:
        return [{"file": str(f), "property": property, "error": errors[k]} for k, f in enumerate(files)]
    row = {int(k): i for i, k in enumerate(finite)}  # file index -> row of the finite predictions
    cart = np.asarray(it.compose(x[finite], property), dtype=np.float64)
    # dielectric: the 3x3 matrix itself (its 6-vector Voigt form is not what users read)
    voigt = cart if property == "dielectric" else np.asarray(it.to_voigt(cart, property), dtype=np.float64)
    derived = M.derived_scalars(cart, property)
    layout = str(it.irreps(property))
    blocks = M.irrep_blocks(layout)
    out = []
    for k, (f, s) in enumerate(zip(files, structures)):
        if k in errors:
            out.append({"file": str(f), "property": property, "error": errors[k]})
            continue
        out.append({
            "file": str(f),
            "formula": s.composition.reduced_formula,
            "property": property,
            "units": M.TENSOR_UNITS[property],
            "voigt": voigt[row[k]].tolist(),
            "irreps_layout": layout,
            "irreps": {name: x[k, sl].tolist() for name, sl in blocks},
            "derived": {name: float(v[row[k]]) for name, v in derived.items()},
        })
    return out


def format_prediction_table(rec: dict[str, Any]) -> str:
    """Human-readable text block for one :func:`prediction_records` entry."""
    from irreptensor_ml.metrics import DERIVED_UNITS

    unit = f" [{rec['units']}]" if rec["units"] else ""
    header = "matrix (x y z):" if rec["property"] == "dielectric" else "Voigt (xx yy zz yz xz xy):"
    lines = [f"{rec['file']}  ({rec['formula']})  {rec['property']}{unit}", header]
    for row in np.atleast_2d(np.asarray(rec["voigt"])):
        lines.append("  " + " ".join(f"{v:10.4g}" for v in row))
    lines.append(f"irreps ({rec['irreps_layout']}):")
    for name, vals in rec["irreps"].items():
        lines.append(f"  {name:6s} " + " ".join(f"{v:10.4g}" for v in vals))
    lines.append("derived:")
    for name, v in rec["derived"].items():
        u = DERIVED_UNITS.get(name, "")
        lines.append(f"  {name:16s} {v:10.4g}{' ' + u if u else ''}")
    return "\n".join(lines)


def cmd_predict(args: argparse.Namespace) -> int:
    """``predict``: print predictions for each file as a table or JSON."""
    from irreptensor_ml.metrics import check_property

    check_property(args.property)
    records = prediction_records(args.files, args.property, args.model, args.device)
    if args.format == "json":
        print(json.dumps(records, indent=2))
    else:
        print("\n\n".join(format_prediction_table(r) for r in records if "error" not in r))
    failed = [r for r in records if "error" in r]
    for r in failed:
        print(f"{PROG} predict: error: {r['file']}: {r['error']}", file=sys.stderr)
    return EXIT_USAGE if failed else 0


# ---------------------------------------------------------------------------------------- main

def _add_transfer(subparsers: Any) -> None:
    from irreptensor_ml.transfer.cli import add_transfer_parser

    add_transfer_parser(subparsers)


#: Functions that each add one subcommand; extend this list to add one.
SUBCOMMANDS: list[Callable[[Any], None]] = [_add_train, _add_evaluate, _add_predict, _add_transfer]


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with one subparser per entry of :data:`SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Equivariant GNN prediction of crystal tensors (irreps).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 user error, 143 training stopped by SIGTERM)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CLIError, FileNotFoundError, ValueError) as exc:
        if args.debug:
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in msg:
            msg = f"{msg}: {exc.filename}"
        print(f"{PROG} {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

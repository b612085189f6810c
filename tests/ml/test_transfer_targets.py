"""Issue 14: the transfer study on the per-property models -- part targets (the electronic
dielectric tensor), per-target training settings (exp outputs, parts heads, per-property losses),
per-target strategies (elastic as a target of the foundation strategies), the ``learn-cpu`` preset,
and the report's baselines (trivial ones and the random forest read from ``results/baselines``).

Runs on the hand-made synthetic study data of ``run_id_fixture`` (no pymatgen, no neighbour
search) with physical dielectric tensors and their electronic and ionic parts added.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import irreptensor as it
from irreptensor_ml.transfer.presets import load_study_config

from run_id_fixture import TINY_TRUNK, synthetic_study_data

REPO = Path(__file__).resolve().parents[2]

#: a micro study in the learn-cpu style: exp outputs, per-property losses, a part target
MICRO = {
    "name": "micro-targets",
    "data": {"sources": ["mp"], "cutoff": 4.0, "batch_size": 8, "check_symmetry": False},
    "train": {
        "model": {"trunk": TINY_TRUNK, "outputs": {"dielectric": "exp", "elastic": "exp"}},
        "loss": {"type": {"elastic": "frobenius", "dielectric": "relative", "piezoelectric": "relative"}},
        "optim": {"lr": 0.01, "warmup_epochs": 0},
        "trainer": {"max_epochs": 1, "early_stopping_patience": 1, "accelerator": "cpu", "num_threads": 1},
    },
    "pretrain": {"seeds": [0], "overrides": {}},
    "targets": ["dielectric", "dielectric_electronic"],
    "strategies": ["scratch", "frozen", "control"],
    "fractions": [1.0],
    "seeds": [0],
    "bootstrap": {"n_resamples": 200},
    "workers": 1,
    "baselines_dir": None,
}


def _eps(k: int, shift: float, scale: float) -> np.ndarray:
    """A symmetric positive-definite 3x3 tensor (eigenvalues > shift)."""
    rng = np.random.default_rng(k)
    a = rng.normal(size=(3, 3)) * 0.3
    return (shift + scale * (1 + 0.1 * k)) * np.eye(3) + a @ a.T


def data_with_parts(config):
    """The synthetic study data with physical dielectric tensors, eps = electronic + ionic, on
    every sample (the fixture's have none on the validation side)."""
    data = synthetic_study_data(config)
    targets = []
    data.record_uids = [list(u) for u in data.record_uids]
    for k, t in enumerate(data.targets):
        t = dict(t)
        if "dielectric" not in t:
            data.record_uids[k].append(f"dielectric_syn.jsonl.gz:{data.material_keys[k]}")
        if True:
            el, ion = _eps(k, 1.0, 2.0), _eps(100 + k, 0.0, 3.0)
            for key, cart in (("dielectric", el + ion), ("dielectric_electronic", el), ("dielectric_ionic", ion)):
                t[key] = torch.as_tensor(np.asarray(it.decompose(cart, "dielectric")), dtype=torch.float64)
        if "elastic" in t:  # a positive-definite stiffness for the exp output
            C = np.asarray(it.from_voigt(np.eye(6) * (100 + k) + 30 * np.ones((6, 6)), "elastic"))
            t["elastic"] = torch.as_tensor(np.asarray(it.decompose(C, "elastic")), dtype=torch.float64)
        targets.append(t)
    data.targets = targets
    data._fingerprint = None
    data._parts_fingerprint = None
    return data


# ------------------------------------------------------------------------------ study data


def test_study_data_keeps_the_parts_without_changing_the_fingerprint(tmp_path):
    from irreptensor_ml.transfer.studydata import StudyData

    config = load_study_config(MICRO)
    data = data_with_parts(config)
    no_parts = copy.copy(data)
    no_parts.targets = [{p: v for p, v in t.items() if p in data.irreps} for t in data.targets]
    no_parts._fingerprint = no_parts._parts_fingerprint = None
    # the parts are kept, selectable like a property, and counted
    assert data.part_keys() == ["dielectric_electronic", "dielectric_ionic"]
    assert data.counts()["dielectric_electronic"] == data.counts()["dielectric"]
    idx = data.indices("test", "dielectric_electronic")
    ds = data.dataset(idx, ["dielectric", "dielectric_electronic"], id_property="dielectric_electronic")
    assert ds.count("dielectric_electronic") == len(idx) > 0
    assert all(g.material_id.startswith("dielectric_") for g, _ in ds.samples)  # the record's uid
    # the parts are not in the fingerprint (run ids of studies that do not use them stay), but in
    # their own fingerprint, which changes with them
    assert data.fingerprint == no_parts.fingerprint and no_parts.parts_fingerprint == ""
    fp = data.parts_fingerprint
    assert fp
    changed = copy.copy(data)
    changed.targets = [dict(t) for t in data.targets]
    k = idx[0]
    changed.targets[k]["dielectric_electronic"] = changed.targets[k]["dielectric_electronic"] * 1.01
    changed._fingerprint = changed._parts_fingerprint = None
    assert changed.fingerprint == data.fingerprint and changed.parts_fingerprint != fp
    # weights-only cache round trip keeps them
    back = StudyData.load(data.save(tmp_path / "d.pt"))
    assert back.part_keys() == data.part_keys() and back.parts_fingerprint == fp
    assert torch.equal(back.targets[k]["dielectric_electronic"], data.targets[k]["dielectric_electronic"])
    # a data set without the parts names the problem
    with pytest.raises(ValueError, match="no electronic part"):
        no_parts.indices("test", "dielectric_electronic")


def test_study_data_from_the_data_module_keeps_the_part_targets():
    """The data module's samples carry ``dielectric_electronic``/``dielectric_ionic``; the study
    data used to drop them."""
    from irreptensor_ml.data.datamodule import DataConfig, GraphTargetDataset
    from irreptensor_ml.transfer.studydata import StudyData

    config = load_study_config(MICRO)
    ref = data_with_parts(config)

    class _DM:
        config = DataConfig.from_dict({**ref.data_config})
        irreps = dict(ref.irreps)

        def data_hashes(self):
            return {}

        def summary(self):
            return {}

    dm = _DM()
    for side in ("train", "val", "test"):
        idx = [k for k, s in enumerate(ref.sides) if s == side]
        setattr(dm, f"{side}_dataset", GraphTargetDataset(
            [(ref.graphs[k], ref.targets[k]) for k in idx], [ref.material_keys[k] for k in idx],
            [ref.record_uids[k] for k in idx]))
    data = StudyData.from_datamodule(dm)
    assert "dielectric_electronic" in data.part_keys()
    assert data.counts()["dielectric_electronic"] == ref.counts()["dielectric_electronic"]


# ------------------------------------------------------------------------------ planning


def test_part_target_shares_the_runs_of_its_property_with_a_parts_head():
    from irreptensor_ml.transfer import plan

    config = load_study_config({**MICRO, "strategies": ["scratch", "frozen", "multitask", "control"],
                                "targets": ["dielectric", "dielectric_electronic", "piezoelectric"]})
    data = data_with_parts(config)
    pre = plan.plan_pretrain(config, data)
    runs = plan.plan_runs(config, data, pre)
    by = {(r.study_target, r.strategy): r for r in runs}
    for strat in ("scratch", "frozen", "multitask", "control"):
        total, part = by[("dielectric", strat)], by[("dielectric_electronic", strat)]
        assert total.run_id == part.run_id  # one run, reported twice
        assert part.target == "dielectric" and part.part == "electronic" and total.part is None
        assert part.train_config["model"]["heads"]["dielectric"] == {"parts": True}
        assert part.parts_fingerprint == data.parts_fingerprint
    # single-task piezoelectric runs do not touch the parts: same ids as in a study without them
    alone = load_study_config({**MICRO, "strategies": ["scratch", "frozen", "multitask", "control"],
                               "targets": ["dielectric", "piezoelectric"]})
    alone_by = {(r.study_target, r.strategy): r for r in plan.plan_runs(alone, data, plan.plan_pretrain(alone, data))}
    assert by[("piezoelectric", "scratch")].run_id == alone_by[("piezoelectric", "scratch")].run_id
    assert not by[("piezoelectric", "scratch")].parts_fingerprint
    # a multitask piezoelectric run has a dielectric head, which predicts the parts here
    assert by[("piezoelectric", "multitask")].parts_fingerprint
    assert by[("piezoelectric", "multitask")].run_id != alone_by[("piezoelectric", "multitask")].run_id
    # data without parts cannot serve a part target: refused at planning
    bare = synthetic_study_data(config)
    with pytest.raises(ValueError, match="no part targets"):
        plan.make_spec(config, bare, plan.plan_pretrain(config, bare), "scratch", "dielectric_electronic", 1.0, 0, 0)


def test_target_settings_and_target_strategies():
    from irreptensor_ml.transfer import plan

    cfg = load_study_config({
        **MICRO, "targets": ["elastic", "dielectric", "piezoelectric"],
        "strategies": ["scratch", "frozen", "foundation-frozen"],
        "target_strategies": {"elastic": ["scratch", "foundation-frozen"]},
        "target_settings": {"piezoelectric": {"optim.lr": 0.0014, "trainer.max_epochs": 3}},
    })
    data = data_with_parts(cfg)
    assert plan.pretraining_needed(cfg)  # frozen runs of dielectric and piezoelectric need it
    pre = plan.plan_pretrain(cfg, data)
    runs = plan.plan_runs(cfg, data, pre)
    pairs = {(r.study_target, r.strategy) for r in runs}
    assert ("elastic", "foundation-frozen") in pairs and ("elastic", "frozen") not in pairs
    assert ("piezoelectric", "frozen") in pairs
    by = {(r.study_target, r.strategy): r for r in runs}
    assert by[("piezoelectric", "scratch")].train_config["optim"]["lr"] == 0.0014
    assert by[("piezoelectric", "scratch")].train_config["trainer"]["max_epochs"] == 3
    assert by[("dielectric", "scratch")].train_config["optim"]["lr"] == 0.01
    # unchanged targets keep their run ids
    plain = load_study_config({**MICRO, "targets": ["dielectric", "piezoelectric"], "strategies": ["scratch"]})
    plain_ids = {(r.study_target, r.strategy): r.run_id
                 for r in plan.plan_runs(plain, data, plan.plan_pretrain(plain, data))}
    assert by[("dielectric", "scratch")].run_id == plain_ids[("dielectric", "scratch")]
    assert by[("piezoelectric", "scratch")].run_id != plain_ids[("piezoelectric", "scratch")]
    # the per-target loss and output reach the module (single task: only the target's head)
    from irreptensor_ml.transfer.runner import fit_targets, run_datasets
    from irreptensor_ml.transfer.strategies import build_module

    spec = by[("dielectric", "scratch")]
    sets = run_datasets(spec, data)
    norms = {p: None for p in sets["heads"]}
    from irreptensor_ml.data.normalization import IrrepNormalizer

    norms = {p: IrrepNormalizer().fit(sets["train"].targets(p), data.irreps[p]) for p in sets["heads"]}
    module = build_module("scratch", "dielectric", data.irreps, spec.train_config, norms,
                          train_targets=fit_targets(sets["train"], sets["heads"], spec.train_config))
    assert module.loss_types == {"dielectric": "relative"}
    assert module.model.outputs["dielectric"].transform == "exp"


@pytest.mark.parametrize("bad, match", [
    ({"target_settings": {"dielectric": {"model.trunk.num_layers": 3}}}, "cannot be set per target"),
    ({"target_settings": {"piezoelectric": {"optim.lr": 0.1}}}, "not one of the targets"),
    ({"target_strategies": {"dielectric": ["frozen"]}}, "must include 'scratch'"),
    ({"targets": ["elastic", "dielectric"], "target_strategies": {"elastic": ["scratch", "frozen"]}},
     "cannot also be a target"),
    ({"train": {**MICRO["train"], "loss": {"type": {"dielectric": "log"}}, "model": {"trunk": TINY_TRUNK}}},
     "needs model.outputs.dielectric: exp"),
])
def test_config_validation_of_the_new_settings(bad, match):
    with pytest.raises(ValueError, match=match):
        load_study_config({**MICRO, **bad})


# ------------------------------------------------------------------------------ runs and report


@pytest.fixture(scope="module")
def micro_study(tmp_path_factory):
    """Pretraining + scratch/frozen/control on dielectric and dielectric_electronic (shared runs),
    exp outputs and the relative loss, one epoch each, with a baselines file for the report."""
    from irreptensor_ml.transfer.store import RunStore
    from irreptensor_ml.transfer.study import run_study

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("targets")
    bdir = root / "baselines"
    bdir.mkdir()
    # NaN: an undefined metric, as benchmarks/baselines.py writes it
    forest = {"n": 84.0, "frobenius_mae": 2.75, "ewt25": 0.74, "refractive_index_mae": 0.206,
              "mean_eigenvalue_spearman": float("nan")}
    (bdir / "dielectric.json").write_text(json.dumps({
        "property": "dielectric", "split": "test", "n": 84, "materials": "MP",
        "baselines": {"isotropic_forest": {"dielectric": {**forest, "frobenius_mae": 7.88},
                                           "dielectric_electronic": forest},
                      "zero": {"dielectric": {"frobenius_mae": 21.0}}},
    }))
    config = load_study_config({**MICRO, "baselines_dir": str(bdir)}, [f"results_dir={root / 'study'}"])
    data = data_with_parts(config)
    cache = data.save(root / "data.pt")
    lines: list[str] = []
    summary = run_study(config, from_cache=cache, log=lines.append)
    return {"config": config, "root": root / "study", "summary": summary, "data": data, "log": lines,
            "store": RunStore(root / "study"), "cache": cache}


def test_part_target_runs_train_once_and_report_the_electronic_part(micro_study):
    from irreptensor_ml.transfer import plan as S

    summary, store, data, config = (micro_study[k] for k in ("summary", "store", "data", "config"))
    pre = S.plan_pretrain(config, data)
    finals = S.plan_runs(config, data, pre)
    assert len(finals) == 6 and len({s.run_id for s in finals}) == 3  # shared runs
    assert sum(line.startswith("[") for line in micro_study["log"]) == 1 + 3  # pretraining + 3 runs
    for spec in finals:
        rec = store.load(spec.run_id)
        assert set(rec["val_parts"]) == set(rec["test_parts"]) == {"dielectric_electronic", "dielectric_ionic"}
        assert rec["test_parts"]["dielectric_electronic"]["refractive_index_mae"] >= 0
        assert rec["spec"]["part"] is None  # the record describes the run, not a study target
        preds = store.load_predictions(spec.run_id)
        assert len(preds["parts"]["dielectric_electronic"]["frobenius_error"]) == rec["train"]["n_test"]
    res = summary["results"]
    assert set(res) == {"dielectric", "dielectric_electronic"}
    el = res["dielectric_electronic"]["scratch"]["1"]
    assert "refractive_index_mae" in el["test"] and "n_eigenvalue_below_1" not in el["test"]
    tot = res["dielectric"]["scratch"]["1"]
    assert "n_eigenvalue_below_1" in tot["test"]
    assert el["test"]["frobenius_mae"]["mean"] != tot["test"]["frobenius_mae"]["mean"]
    assert el["runs"][0]["run_id"] == tot["runs"][0]["run_id"]
    # the total dielectric tensor of the exp output keeps every eigenvalue above 1
    assert tot["test"]["n_eigenvalue_below_1"]["mean"] == 0
    # the shipped models stay per property; the part's best model is listed apart
    assert "dielectric_electronic" not in summary["best_on_validation"]
    assert summary["best_on_validation_parts"]["dielectric_electronic"]["strategy"] in {"scratch", "frozen", "control"}
    # comparisons: against scratch and against the control
    assert "vs_scratch" in res["dielectric_electronic"]["frozen"]["1"]
    assert "vs_control" in res["dielectric_electronic"]["frozen"]["1"]
    assert (micro_study["root"] / "learning_curve_dielectric_electronic.png").is_file()
    assert (micro_study["root"] / "parity_dielectric_electronic.png").is_file()


def test_report_prints_every_row_beside_the_trivial_and_random_forest_baselines(micro_study):
    summary = micro_study["summary"]
    ext = summary["external_baselines"]
    assert ext["dielectric_electronic"]["rows"]["isotropic_forest"]["frobenius_mae"] == 2.75
    assert ext["dielectric"]["rows"]["isotropic_forest"]["frobenius_mae"] == 7.88
    assert ext["dielectric"]["rows"]["isotropic_forest"]["mean_eigenvalue_spearman"] is None
    assert json.loads((micro_study["root"] / "summary.json").read_text())["external_baselines"] == ext
    assert summary["baselines"]["dielectric_electronic"]["zero"]["refractive_index_mae"] > 0
    md = (micro_study["root"] / "results.md").read_text()
    section = md.split("## dielectric_electronic")[1]
    table = section.split("Difference to scratch")[0]
    assert "| scratch |" in table and "| *zero tensor (baseline)* |" in table
    assert "| *isotropic training median (baseline)* |" in table
    assert "| *random forest, isotropic (MP test materials, n = 84)* | 2.75 |" in table
    assert "not this study's test set" in table  # 84 materials there, the synthetic test set here
    assert "Difference to control" in section and "refractive_index_mae" in section
    assert "Lowest mean test Frobenius MAE at 100 %" in section
    # without a baselines file nothing is invented
    from irreptensor_ml.transfer.report import external_baselines

    assert external_baselines({"baselines_dir": str(micro_study["root"] / "none")}, ["dielectric"]) == {}
    assert external_baselines({"baselines_dir": None}, ["dielectric"]) == {}


def test_multitask_run_with_exp_outputs_and_a_parts_head(micro_study, tmp_path):
    """A multitask run trains the elastic and dielectric heads with exp outputs (their output
    maps fitted on the training targets) and the dielectric head with parts."""
    from irreptensor_ml.transfer import plan as S
    from irreptensor_ml.transfer.runner import execute_run, evaluate_test
    from irreptensor_ml.train.checkpoint import load_model

    config, data = micro_study["config"], micro_study["data"]
    spec = S.make_spec(config, data, S.plan_pretrain(config, data), "multitask", "dielectric_electronic", 1.0, 0, 0)
    rec = execute_run(spec, data, tmp_path / "m.pt")
    assert rec["train"]["heads"] == ["elastic", "dielectric", "piezoelectric"]
    model, _, _ = load_model(tmp_path / "m.pt")
    assert model.outputs["dielectric"].transform == "exp" and model.outputs["dielectric"].parts == ("electronic", "ionic")
    assert model.outputs["elastic"].transform == "exp" and model.outputs["piezoelectric"].transform == "linear"
    metrics, preds = evaluate_test(spec, data, tmp_path / "m.pt")
    assert preds["parts"]["dielectric_electronic"]["metrics"]["refractive_index_mae"] >= 0


# ------------------------------------------------------------------------------ preset


def test_learn_cpu_preset():
    cfg = load_study_config("learn-cpu")
    assert cfg["targets"] == ["elastic", "dielectric", "dielectric_electronic", "piezoelectric"]
    assert cfg["strategies"] == ["scratch", "frozen", "finetune", "multitask", "control", "foundation-frozen"]
    assert cfg["fractions"] == [0.25, 1.0] and len(cfg["seeds"]) == 3 and cfg["workers"] == 2
    assert cfg["target_strategies"] == {"elastic": ["scratch", "foundation-frozen"]}
    # the tuned piezoelectric model's trunk, and each property's tuned lr/loss/output
    tuned = {}
    for prop in ("elastic", "dielectric", "piezoelectric"):
        over = json.loads((REPO / "results" / "tune" / prop / "best.json").read_text())["overrides"]
        tuned[prop] = dict(o.split("=", 1) for o in over)
    trunk = cfg["train"]["model"]["trunk"]
    for key in ("embedding_dim", "irreps_hidden", "num_layers", "lmax_sh", "message_lmax"):
        assert str(trunk[key]) == tuned["piezoelectric"][f"model.trunk.{key}"], key
    assert cfg["train"]["loss"]["type"] == {p: tuned[p]["loss.type"] for p in tuned}
    assert cfg["train"]["model"]["outputs"] == {"dielectric": "exp", "elastic": "exp"}
    for target, prop in (("elastic", "elastic"), ("dielectric", "dielectric"),
                         ("dielectric_electronic", "dielectric"), ("piezoelectric", "piezoelectric")):
        assert cfg["target_settings"][target]["optim.lr"] == pytest.approx(float(tuned[prop]["optim.lr"]))
    assert cfg["data"]["cutoff"] >= 5.0  # SevenNet-0's cutoff (foundation-frozen)
    # planned runs on the synthetic data: pretraining + 84 distinct final runs (the electronic
    # part shares the dielectric runs)
    from irreptensor_ml.transfer import plan

    data = data_with_parts(cfg)
    assert plan.pretraining_needed(cfg)
    finals = plan.plan_runs(cfg, data, plan.plan_pretrain(cfg, data))
    assert len(finals) == (2 + 6 * 3) * 2 * 3 and len({s.run_id for s in finals}) == (2 + 6 * 2) * 2 * 3
    # the GPU script keeps its default preset
    assert "PRESET=${PRESET:-full}" in (REPO / "scripts" / "run_full_study_gpu.sh").read_text()

"""Micro transfer study (tiny model, 1 epoch, a few structures per property via ``data.limit``):
end to end, resumability, the union split, frozen/control trunks, run ids, export, no-pymatgen cache.

Uses the default data cache (``$IRREPTENSOR_CACHE`` or ``~/.cache/irreptensor``) because the
material grouping over all data files is slow to rebuild.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning
import pytest
import torch
import yaml

from irreptensor_ml.train.provenance import source_revision
from irreptensor_ml.transfer.presets import load_study_config
from irreptensor_ml.transfer.runner import RunSpec, run_datasets
from irreptensor_ml.model import trunk_state
from irreptensor_ml.transfer.strategies import build_module
from irreptensor_ml.transfer.plan import make_spec, plan_pretrain, plan_runs, selection_from_records
from irreptensor_ml.transfer.store import RunStore, load_study_data
from irreptensor_ml.transfer.study import run_study

REPO = Path(__file__).resolve().parents[2]
STRATEGIES = ["scratch", "frozen", "finetune", "multitask", "control"]

MICRO = {
    "name": "micro",
    "data": {"sources": ["mp"], "cutoff": 4.0, "batch_size": 8, "limit": 16, "check_symmetry": False},
    "train": {
        "model": {
            "trunk": {
                "embedding_dim": 4, "irreps_hidden": "4x0e+2x1o+2x2e+1x2o+1x3o+1x4e", "num_layers": 2,
                "num_basis": 4, "radial_hidden": [4], "avg_num_neighbors": 15.0,
            }
        },
        "optim": {"lr": 0.01, "warmup_epochs": 0},
        "trainer": {"max_epochs": 1, "early_stopping_patience": 1, "accelerator": "cpu", "num_threads": 1},
    },
    "pretrain": {"seeds": [0], "overrides": {}},
    "targets": ["dielectric"],
    "strategies": STRATEGIES,
    "fractions": [0.5, 1.0],
    "seeds": [0],
    "strategy_settings": {"finetune": {"trunk_lr_scale": 0.5}},
    "bootstrap": {"n_resamples": 200},
    "workers": 1,
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("transfer")
    config = load_study_config(MICRO, [f"results_dir={root}"])
    lines: list[str] = []
    summary = run_study(config, log=lines.append)
    data = load_study_data(config)
    return {"config": config, "root": root, "summary": summary, "log": lines, "data": data,
            "store": RunStore(root)}


def _specs(study):
    cfg, data = study["config"], study["data"]
    pre = plan_pretrain(cfg, data)
    return pre, plan_runs(cfg, data, pre)


def test_micro_study_writes_records_predictions_and_report(study):
    root, summary, store = study["root"], study["summary"], study["store"]
    pre, finals = _specs(study)
    assert len(finals) == 5 * 2
    for spec in [*pre.values(), *finals]:
        rec = store.load(spec.run_id)
        assert rec is not None and rec["status"] == "finished", spec.run_id
        assert rec["test"]["frobenius_mae"] > 0 and rec["val"]["frobenius_mae"] > 0
        preds = store.load_predictions(spec.run_id)
        assert len(preds["sample_ids"]) == rec["train"]["n_test"] == len(preds["frobenius_error"])
        assert store.model_path(spec.run_id).is_file()
        assert rec["source"] == source_revision()  # the code that ran it (a git sha, or None in a wheel)
    for name in ("summary.json", "results.md", "learning_curve_dielectric.png", "parity_dielectric.png",
                 "parity_elastic.png", "study_config.yaml"):
        assert (root / name).is_file(), name
    res = summary["results"]["dielectric"]
    assert set(res) == set(STRATEGIES)
    for strat in STRATEGIES[1:]:
        ci = res[strat]["1"]["vs_scratch"]
        assert ci["low"] <= ci["diff"] <= ci["high"] and ci["n_seeds"] == 1
        assert ci["verdict"] in ("better", "worse", "no significant difference")
    assert "vs_scratch" not in res["scratch"]["1"]
    assert summary["pretrain"]["test"]["frobenius_mae"]["mean"] > 0
    md = (root / "results.md").read_text()
    assert "ONE seed" in md and "| finetune |" in md and "elastic pretraining model" in md
    assert "code (git revision of the runs): " in md
    assert json.loads((root / "summary.json").read_text())["data"]["fingerprint"] == study["data"].fingerprint


def test_rerun_skips_every_finished_run(study):
    store = study["store"]
    pre, finals = _specs(study)
    mtimes = {s.run_id: store.record_path(s.run_id).stat().st_mtime_ns for s in [*pre.values(), *finals]}
    lines: list[str] = []
    run_study(study["config"], log=lines.append)
    assert any("11 of 11 runs already finished" in line for line in lines), lines
    assert not any(line.startswith("[") for line in lines), lines  # nothing executed
    assert {r: store.record_path(r).stat().st_mtime_ns for r in mtimes} == mtimes


def test_union_split_keeps_test_materials_out_of_all_training(study):
    data = study["data"]
    data.check_union_split()
    test_keys = {data.material_keys[k] for k in data.indices("test")}
    assert test_keys
    pre, finals = _specs(study)
    for spec in [*pre.values(), *finals]:
        sets = run_datasets(spec, data)
        seen = set(sets["train"].material_keys) | set(sets["val"].material_keys)
        assert not seen & test_keys, spec.run_id
        assert set(sets["test"].material_keys) <= test_keys
    # the check itself can fail: a material on two sides is reported
    broken = copy.copy(data)
    k = data.indices("test")[0]
    j = data.indices("train")[0]
    broken.material_keys = list(data.material_keys)
    broken.material_keys[j] = data.material_keys[k]
    with pytest.raises(ValueError, match="is on both"):
        broken.check_union_split()


def _trunk(path):
    return trunk_state(torch.load(path, weights_only=True)["state_dict"])


def test_frozen_keeps_pretrained_trunk_and_control_uses_random_trunk(study):
    store, data, cfg = study["store"], study["data"], study["config"]
    pre, finals = _specs(study)
    pre_trunk = _trunk(store.model_path(pre[0].run_id))
    by = {(s.strategy, s.fraction): s for s in finals}
    frozen = _trunk(store.model_path(by[("frozen", 1.0)].run_id))
    finetune = _trunk(store.model_path(by[("finetune", 1.0)].run_id))
    control = _trunk(store.model_path(by[("control", 1.0)].run_id))
    assert frozen.keys() == pre_trunk.keys()
    assert all(torch.equal(frozen[k], pre_trunk[k]) for k in pre_trunk)
    assert any(not torch.equal(finetune[k], pre_trunk[k]) for k in pre_trunk)
    assert any(not torch.equal(control[k], pre_trunk[k]) for k in pre_trunk)
    # control's trunk is exactly the random initialisation of its seed (frozen during training)
    spec = by[("control", 1.0)]
    sets = run_datasets(spec, data)
    from irreptensor_ml.data.normalization import IrrepNormalizer

    norm = {"dielectric": IrrepNormalizer().fit(sets["train"].targets("dielectric"), data.irreps["dielectric"])}
    lightning.seed_everything(spec.seed, workers=True, verbose=False)
    fresh = build_module("control", "dielectric", data.irreps, spec.train_config, norm).model.trunk.state_dict()
    assert all(torch.equal(control[k], fresh[k].float()) for k in fresh)
    rec = store.load(spec.run_id)
    assert rec["train"]["num_trainable_parameters"] < rec["train"]["num_parameters"]
    # finetune's trunk trains at lr * trunk_lr_scale
    ft = build_module("finetune", "dielectric", data.irreps, spec.train_config, norm,
                      trunk_state=pre_trunk, trunk_lr_scale=0.5)
    lrs = {g["name"]: g["lr"] for g in ft.param_groups()}
    assert lrs["trunk"] == pytest.approx(0.5 * lrs["heads"])
    with pytest.raises(ValueError, match="only to finetune"):
        build_module("scratch", "dielectric", data.irreps, spec.train_config, norm, trunk_lr_scale=0.5)
    with pytest.raises(ValueError, match="needs a pretrained"):
        build_module("frozen", "dielectric", data.irreps, spec.train_config, norm)


def test_multitask_masks_the_unsampled_target(study):
    data, cfg = study["data"], study["config"]
    pre = plan_pretrain(cfg, data)
    half = make_spec(cfg, data, pre, "multitask", "dielectric", 0.5, 0, 0)
    single = make_spec(cfg, data, pre, "scratch", "dielectric", 0.5, 0, 0)
    mt, st = run_datasets(half, data), run_datasets(single, data)
    assert mt["heads"] == ["elastic", "dielectric", "piezoelectric"]
    assert mt["train"].count("dielectric") == st["train"].count("dielectric")
    assert mt["train"].count("elastic") == len(data.indices("train", "elastic"))
    assert sorted(mt["train"].material_keys) != sorted(st["train"].material_keys)


def test_multitask_run_with_validation_samples_of_several_properties(study, tmp_path):
    # In the full data many validation materials carry several tensors; the run must still train
    # on all heads and evaluate the target alone (regression test).
    data = copy.copy(study["data"])
    data.targets = [dict(t) for t in data.targets]
    k = data.indices("val", "dielectric")[0]
    data.targets[k]["elastic"] = data.targets[data.indices("train", "elastic")[0]]["elastic"].clone()
    data._fingerprint = None
    cfg = study["config"]
    spec = make_spec(cfg, data, plan_pretrain(cfg, data), "multitask", "dielectric", 1.0, 0, 0)
    from irreptensor_ml.transfer.runner import execute_run

    rec = execute_run(spec, data, tmp_path / "m.pt")
    assert rec["train"]["heads"] == ["elastic", "dielectric", "piezoelectric"]
    assert rec["train"]["n_val"] == len(data.indices("val", "dielectric"))
    assert rec["val"]["n"] == rec["train"]["n_val"]


def test_run_id_hashes_the_config_but_not_execution_settings(study):
    data, cfg = study["data"], study["config"]
    pre = plan_pretrain(cfg, data)
    spec = make_spec(cfg, data, pre, "finetune", "dielectric", 1.0, 0, 0)
    moved = copy.deepcopy(dict(spec.train_config))
    moved["trainer"].update(accelerator="gpu", num_threads=8)
    moved["data"]["cache_dir"] = "/elsewhere"
    same = RunSpec.from_dict({**spec.to_dict(), "train_config": moved})
    assert same.run_id == spec.run_id
    changed = copy.deepcopy(dict(spec.train_config))
    changed["optim"]["lr"] = 0.02
    assert RunSpec.from_dict({**spec.to_dict(), "train_config": changed}).run_id != spec.run_id
    assert RunSpec.from_dict({**spec.to_dict(), "trunk_lr_scale": 1.0}).run_id != spec.run_id
    assert RunSpec.from_dict({**spec.to_dict(), "seed": 1}).run_id != spec.run_id
    other_pre = RunSpec.from_dict({**spec.to_dict(), "pretrain_id": "pretrain-x"})
    assert other_pre.run_id != spec.run_id


def test_selection_picks_lowest_mean_validation_error(study, tmp_path):
    data = study["data"]
    cfg = load_study_config(
        {**MICRO, "strategies": ["scratch", "control"], "fractions": [1.0],
         "tuning": {"fraction": 1.0, "seeds": [0, 1], "candidates": {
             "scratch": [{"optim.lr": 0.01}, {"optim.lr": 0.001}],
             "control": [{"optim.lr": 0.01}, {"optim.lr": 0.1}]}}},
        [f"results_dir={tmp_path}"],
    )
    from irreptensor_ml.transfer.plan import plan_trials

    trials = plan_trials(cfg, data, plan_pretrain(cfg, data))
    assert len(trials) == 2 * 2 * 2  # strategies x candidates x tuning seeds
    store = RunStore(tmp_path)
    val = {("scratch", 0): [3.0, 3.0], ("scratch", 1): [1.0, 4.0], ("control", 0): [2.0, 2.0],
           ("control", 1): [1.0, 3.5]}
    for spec in trials:
        v = val[(spec.strategy, spec.candidate)][spec.seed]
        store.save({"run_id": spec.run_id, "status": "finished", "val": {"frobenius_mae": v}})
    sel = selection_from_records(cfg, trials, store)["dielectric"]
    assert sel["scratch"]["chosen"] == 1 and sel["scratch"]["val_frobenius_mae"] == [3.0, 2.5]
    assert sel["control"]["chosen"] == 0
    finals = plan_runs(cfg, data, plan_pretrain(cfg, data), {"dielectric": sel})
    assert {s.strategy: s.train_config["optim"]["lr"] for s in finals} == {"scratch": 0.001, "control": 0.01}


def test_config_validation_names_bad_settings():
    with pytest.raises(ValueError, match="unequal tuning budget"):
        load_study_config({**MICRO, "tuning": {"candidates": {"scratch": [{"optim.lr": 1e-3}, {"optim.lr": 1e-2}]}}})
    with pytest.raises(ValueError, match="only to finetune"):
        load_study_config({**MICRO, "strategy_settings": {"scratch": {"trunk_lr_scale": 0.1}}})
    with pytest.raises(ValueError, match="data.properties"):
        load_study_config({**MICRO, "data": {**MICRO["data"], "properties": ["elastic"]}})
    with pytest.raises(ValueError, match="cannot also be a target"):
        load_study_config({**MICRO, "targets": ["elastic"]})
    with pytest.raises(ValueError, match="scratch"):
        load_study_config({**MICRO, "strategies": ["frozen"]})
    for name in ("quick", "full", "full-cpu"):
        cfg = load_study_config(name)
        assert set(cfg["strategies"]) == set(STRATEGIES) and cfg["targets"] == ["dielectric", "piezoelectric"]
    full = load_study_config("full")
    assert full["fractions"] == [0.1, 0.25, 0.5, 1.0] and len(full["seeds"]) >= 3


def test_export_models_loads_and_predicts(study, tmp_path):
    from irreptensor_ml.data.records import load_records
    from irreptensor_ml.predict import predict
    from irreptensor_ml.transfer.ship import export_models

    files = export_models(study["root"], tmp_path)
    assert {f.parent.name for f in files} == {"elastic", "dielectric"}
    card = json.loads((tmp_path / "dielectric" / "card.json").read_text())
    assert card["strategy"] == study["summary"]["best_on_validation"]["dielectric"]["strategy"]
    assert "Test metrics" in (tmp_path / "dielectric" / "MODEL_CARD.md").read_text()
    structure = load_records("dielectric", "mp", check_symmetry=False)[0].structure
    eps = predict([structure], "dielectric", model=tmp_path / "dielectric" / "model.pt")
    assert eps.shape == (1, 3, 3) and torch.isfinite(torch.as_tensor(eps)).all()


_NO_PYMATGEN = textwrap.dedent(
    """
    import sys, json
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name == "pymatgen" or name.startswith("pymatgen."):
                raise ModuleNotFoundError("pymatgen blocked for this test")
            return None
    sys.meta_path.insert(0, _Block())
    from irreptensor_ml.transfer.presets import load_study_config
    from irreptensor_ml.transfer.study import run_study
    cfg = load_study_config(json.loads(sys.argv[1]))
    summary = run_study(cfg, from_cache=sys.argv[2], report_only=True, log=lambda s: None)
    loaded = any(m == "pymatgen" or m.startswith("pymatgen.") for m in sys.modules)
    print(json.dumps({"pymatgen_loaded": loaded, "fingerprint": summary["data"]["fingerprint"]}))
    """
)


def test_export_cache_and_resume_from_it_without_pymatgen(study, tmp_path):
    data = study["data"]
    path = data.save(tmp_path / "study.pt")
    raw = torch.load(path, weights_only=True)  # plain tensors/strings only
    assert raw["fingerprint"] == data.fingerprint
    from irreptensor_ml.transfer.studydata import StudyData

    back = StudyData.load(path)
    assert back.fingerprint == data.fingerprint and back.counts() == data.counts()
    # a cache built with other data settings is refused
    other = load_study_config({**MICRO, "data": {**MICRO["data"], "cutoff": 5.0}})
    with pytest.raises(ValueError, match="cutoff"):
        load_study_data(other, path)
    # a fresh interpreter without pymatgen resumes the finished study from the cache: same run
    # ids (report_only fails if any run were missing), same report
    cfg = json.dumps(study["config"])
    out = subprocess.run(
        [sys.executable, "-c", _NO_PYMATGEN, cfg, str(path)], capture_output=True, text=True,
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"pymatgen_loaded": False, "fingerprint": data.fingerprint}


def test_cli_dry_run_and_user_errors(study, capsys):
    from irreptensor_ml.transfer.cli import main_transfer

    cfg_path = study["root"] / "micro.yaml"
    cfg_path.write_text(yaml.safe_dump(study["config"]))
    assert main_transfer(["--config", str(cfg_path), "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["to_do_now"] == 0 and plan["stored"] == 11
    assert main_transfer(["--config", str(cfg_path), "--set", "fractions=[2.0]"]) == 2
    assert "fractions" in capsys.readouterr().err
    assert main_transfer(["--config", str(cfg_path), "--from-cache", "/nonexistent.pt"]) == 2

"""The committed transfer-study records are the ones the committed code plans (slow: builds the data).

A study run on uncommitted code can store runs whose ids the committed code never plans (another data
fingerprint, another code version); ``--report-only`` then finds none of them. This rebuilds the
learn-cpu study's data from the shipped data files and checks that every planned run is stored.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STUDY = REPO / "results" / "transfer" / "learn_cpu"


@pytest.mark.slow
def test_learn_cpu_records_are_the_runs_the_committed_code_plans():
    pytest.importorskip("pymatgen")
    from irreptensor_ml.transfer.execute import needs
    from irreptensor_ml.transfer.plan import Task, plan_pretrain, plan_runs, pretraining_needed, selection_from_records
    from irreptensor_ml.transfer.presets import load_study_config
    from irreptensor_ml.transfer.store import RunStore, load_study_data

    cfg = load_study_config("learn-cpu")
    data = load_study_data(cfg)
    assert data.fingerprint == json.loads((STUDY / "summary.json").read_text())["data"]["fingerprint"]
    store = RunStore(STUDY)
    pretrain = plan_pretrain(cfg, data) if pretraining_needed(cfg) else {}
    finals = plan_runs(cfg, data, pretrain, selection_from_records(cfg, [], store))
    tasks = [Task(s, True, "pretrain") for s in pretrain.values()] + [Task(s, True, "final") for s in finals]
    missing = sorted({t.run_id for t in tasks if needs(t, store) is not None})
    assert not missing, f"{len(missing)} planned runs are not stored, e.g. {missing[:3]}"
    stored = {p.stem for p in (STUDY / "runs").glob("*.json")}
    assert stored == {t.run_id for t in tasks}  # and no stray record

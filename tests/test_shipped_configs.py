"""Every job, evaluation and preparation YAML under configs/ loads and validates (model configs:
tests/test_tower.py), and the ML-1M recipe configs hold exactly the flags of the runs
docs/results.md reports."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from data_prep.config import PrepConfig
from hytrec_torchrec.config import load_config, to_dict
from hytrec_torchrec.evaluation.evaluate import load_eval_config
from hytrec_torchrec.runtime.config import load_job_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_job_configs_load(path: Path) -> None:
    load_job_config(str(path), [])


@pytest.mark.parametrize("path", sorted((CONFIGS / "eval").glob("*.yaml")), ids=lambda p: p.name)
def test_eval_configs_load(path: Path) -> None:
    load_eval_config(str(path), [])


@pytest.mark.parametrize("path", sorted((CONFIGS / "prep").glob("*.yaml")), ids=lambda p: p.name)
def test_prep_configs_load(path: Path) -> None:
    load_config(PrepConfig, str(path))


# The command line the time-bias runs of docs/results.md were started with
RECIPE = [
    "train.max_steps=2010", "train.checkpoint_every=335", "data.num_negatives=-1",
    "optim.schedule.name=cosine", "optim.schedule.warmup_steps=100",
    "optim.schedule.decay_steps=1005", "optim.schedule.min_lr_ratio=0.02", "model.time_bias=64",
]


@pytest.mark.parametrize("recipe,base", [("ml1m_tb.yaml", "ml1m_ap.yaml"),
                                         ("ml1m_sasrec_tb.yaml", "ml1m_sasrec_ap.yaml")])
def test_recipe_configs_equal_the_measured_command_lines(recipe: str, base: str) -> None:
    got = to_dict(load_job_config(str(CONFIGS / recipe), []))
    want = to_dict(load_job_config(str(CONFIGS / base), RECIPE))
    for d in (got, want):  # where the run writes and how many checkpoints it keeps do not train
        d["run"].pop("dir")
        d["train"].pop("keep_last")
    assert got == want


ML1M_SCRIPT = CONFIGS.parent / "scripts" / "ml1m.sh"


def _ml1m(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ML1M_SCRIPT), *args], capture_output=True, text=True, check=False)


def test_ml1m_script_recipes_load() -> None:
    """Every recipe of scripts/ml1m.sh (the commands docs/results.md reproduces its table with)
    names a shipped config and overrides that validate."""
    names = _ml1m("list").stdout.split()
    assert {"hytrec_tb4020", "sasrec4_tb4020", "hytrec_tb4800"} <= set(names)
    for name in names:
        res = _ml1m("flags", name)
        assert res.returncode == 0, res.stderr
        config, *overrides = res.stdout.split()
        cfg = to_dict(load_job_config(str(CONFIGS.parent / config), overrides + [f"run.dir=runs/ml1m/{name}"]))
        if name.endswith("4020"):
            assert (cfg["train"]["max_steps"], cfg["optim"]["schedule"]["decay_steps"]) == (4020, 2010)
        if name == "sasrec4_tb4020":
            assert cfg["model"]["long_pattern"] == "SSSS"


def test_ml1m_script_rejects_unknown_recipe() -> None:
    res = _ml1m("flags", "no_such_recipe")
    assert res.returncode == 2 and "unknown recipe 'no_such_recipe'" in res.stderr


LONGHIST_SCRIPT = CONFIGS.parent / "scripts" / "longhist.sh"


def _longhist(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(LONGHIST_SCRIPT), *args], capture_output=True, text=True, check=False)


def _flat_model(script: Path, config: str, name: str) -> dict:
    """The model section (``tadn.*`` keys flattened) of ``config`` with recipe ``name``'s overrides."""
    res = subprocess.run(["bash", str(script), "flags", name], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    m = to_dict(load_job_config(str(CONFIGS / config), res.stdout.split()))["model"]
    return {**{k: v for k, v in m.items() if k != "tadn"}, **{f"tadn.{k}": v for k, v in m["tadn"].items()}}


def test_longhist_recipes_load_and_each_ablation_switches_one_part() -> None:
    """Every recipe of scripts/longhist.sh validates on configs/synthetic_longhist.yaml, and each
    abl_* recipe differs from ``hytrec`` in exactly one model key (one ablation at a time)."""
    names = _longhist("list").stdout.split()
    assert {"hytrec", "hytrec_paper", "short_only", "sasrec"} <= set(names)
    flat = {name: _flat_model(LONGHIST_SCRIPT, "synthetic_longhist.yaml", name) for name in names}
    ref = flat["hytrec"]
    assert (ref["tadn.gating"], ref["long_readout"], ref["long_time_inputs"]) == ("gated_delta", "intent", True)
    for name in (n for n in names if n.startswith("abl_")):
        diff = [k for k in ref if flat[name][k] != ref[k]]
        assert len(diff) == 1, (name, diff)


def test_longhist_script_rejects_unknown_names() -> None:
    assert _longhist("flags", "no_such_recipe").returncode == 2
    res = _longhist("train", "no_such_scenario", "hytrec")
    assert res.returncode == 2 and "unknown scenario" in res.stderr


CJ_SCRIPT = CONFIGS.parent / "scripts" / "completejourney.sh"


def test_completejourney_recipes_switch_one_part_of_the_default_tower() -> None:
    """configs/completejourney.yaml's model is the default tower (TowerConfig's defaults), and each
    recipe of scripts/completejourney.sh but ``paper`` and ``short_only_norepeat`` changes exactly
    one model key of it."""
    from hytrec_torchrec.modules.config import TowerConfig

    run = lambda *a: subprocess.run(["bash", str(CJ_SCRIPT), *a], capture_output=True, text=True, check=False)  # noqa: E731
    names = run("list").stdout.split()
    assert {"default", "short_only", "no_repeat", "paper"} <= set(names)
    flat = {name: _flat_model(CJ_SCRIPT, "completejourney.yaml", name) for name in names}
    default, tower = flat["default"], to_dict(TowerConfig())
    for key in ("long_pattern", "long_readout", "long_time_inputs", "repeat", "short_len", "far_copy"):
        assert default[key] == tower[key], key
    assert default["tadn.gating"] == tower["tadn"]["gating"]
    for name in ("short_only", "no_repeat") + tuple(n for n in names if n.startswith("abl_")):
        assert len([k for k in default if flat[name][k] != default[k]]) == 1, name
    assert run("flags", "nope").returncode == 2

"""End to end: data_prep's synthetic generator -> hytrec-prep -> loader batches."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hytrec_torchrec.config import from_dict
from hytrec_torchrec.data import DataConfig, load_shard, make_dataloader

synthetic = pytest.importorskip("data_prep.synthetic")
cli = pytest.importorskip("data_prep.cli")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("e2e")
    synthetic.generate(synthetic.SynthParams(events=15_000, seed=4, max_len=600), root / "syn")
    assert cli.main([str(root / "syn" / "events"), str(root / "prep")]) == 0
    return root / "syn", root / "prep"


def test_prep_output_loads_and_test_targets_match_ground_truth(prepared: tuple[Path, Path]) -> None:
    syn, prep = prepared
    cfg = from_dict(DataConfig, {"path": str(prep), "batch_size": 16, "num_negatives": 8, "max_len": 100})
    shard = load_shard(cfg)
    assert shard.index.num_users > 50
    # a training batch has the documented layout
    batch = next(iter(make_dataloader(cfg, shard=shard)))
    lengths = batch.features.lengths().view(6, -1)
    assert all(bool((lengths[i] == lengths[0]).all()) for i in range(4))
    assert int(lengths[0].max()) <= 100 and int(lengths[5, 0]) == 8

    # test stage targets, mapped back to raw IDs, are the generator's planted targets
    vocab_item = pq.read_table(prep / "vocab" / "item.parquet").to_pydict()
    raw_item = dict(zip(vocab_item["index"], vocab_item["raw"]))
    vocab_user = pq.read_table(prep / "vocab" / "user.parquet").to_pydict()
    raw_user = dict(zip(vocab_user["index"], vocab_user["raw"]))
    gt = pq.read_table(syn / "ground_truth.parquet").to_pydict()
    planted = {str(u): [str(x) for x in t] for u, t in zip(gt["user_id"], gt["target_items"])}
    planted_time = {str(u): t for u, t in zip(gt["user_id"], gt["first_target_timestamp"])}
    got: dict[str, str] = {}
    t_current: dict[str, int] = {}
    for b in make_dataloader(cfg, stage="test", shard=shard):
        tgt = b.features["target_item"]
        assert bool((tgt.lengths() == 1).all())
        for u, t in zip(b.user[b.valid].tolist(), tgt.values()[b.valid].tolist()):
            got[raw_user[u]] = raw_item[t]
        for u, t in zip(b.user[b.valid].tolist(), b.t_current[b.valid].tolist()):
            t_current[raw_user[u]] = t
    assert len(got) > 50
    checked = [u for u in got if u in planted]
    assert len(checked) == len(got)
    mismatched = [u for u in checked if got[u] != planted[u][-1]]
    assert mismatched == []
    assert t_current == {u: planted_time[u] for u in t_current}

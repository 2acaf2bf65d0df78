"""The data stage's two passes in one process (``LocalRunner``, the same block functions Ray runs)."""

from __future__ import annotations

import pytest

from raygbm.config import load_config
from raygbm.data.preprocess import LocalRunner, preprocess
from raygbm.errors import DataError
from tests.conftest import make_shards
from tests.helpers import raygbm_home


class ShortCodes(LocalRunner):
    """Hands the transform pass one split code too few for its first block: a shard whose rows changed
    between the two passes."""

    def map_blocks(self, shards, chunk_rows, fn, args, columns=None, dictionary=(), per_block=None, progress=None):
        if per_block:
            per_block = [(per_block[0][0][:-1],), *per_block[1:]]
        return super().map_blocks(shards, chunk_rows, fn, args, columns, dictionary, per_block)


def test_a_block_whose_rows_changed_between_the_passes_is_refused_and_nothing_is_left(tmp_path):
    data = make_shards(tmp_path / "data", rows=3000, shards=2, seed=5)
    cfg = load_config(None, ["data.drop=[id]"], {"data.source": str(data), "data.label": "label"})
    with raygbm_home(tmp_path / "home") as home:
        with pytest.raises(DataError, match="changed while the data stage read it"):
            preprocess(cfg, runner=ShortCodes())
        assert not [p for p in (home / "runs").iterdir()]  # no run, no staging folder left behind
        report = preprocess(cfg, runner=LocalRunner()).report  # the same input, read consistently
    assert report["rows_out_total"] == 3000 - report["rows_missing_label"]


def test_each_pass_reports_its_blocks_as_progress_lines_and_a_short_pass_says_nothing(tmp_path, monkeypatch):
    from raygbm.data import blocks

    data = make_shards(tmp_path / "data", rows=4000, shards=2, seed=5)
    cfg = load_config(None, ["data.drop=[id]", "resources.read_chunk_rows=1000"],
                      {"data.source": str(data), "data.label": "label"})
    with raygbm_home(tmp_path / "home"):
        quick: list[str] = []
        preprocess(cfg, runner=LocalRunner(), progress=quick.append)
        assert not [line for line in quick if "blocks" in line]  # well under PROGRESS_EVERY_S
        monkeypatch.setattr(blocks, "PROGRESS_EVERY_S", 0.0)
        lines: list[str] = []
        preprocess(cfg, runner=LocalRunner(), progress=lines.append, force=True)
    # 4 blocks of 1,000 rows per pass; the last block ends the pass without a line.
    assert [line for line in lines if line.startswith("profiling:")] == [
        "profiling: 1 of 4 blocks (25%)", "profiling: 2 of 4 blocks (50%)", "profiling: 3 of 4 blocks (75%)"]
    assert len([line for line in lines if line.startswith("transforming and writing:")]) == 3


def test_a_written_parts_sha256_is_that_of_its_bytes_on_disk_and_it_reads_back_the_same(tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raygbm.data.preprocess import write_parquet
    from raygbm.paths import sha256_file

    rng = np.random.default_rng(3)
    table = pa.table({"x": rng.normal(size=300_000), "c": pa.array(rng.integers(0, 5, 300_000), pa.int32())})
    dest = tmp_path / "part.parquet"
    digest = write_parquet(table, str(dest))  # several MB: written in many pieces, each hashed as it goes
    assert digest == sha256_file(dest)
    assert pq.read_table(dest).equals(table)


def test_duplicates_are_counted_across_blocks_whose_hashes_come_sorted():
    import numpy as np

    from raygbm.data.preprocess import _duplicates

    rng = np.random.default_rng(4)
    pool = rng.integers(0, 2**63, 5_000, dtype=np.uint64)
    blocks = [rng.choice(pool, 4_000) for _ in range(5)]  # repeats within and across blocks
    everything = np.concatenate(blocks)
    expected = everything.size - np.unique(everything).size
    sent = [{"hashes": np.sort(b).tobytes()} for b in blocks]  # what profile_block sends when only counting
    assert expected > 0 and _duplicates(sent, drop=False) == (expected, None)

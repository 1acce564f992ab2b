"""The bench's child processes start as `make bench` starts them (modules of the checkout, no sys.path edits)."""

from __future__ import annotations

import pytest

from bench import bench_encoder
from devkit.tiny_models import save_subject_encoder


@pytest.mark.slow
def test_the_encoder_sections_fresh_process_measures_a_file(tmp_path):
    """The encoder section measures memory in a fresh process; a child that cannot import the bench stops `make bench`."""
    path = save_subject_encoder(tmp_path / "ms_adapter.safetensors")
    measured = bench_encoder.rss_in_fresh_process(path)
    assert measured["param_bytes"] > 0 and measured["dtype"] == "torch.float32"
    assert measured["rss_after"] >= measured["rss_before"] > 0 and measured["peak"] >= measured["rss_before"]

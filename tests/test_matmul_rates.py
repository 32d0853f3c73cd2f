"""``benchmarks/matmul_rates.py`` on tiny sizes: one row per product and dtype, a positive rate for every option set
this XLA accepts ("-" for one it rejects) and for torch."""
import sys

import pytest

from benchmarks import matmul_rates
from xalign_jax import xla_options


@pytest.mark.parametrize("with_torch", [True, False])
def test_prints_a_rate_for_every_product_dtype_and_library(monkeypatch, capsys, with_torch):
    argv = ["matmul_rates", "--vocab", "64", "--hidden", "8", "--positions", "4"]
    monkeypatch.setattr(sys, "argv", argv + ([] if with_torch else ["--no-torch"]))
    matmul_rates.main()
    rows = [line.strip("| ").split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    header, body = rows[0], rows[1:]
    assert header[2:] == list(matmul_rates.OPTION_SETS) + (["torch"] if with_torch else [])
    assert [row[:2] for row in body] == [[name, dtype] for name in matmul_rates.PRODUCTS
                                         for dtype in ("float32", "bfloat16")]
    accepted = [options is None or xla_options.usable(options, "cpu") is not None
                for options in matmul_rates.OPTION_SETS.values()] + [True] * with_torch
    for row in body:
        assert len(row) == 2 + len(accepted), row
        assert all(float(cell) > 0 if ok else cell == "-" for cell, ok in zip(row[2:], accepted)), row

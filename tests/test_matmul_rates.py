"""``benchmarks/matmul_rates.py`` on tiny sizes: one row per product and dtype, every rate a positive number."""
import sys

from benchmarks import matmul_rates


def test_prints_a_rate_for_every_product_dtype_and_library(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["matmul_rates", "--vocab", "64", "--hidden", "8", "--positions", "4"])
    matmul_rates.main()
    rows = [line.strip("| ").split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    body = rows[1:]   # after the header
    assert [row[:2] for row in body] == [[name, dtype] for name in matmul_rates.PRODUCTS
                                         for dtype in ("float32", "bfloat16")]
    assert all(len(row) == 5 and all(float(rate) > 0 for rate in row[2:]) for row in body), body

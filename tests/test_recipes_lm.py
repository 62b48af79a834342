"""The language-model recipes and the ``report --task lm`` rows (notebook 09)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from qlib.__main__ import main
from qlib.evaluate import decode_step_latency
from qlib.recipes import load_recipes
from qlib.recipes.lm import lm_packed_size
from qlib.quant.weightonly import packed_bytes

LM_NAMES = ["lm-w8-rtn", "lm-w4g128-rtn", "lm-w4g128-gptq", "lm-w4g128-awq",
            "lm-w3g128-rtn", "lm-w3g128-gptq", "lm-nf4g64"]
FIELDS = {"name", "technique", "perplexity", "accuracy", "agreement", "size_bytes",
          "latency_ms", "params", "nonzeros"}


def test_the_seven_lm_recipes_are_listed_under_task_lm() -> None:
    lm = load_recipes("lm")
    assert LM_NAMES == [n for n in lm if n in LM_NAMES]
    assert all(r.task == "lm" for r in lm.values())
    assert not set(lm) & set(load_recipes("vision"))
    with pytest.raises(ValueError, match="unknown task"):
        load_recipes("speech")


def test_packed_size_counts_codes_scales_and_the_rest() -> None:
    model = nn.Sequential(nn.Embedding(10, 128), nn.Linear(128, 256, bias=False))
    report = {"layers": [{"name": "1"}], "packed_bytes": packed_bytes(256, 128, 4, 128)}
    size = lm_packed_size(model, report)
    # the embedding in fp32 plus a small torch.save header, plus the packed Linear
    assert 10 * 128 * 4 + report["packed_bytes"] < size < 10 * 128 * 4 + report[
        "packed_bytes"] + 2000
    assert report["packed_bytes"] == 256 * 128 // 2 + 256 * 2 + 128  # codes, fp16 scale, zp


def test_decode_step_latency_leaves_the_model_unchanged() -> None:
    from qlib.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=32, n_layer=1, n_head=2, d_model=16)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lat = decode_step_latency(model, context=8, repeats=3)
    assert 0 < lat["min_ms"] <= lat["median_ms"] <= lat["p90_ms"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_report_task_lm_writes_rows_with_the_fields(tmp_path, capsys) -> None:
    """One recipe end to end on the course LM (trained on first use, then cached)."""
    out = tmp_path / "lm"
    assert main(["report", "--task", "lm", "--only", "lm-w8-rtn", "lm-nf4g64", "--out",
                 str(out), "--no-progress"]) == 0
    rep = json.loads((out / "report.json").read_text())
    rows = [rep["baseline"], *rep["variants"]]
    assert [r["name"] for r in rows] == ["baseline", "lm-w8-rtn", "lm-nf4g64"]
    assert all(FIELDS <= r.keys() for r in rows)
    base, w8, nf4 = rows
    assert base["agreement"] == 1.0 and 1.0 < base["perplexity"] < 20
    # 8 bits per channel is close to fp32; NF4 is about 7x smaller than fp32 weights
    assert abs(w8["perplexity"] / base["perplexity"] - 1) < 0.01 and w8["agreement"] > 0.97
    assert nf4["size_bytes"] < w8["size_bytes"] < base["size_bytes"]
    assert (out / "perplexity_vs_size.png").read_bytes()[:4] == b"\x89PNG"
    assert "| lm-nf4g64 |" in (out / "report.md").read_text()
    assert "lm-w8-rtn" in capsys.readouterr().out

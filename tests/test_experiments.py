"""The experiment scripts in --quick mode: they run, write JSON + PNG, and their numbers say what they should."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments import attention_cost, attention_error, universality  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def outputs(out: Path, name: str) -> dict:
    assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    return json.loads((out / f"{name}.json").read_text())


def test_attention_error_cli_quick(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "experiments.attention_error", "--out", str(tmp_path), "--quick"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "error passes 0.01 at B" in proc.stdout
    s = outputs(tmp_path, "attention_error")
    m = s["methods"]
    for fit in ("relative", "taylor"):
        low, high = m[f"poly-{fit} g=2 (r=45)"], m[f"poly-{fit} g=4 (r=495)"]
        assert low["threshold_B"] is not None and high["threshold_B"] is not None
        assert high["threshold_B"] > low["threshold_B"]          # higher degree holds to larger entries
        assert low["max_error"][0] < 1e-6 and high["max_error"][0] < 1e-10
    perf = m["performer m=495"]
    assert perf["max_error"][0] < 1e-2 and perf["threshold_B"] < m["poly-relative g=4 (r=495)"]["threshold_B"]
    ranks = [r for r in s["realised"]["rank_needed"] if r is not None]
    assert ranks == sorted(ranks) and ranks[-1] > s["L"]           # past the threshold the rank exceeds L
    assert s["realised"]["max_logit"] == sorted(s["realised"]["max_logit"])


def test_attention_error_is_seeded(tmp_path):
    a = attention_error.main(["--out", str(tmp_path / "a"), "--quick", "--seed", "3"])
    b = attention_error.main(["--out", str(tmp_path / "b"), "--quick", "--seed", "3"])
    assert a["methods"] == b["methods"] and a["realised"] == b["realised"]


def test_attention_cost_quick(tmp_path):
    s = attention_cost.main(["--out", str(tmp_path), "--quick"])
    s = outputs(tmp_path, "attention_cost")
    m = s["methods"]
    assert s["sides"] == [8, 16, 32]
    exact, masked = m["exact (per scale)"], m["exact (masked)"]
    assert abs(exact["flops_exponent"] - 4) < 0.15 and abs(masked["flops_exponent"] - 4) < 0.15
    poly = m["poly g=2 (r=153)"]
    perf = m["performer m=256"]
    assert abs(poly["flops_exponent"] - 2) < 0.05 and abs(perf["flops_exponent"] - 2) < 0.05
    # the cost model is what torch's FLOP counter measures for exact attention
    assert exact["flops_counted"] == exact["flops_model"] and masked["flops_counted"] == masked["flops_model"]
    assert max(poly["error"]) < 1e-2 and max(exact["error"]) < 1e-5
    assert all(t > 0 for t in exact["seconds"] + poly["seconds"] + perf["seconds"])
    assert poly["crossover_n_flops"] == 16 and perf["crossover_n_flops"] == 32


def test_universality_quick(tmp_path):
    universality.main(["--out", str(tmp_path), "--quick"])
    s = outputs(tmp_path, "universality")
    assert s["num_tokens"] == 16 + 36 + 64
    assert s["sqrt_log_L"] == pytest.approx(math.sqrt(math.log(116)))
    curve = s["width_curves"]["var/blur"]
    assert curve["widths"] == [4, 16]
    assert curve["test_relative_mse"][1] < 0.5 * curve["test_relative_mse"][0]   # wider fits better
    assert "flow/blur" in s["width_curves"]
    assert s["lipschitz_curve"]["lipschitz"] == [1.0, 4.0]
    for r in s["runs"]:
        assert r["max_logit"] > 0 and r["lipschitz_bound"] > 0 and math.isfinite(r["test_relative_mse"])
    assert 0 <= s["logits"]["fraction_above_log_L"] <= 1


def test_power_law_fit_recovers_known_exponents():
    from experiments.scaling import fit_power_law

    N = [1e4, 3e4, 1e5, 3e5, 1e6]
    f = fit_power_law(N, [7.0 * n ** -0.3 for n in N])
    assert f["power_law"]["b"] == pytest.approx(0.3, rel=1e-6) and f["power_law"]["r_logN_logL"] < -0.999
    g = fit_power_law(N, [50.0 * n ** -0.5 + 0.2 for n in N])
    assert g["with_offset"]["b"] == pytest.approx(0.5, rel=1e-3) and g["with_offset"]["c"] == pytest.approx(0.2, rel=1e-3)
    assert g["with_offset"]["r2"] > 0.9999


@pytest.mark.slow
def test_scaling_quick(tmp_path):
    from experiments import scaling

    scaling.main(["--out", str(tmp_path), "--quick"])
    s = outputs(tmp_path, "scaling")
    for head in ("var", "flowar"):
        rows = s["results"][head]
        assert len(rows) == 4
        params = [r["params"] for r in rows]
        assert params == sorted(params) and len(set(params)) == 4      # four distinct sizes
        losses = [r["test_loss"] for r in rows]
        assert all(math.isfinite(v) and v > 0 for v in losses)
        assert losses == sorted(losses, reverse=True) and losses[0] - losses[-1] > 0.05, losses  # falls with size
        assert s["fits"][head]["power_law"]["b"] > 0 and s["fits"][head]["power_law"]["r_logN_logL"] < -0.9
    assert list((tmp_path / "checkpoints").glob("var-*.pt")) and list((tmp_path / "checkpoints").glob("flowar-*.pt"))


@pytest.mark.slow
def test_approx_sampling_quick(tmp_path):
    from experiments import approx_sampling

    approx_sampling.main(["--out", str(tmp_path), "--quick"])
    s = outputs(tmp_path, "approx_sampling")
    for head in ("var", "flowar"):
        r = s["results"][head]
        assert r["entry_bound"]["B"] > 0 and r["entry_bound"]["num_tokens"] == s["backbone"]["L"]
        ex = r["settings"]["exact"]
        assert "failed" not in ex and 0 <= ex["accuracy"] <= 1 and ex["pixel_change_vs_exact"] is None
        ran = {n: row for n, row in r["settings"].items() if n != "exact" and "failed" not in row}
        assert ran, f"{head}: every approximate setting failed: {r['settings']}"
        for name, row in ran.items():  # an approximation really ran: its own time, samples and change
            assert row["speedup"] == pytest.approx(ex["seconds"] / row["seconds"]) and math.isfinite(row["fid"])
            assert row["pixel_change_vs_exact"] >= 0, name  # 0 where the exact fallback took every row
        # the swap reached the model: some approximation moves the loss (a no-op set_attention moves none)
        assert any(row["test_loss"] != ex["test_loss"] for row in ran.values()), f"{head}: nothing was swapped in"
        for name, row in r["settings"].items():  # only the approximation's own refusals count as "failed"
            assert "failed" not in row or row["failed"].split(":")[0] in ("FloatingPointError",
                                                                         "ApproximationRefused"), row
        assert (tmp_path / f"samples_{head}_exact.png").read_bytes()[:8] == PNG_MAGIC


def test_power_law_fit_recovers_known_exponents():
    from experiments.scaling import fit_power_law
    N = [1e3, 3e3, 1e4, 3e4, 1e5, 1e6]
    pure = fit_power_law(N, [5.0 * n ** -0.25 for n in N])
    assert pure["power_law"]["b"] == pytest.approx(0.25) and pure["power_law"]["a"] == pytest.approx(5.0)
    assert pure["power_law"]["r_logN_logL"] == pytest.approx(-1.0)
    offset = fit_power_law(N, [2.0 * n ** -0.3 + 0.5 for n in N])["with_offset"]
    assert offset["b"] == pytest.approx(0.3, rel=1e-3) and offset["c"] == pytest.approx(0.5, rel=1e-3)

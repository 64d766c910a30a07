"""The study's arithmetic (benchmarks/study.py): when a curve reaches a
target, a curve's value at a budget, and how the claims read seed spreads."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import study  # pylint: disable=g-import-not-at-top,wrong-import-position

CURVE = [[100, 0.2], [200, 0.4], [300, 0.5]]


def test_reach_step_interpolates_between_evals_and_from_zero():
  assert study.reach_step(CURVE, 0.3) == pytest.approx(150)
  assert study.reach_step(CURVE, 0.1) == pytest.approx(50)  # From (0, 0).
  assert study.reach_step(CURVE, 0.5) == pytest.approx(300)
  assert study.reach_step(CURVE, 0.51) is None


def test_value_at_interpolates_and_stops_at_the_curve_end():
  assert study.value_at(CURVE, 250) == pytest.approx(0.45)
  assert study.value_at(CURVE, 50) == pytest.approx(0.1)
  assert study.value_at(CURVE, 301) is None


def test_a_difference_counts_only_beyond_the_seed_spread():
  a = study.stats([0.50, 0.52, 0.54])
  b = study.stats([0.40, 0.41, 0.42])
  assert study.compare(a, b) == ">" and study.compare(b, a) == "<"
  wide = study.stats([0.30, 0.50, 0.70])
  assert study.compare(a, wide) == "tie"
  assert study._verdict([">", ">"]) == "holds"  # pylint: disable=protected-access
  assert study._verdict([">", "tie"]).startswith("holds only in part")  # pylint: disable=protected-access
  assert study._verdict(["<", "<"]).startswith("does not hold")  # pylint: disable=protected-access


def _run(curve, steps=300, step_flops=1.0, seconds=1.0, reference=False):
  final = {key: None for key, _ in study.METRICS}
  final[study.HEADLINE] = curve[-1][1]
  return dict(steps=steps, batch_size=64, step_flops=step_flops,
              seconds_per_step=seconds, train_seconds=seconds * steps,
              reference_cache_flops=None, uses_reference=reference,
              curve={study.HEADLINE: curve, study.RETRIEVAL: curve},
              final=final, select_score=None, select_score_uniform=None)


def test_claim_four_is_iid_steps_over_the_steps_jest_needs():
  iid = [[100, 0.1], [200, 0.2], [300, 0.3]]
  jest = [[50, 0.3], [100, 0.6], [300, 0.9]]  # IID's 0.3 at step 50.
  runs = {"iid": {0: _run(iid), 1: _run(iid)},
          f"jest_f{study.MAIN_F}": {0: _run(jest, step_flops=3.0,
                                            reference=True),
                                    1: _run(jest, step_flops=3.0,
                                            reference=True)}}
  reference = dict(final={study.HEADLINE: 0.5}, total_flops=0.0)
  _, claims, targets = study.analyse(runs, reference, [0, 1])
  claim = next(c for c in claims if c["claim"] == 4)
  assert claim["details"]["factor"] == pytest.approx(6.0)
  assert claim["verdict"] == "holds (target met)"
  assert targets["jest_steps_factor_ge_5"] == pytest.approx(6.0)
  surpass = next(c for c in claims if c["claim"] == 5)
  assert surpass["verdict"] == "holds"  # 0.9 against the reference's 0.5.


def test_sweep_rows_name_methods_within_the_margin_and_jest_at_clip_flops():
  def run(value, step_flops=1.0):
    r = _run([[100, value / 2], [300, value]], step_flops=step_flops)
    for key in study.SWEEP_METRICS:
      r["final"][key] = value
    return r
  clip, jest = f"clip_score_f{study.MAIN_F}", f"jest_f{study.MAIN_F}"
  easy = f"easy_reference_f{study.MAIN_F}"
  point = dict(knob="noise_rate", value=0.2, reference=None,
               runs={"iid": run(0.30), clip: run(0.50), easy: run(0.58),
                     jest: run(0.60, step_flops=3.0)})
  margin = {study.HEADLINE: 0.03, study.RETRIEVAL: 0.0}
  row, = study.sweep_rows([point], margin=margin)
  assert row["winners"][study.HEADLINE] == [easy, jest]
  assert row["winners"][study.RETRIEVAL] == [jest]  # Its own margin.
  margin = {study.HEADLINE: 0.0, study.RETRIEVAL: 0.0}
  row, = study.sweep_rows([point], margin=margin)
  assert row["winners"][study.HEADLINE] == [jest]
  # CLIP-score's 300 steps x 1 FLOP buy JEST 100 steps (3 FLOPs each).
  assert row["jest_zeroshot_at_clip_flops"] == pytest.approx(0.30)
  assert study.format_sweep([row], margin)[2].startswith("| noise_rate = 0.2 |")

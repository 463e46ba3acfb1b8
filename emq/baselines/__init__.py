"""Handcrafted baseline proxies and the correlation table (EMQ, Table 1).

Each baseline is one decorated function ``(ctx: ScoreContext, **options) -> S[L, B]``
(zero-cost-nas style registry)::

    @baseline("hawq_v2", inputs=("H",))
    def hawq_v2(ctx):
        \"\"\"HAWQ-V2 (Dong et al. 2020): S[l, b] = Tr(H_l) * b.\"\"\"

``S[l, b]`` is a score per layer and bit candidate (float64, ``B = len(ctx.candidates)``)
and a configuration's score is ``sum_l S[l, b_l]`` (see ``emq.scoring``).

**Sign convention.** A configuration score must be HIGHER for configurations expected to be
MORE accurate, so a good proxy has a positive Spearman rho with accuracy:

* "bit-weighted" proxies (BParams, BOPs, HAWQ, HAWQ-V2, OMPQ, QE, SNIP, Synflow, EMQ) score
  ``importance_l * b`` as EMQ's code does: more bits where it matters scores higher;
* sensitivities (HAWQ-V3's ``Tr(H)/n * ||W - Q_b(W)||^2``, the measured loss increase) are
  negated: ``S = -sensitivity``;
* measured SQNR (dB) is already "higher = better".

Two baselines are *measured* (``measured=True``): they quantize one layer at one bit with all
others in full precision and run the network on the calibration batch, L x B forward passes.
They are the bar a training-free proxy must reach. The others are training-free and read the
cached proxy inputs (``ctx.inputs``) or the model's layer table.

Layout: ``registry.py`` (``Baseline``, ``@baseline``, ``get_baseline``), ``training_free.py``
and ``measured.py`` (the scorers: adding a baseline is one decorated function there),
and ``emq.baselines.table`` (``evaluate_baselines``/``run_baselines``: the Table-1
correlations and costs on a bench; not imported here, so using a baseline as a Scorer
loads no report code). The report is ``emq.reports.baselines``, the command
``emq.commands.baselines``.
"""

from __future__ import annotations

from emq.baselines import measured, training_free  # noqa: F401 - registers the baselines
from emq.baselines.measured import sqnr_db
from emq.baselines.registry import BASELINES, Baseline, UnknownBaselineError, baseline, get_baseline

__all__ = [
    "BASELINES",
    "Baseline",
    "UnknownBaselineError",
    "baseline",
    "get_baseline",
    "sqnr_db",
]

"""Generation noise in Tables 3 and 4: ``--gen_seeds K`` regenerates every test motion and every test caption K
times, ``--mm_texts N --mm_gens M`` measures MultiModality.

**Generation seeds.** Generation k (0 .. K-1) of batch b draws its flow-head noise from a torch generator seeded
``seed * 1000 + b + GEN_SEED_STRIDE * k`` (`generation_seed`): generation 0 is exactly the single generation of
K = 1, so ``--gen_seeds 1`` (the default) keeps earlier numbers. Each generation is scored by the full protocol
(``--repeats`` repetitions over R-precision groups and Diversity pairs); the LLaMo row is then the mean over the K
generations of each generation's protocol mean, ± the t-based 95 % interval over those K values,
t_{0.975,K-1} · s / sqrt(K) with the sample std s (`llamo.eval.seeds.seed_interval`; Student's t because K is
small). That interval holds generation noise and what is left of the protocol's noise after averaging; it does not
hold training noise (train seeds: ``make ablations SEEDS=S``).

**Caption seeds (Table 4).** With K = 1 captions are greedy, as before. With K > 1 every test motion is captioned
K times by sampling at ``--caption_temperature`` (`llamo.eval.m2t`); generation k of item i draws from a CPU
generator seeded ``generation_seed(seed, i, k)`` (the item index in the place of the batch: captions are decoded
one item at a time), each generation is scored with the full Table 4 metric set, and `aggregate_generations` turns
the K score sets (each a one-repetition summary, interval 0) into the LLaMo row, as for Table 3. All K are samples:
the greedy caption is not generation 0, unlike Table 3's generation 0, because it is the mode and not a draw.

**MultiModality** (Guo et al.): the first N test items (in the seeded item order) are each generated M times with
M generation seeds, embedded by the evaluator, and `metrics.generation.multimodality` averages the distance of
min(10, M) random pairs of generations of the same text; off (N = 0) by default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from llamo.eval.seeds import seed_interval
from metrics.generation import ProtocolResult

__all__ = ["GEN_SEED_STRIDE", "aggregate_generations", "generation_seed"]

#: distance between the batch seeds of two generation seeds (far above any batch count)
GEN_SEED_STRIDE = 1_000_003


def generation_seed(seed: int, batch: int, generation: int) -> int:
    """Seed of the flow-head noise of ``batch`` in generation ``generation`` (generation 0: the K = 1 seed), and of
    the sampled caption of test item ``batch`` (Table 4, K > 1)."""
    return seed * 1000 + batch + GEN_SEED_STRIDE * generation


def aggregate_generations(summaries: Sequence[Mapping[str, ProtocolResult]]) -> dict[str, ProtocolResult]:
    """One summary from the protocol summaries of K generations: K = 1 returns it unchanged; for K > 1 every
    metric's mean is the mean of the K protocol means, its ``ci95`` the t-based interval over them and its
    ``values`` the K protocol means."""
    if not summaries:
        raise ValueError("aggregate_generations needs the summary of at least one generation (--gen_seeds >= 1)")
    if len(summaries) == 1:
        return dict(summaries[0])
    out: dict[str, ProtocolResult] = {}
    for name in summaries[0]:
        means = [s[name].mean for s in summaries]
        interval = seed_interval(means)
        out[name] = ProtocolResult(interval.mean, float(interval.ci95 or 0.0), tuple(means))
    return out

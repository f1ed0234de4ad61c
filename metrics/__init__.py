"""Standalone motion-language metrics in the torchmetrics style (a pure function plus a thin `Metric`).

Nothing here imports `llamo`: reconstruction (MPJPE, MPJRE, sJPE, compression), generation (FID,
R-precision, MM-Dist, Diversity, MultiModality) and captioning (BLEU, ROUGE-L, CIDEr, BERTScore).
"""

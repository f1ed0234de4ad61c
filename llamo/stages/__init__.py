"""Stages: one small LightningModule per training stage."""

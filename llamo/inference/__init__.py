"""Inference with a trained LLaMo: streaming text-to-motion, captions and chat, and loading run folders."""

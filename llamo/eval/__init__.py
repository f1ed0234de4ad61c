"""Evaluations that score a model as a whole (the language-preservation probe of paper §4.4 / Table 5)."""

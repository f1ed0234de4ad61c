"""Lightning callbacks of llamo (stage handoff, progress lines in logs, motion previews)."""

"""Lightning callbacks of llamo (stage handoff, motion previews)."""

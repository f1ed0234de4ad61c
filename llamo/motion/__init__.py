"""Motion: the 272-dim representation, the 22-joint SMPL skeleton, filters, synthetic data and rendering."""

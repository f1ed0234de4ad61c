"""Data: the HumanML3D-272 / MotionMillion folder reader, datasets, sequence format and DataModules."""

"""data stage of ctrops."""

"""pipeline stage of ctrops."""

"""tune stage of ctrops."""

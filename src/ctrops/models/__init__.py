"""models stage of ctrops."""

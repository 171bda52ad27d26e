"""experiments stage of ctrops."""

"""registry stage of ctrops."""

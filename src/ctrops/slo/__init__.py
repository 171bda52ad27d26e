"""slo stage of ctrops."""

"""serve stage of ctrops."""

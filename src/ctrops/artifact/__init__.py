"""artifact stage of ctrops."""

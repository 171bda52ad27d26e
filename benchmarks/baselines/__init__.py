"""Servers the serving benchmarks compare against (never imported by ctrops itself)."""

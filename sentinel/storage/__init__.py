"""Sentinel's hand-written LSM storage engine. See DESIGN.md beside this file."""

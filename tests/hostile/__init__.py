"""Hostile-input generators for ckptdoctor's security tests (see payloads.py)."""

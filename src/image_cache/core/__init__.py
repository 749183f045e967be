"""Contracts both sides share: ingest (the market writer) and cache (the image renderer).

Nothing here imports ingest/, cache/ or the CLIs; they all import from here.
"""

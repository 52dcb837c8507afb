"""Benchmarks: the Hydra entry point (`python -m specdec.bench`) that runs decoding methods on prompt sets and writes JSON, a Markdown table and plots."""

"""Evolved proxies (EMQ), torch-free: ``program`` (a proxy program and its evaluation),
``genetic`` (the genetic search over programs), ``ground_truth`` (sampled policies, their split and
rank correlation). The torch side that fills the primitives and measures the ground truth is
proxies/evolved.py."""

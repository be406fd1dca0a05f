"""Drivers that run Hypha's containers: ``oci`` (youki, runc, crun), ``process`` and ``mock``.

This package imports nothing else of Hypha's.
"""

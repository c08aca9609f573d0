"""Endpoint telemetry sensor: kernel events from eBPF (Linux) and ETW (Windows) in one schema."""
__version__ = "0.1.0"

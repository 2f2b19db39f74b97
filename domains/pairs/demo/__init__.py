"""The pairs demo's raw inputs (the demo-data stage); see demo_data.py."""
from domains.pairs.demo.demo_data import PairsDemoConfig as DemoConfig
from domains.pairs.demo.demo_data import write_demo_data

__all__ = ["DemoConfig", "write_demo_data"]

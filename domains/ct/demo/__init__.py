"""The ct demo's raw inputs (the demo-data stage); see demo_data.py."""
from domains.ct.demo.demo_data import CTDemoConfig as DemoConfig
from domains.ct.demo.demo_data import write_demo_data

__all__ = ["DemoConfig", "write_demo_data"]

"""The pathology demo's raw inputs (the demo-data stage); see demo_data.py."""
from domains.pathology.demo.demo_data import PathologyDemoConfig as DemoConfig
from domains.pathology.demo.demo_data import write_demo_data

__all__ = ["DemoConfig", "write_demo_data"]

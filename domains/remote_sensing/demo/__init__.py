"""The remote sensing demo's raw inputs (the demo-data stage); see demo_data.py."""
from domains.remote_sensing.demo.demo_data import RSDemoConfig as DemoConfig
from domains.remote_sensing.demo.demo_data import write_demo_data

__all__ = ["DemoConfig", "write_demo_data"]

"""asd_ray: machine-sound anomaly detection (dual-stream CNN + Sub-Cluster AdaCos) on Ray."""

__version__ = "0.1.0"

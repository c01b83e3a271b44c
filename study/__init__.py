"""The study system: CLI, Ray Tune and MLflow wiring (driver side)."""

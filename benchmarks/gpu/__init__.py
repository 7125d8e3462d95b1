"""The GPU tooling by job; benchmarks/gpu_static.py and benchmarks/gpu_run.py are its command lines."""

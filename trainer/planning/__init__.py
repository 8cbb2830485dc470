"""The memory and time plan: a traced training step (trace.py) laid out per strategy (memory.py), a
step-time estimate (time.py), device tables (devices.py) and the search for what fits (planner.py).
The entry point is trainer/plan.py."""

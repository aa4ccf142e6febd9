"""Where computation runs: device, distributed processes, precision."""
